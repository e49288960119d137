"""The shape check of the nano T2V stage (``train/nano_shape_check.py``) on the shipped models:
the VAE alone reads every evaluation shape back, and the expert pair keeps them when a run starts
close to the clip (σ 0.25). Where it stopped keeping them (σ ≈ 0.57 and above for generation 3) is
what the T2V shape test waited on until generation 4."""
import pytest

from wanflow.nano.files import MODELS_DIR, NANO
from wanflow.nano.vocabulary import EVAL_SCENES
from wanflow.train.nano_shape_check import load_nano_t2v, shape_score

from nano_testing import need_nano

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models():
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    return load_nano_t2v(MODELS_DIR)


def test_the_vae_alone_reads_every_shape_back(models):
    """The ceiling, and the reader's own check: the 12 prompts hold all three shapes, so a reader
    that calls everything one shape would score at most 5."""
    sampler, vae, text = models
    score = shape_score(sampler, vae, text, EVAL_SCENES, 0.0)
    assert score.hits == len(EVAL_SCENES) and score.start_sigma == 0.0, score


def test_the_pair_keeps_the_shape_from_a_nearly_clean_start(models):
    sampler, vae, text = models
    score = shape_score(sampler, vae, text, EVAL_SCENES, 0.1)
    assert 0.2 < score.start_sigma < 0.3 and score.hits >= 11, score

