"""The word check of the nano T2V stage (``train/nano_word_check.py``) on the shipped experts: both
read the colour, direction and background words (a wrong one costs them at every noise level) and
the shape word a little. How little, against the others, is docs/nano_findings.md's diagnosis of the shape
test that waited in ``nano_pending/`` (now in ``test_nano_t2v.py``)."""
import pytest

from wanflow.nano.files import NANO
from wanflow.train.nano_shape_check import load_t2v_parts
from wanflow.train.nano_latents import scoring_clips
from wanflow.train.nano_word_check import word_use
from wanflow.wan.dit import WanDiT

from nano_testing import need_nano

pytestmark = pytest.mark.slow

SIGMAS = (0.85, 0.55, 0.25)


@pytest.fixture(scope="module")
def loaded():
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    experts, vae, table = load_t2v_parts()
    scenes, data = scoring_clips(vae, table, clips=16)
    return experts, data, table, scenes


def test_both_experts_read_colour_direction_and_background_words(loaded):
    rows = word_use(*loaded, sigmas=SIGMAS)
    assert {row.expert for row in rows} == {"high", "low"}
    for row in rows:
        for slot in ("colour", "direction", "background"):
            assert row.cost[slot] > 0.02, row
        assert row.cost["shape"] > 0.0, row


def test_teeth_with_the_text_cut_off_no_word_costs_anything(loaded, monkeypatch):
    """The check reads the text path: when every context reaches the model as zeros, swapping a
    word changes nothing."""
    embed = WanDiT._embed_text
    monkeypatch.setattr(WanDiT, "_embed_text", lambda self, context, pad=True: embed(self, context * 0, pad))
    for row in word_use(*loaded, sigmas=SIGMAS[:1]):
        assert all(abs(cost) < 1e-6 for cost in row.cost.values()), row
