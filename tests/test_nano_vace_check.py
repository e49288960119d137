"""The reference check of the nano VACE stage (``train/nano_vace_check.py``) on the shipped model:
the model reads its reference pictures (wrong ones cost it) and not the colour and shape words
(random ones cost next to nothing). Where the reference was lost instead, in sampling, is what the
R2V test (``test_nano_r2v.py``) waited on until the VACE first-frame pass."""
import pytest

from wanflow.nano.files import NANO
from wanflow.train.nano_vace_check import load_nano_vace, reference_use
from wanflow.wan.dit import WanDiT

from nano_testing import need_nano

pytestmark = pytest.mark.slow


SIGMAS = (0.95, 0.6, 0.2)


@pytest.fixture(scope="module")
def models():
    need_nano(NANO.vace, NANO.vae, NANO.umt5)
    return load_nano_vace()


@pytest.fixture(scope="module")
def rows(models):
    return reference_use(*models, clips=16, sigmas=SIGMAS)


def test_wrong_references_cost_the_vace_model_at_every_noise_level(rows):
    for row in rows:
        assert row.wrong > row.right + 0.02, row
        assert row.wrong_random_words > row.right_random_words + 0.02, row


def test_the_colour_and_shape_words_hardly_matter_to_it(rows):
    for row in rows:
        assert abs(row.right_random_words - row.right) < 0.25 * (row.wrong - row.right), row


def test_teeth_without_the_vace_hints_the_references_stop_mattering(models, monkeypatch):
    """The check reads the VACE path: with the hints never added, wrong references cost nothing."""
    monkeypatch.setattr(WanDiT, "_add_vace_hints", lambda self, h, *args, **kwargs: h)
    for row in reference_use(*models, clips=16, sigmas=SIGMAS):
        assert abs(row.wrong - row.right) < 0.02, row
