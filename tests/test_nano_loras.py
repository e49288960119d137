"""Semantic tests of the WanNano style LoRAs (trained by the pack's LoRA trainer), rendered through
the LoRA-stack template: ``night`` makes the background dark blue, and strength 0 is bit for bit
the plain template. (The ``outline`` tests wait in ``nano_pending/``: generation 4's outline LoRA
does not halve the filled area yet.)"""
import numpy as np
import pytest

from wanflow.nano.files import LORA_STYLES, NANO
from wanflow.nano.measure import read_video
from wanflow.nano.vocabulary import Scene
from wanflow.runner import nano_eval

from nano_testing import need_nano

pytestmark = pytest.mark.slow

SCENES = (Scene("red", "square", "left", "black"), Scene("blue", "circle", "up", "white"),
          Scene("yellow", "triangle", "down", "black"), Scene("green", "square", "right", "white"))
DARK = 70.0
"""Brightest a background may be (mean of R, G, B) to count as dark."""


@pytest.fixture(scope="module")
def videos():
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5,
              *(NANO.lora(style, e) for style in LORA_STYLES for e in ("high", "low")))
    cases = {"none": [], "night": [("night", 1.0)]}
    return {name: [read_video(nano_eval.render_with_loras(s.caption, 3 + i, loras)) for i, s in enumerate(SCENES)]
            for name, loras in cases.items()}


def test_night_makes_the_background_dark(videos):
    for scene, reading in zip(SCENES, videos["night"]):
        assert np.mean(reading.background_rgb) < DARK and reading.background == "night", (scene, reading)


def test_plain_videos_show_the_prompt_background(videos):
    """The comparison above is against videos that really show the asked background."""
    assert [r.background for r in videos["none"]] == [s.background for s in SCENES]


def test_strength_zero_is_bit_for_bit_no_lora():
    need_nano(NANO.lora("outline", "high"), NANO.lora("night", "low"))
    prompt = SCENES[0].caption
    plain = nano_eval.render("t2v", prompt, 5)
    zero = nano_eval.render_with_loras(prompt, 5, [("outline", 0.0), ("night", 0.0)])
    assert np.array_equal(plain, zero)
