"""Semantic tests of the WanNano I2V pair: frame 0 keeps the start picture, the object moves as asked,
and (teeth) an inverted I2V mask loses the picture."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wanflow.nano.clips import random_placement, render_clip
from wanflow.nano.files import NANO
from wanflow.nano.measure import psnr, read_video
from wanflow.nano.vocabulary import Scene
from wanflow.runner import nano_eval
from wanflow.samplers import conditioning

from nano_testing import need_nano

pytestmark = pytest.mark.slow

I2V_SCENES = (Scene("red", "circle", "up", "black"), Scene("yellow", "square", "left", "white"),
              Scene("blue", "triangle", "right", "black"), Scene("green", "square", "down", "white"))


def render_i2v(scene: Scene, seed: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    start = render_clip(scene, random_placement(scene, np.random.default_rng(seed)))[0]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(start).save(folder / "start_image.png")
    return start, nano_eval.render("i2v", scene.caption, seed, input_dir=folder)


def test_i2v_moves_the_pictured_object_as_asked(tmp_path):
    need_nano(NANO.i2v_high, NANO.i2v_low)
    for index, scene in enumerate(I2V_SCENES):
        _, frames = render_i2v(scene, index, tmp_path / str(index))
        reading = read_video(frames)
        assert reading.direction == scene.direction and reading.colour == scene.colour, (scene.caption, reading)


def test_i2v_frame_0_keeps_the_picture(tmp_path):
    """>= 25 dB PSNR on black and on white backgrounds (white reached only 19.5-21.3 dB before the
    I2V first-frame pass and the hardened VAE decoder; generation 4 with the rescaled decoder:
    27.8-28.2, black 30.4-31.7)."""
    need_nano(NANO.i2v_high, NANO.i2v_low)
    for index, scene in enumerate(I2V_SCENES):
        start, frames = render_i2v(scene, index, tmp_path / str(index))
        assert psnr(frames[0], start) >= 25.0, scene.caption


def test_teeth_an_inverted_i2v_mask_loses_the_picture(tmp_path, monkeypatch):
    need_nano(NANO.i2v_high, NANO.i2v_low)
    original = conditioning.i2v_mask
    monkeypatch.setattr(conditioning, "i2v_mask", lambda *a, **k: 1 - original(*a, **k))
    bad = 0
    for index, scene in enumerate(I2V_SCENES):
        if scene.background != "black":
            continue
        start, frames = render_i2v(scene, index, tmp_path / f"bad{index}")
        reading = read_video(frames)
        bad += psnr(frames[0], start) < 25.0 or reading.direction != scene.direction
    assert bad == 2
