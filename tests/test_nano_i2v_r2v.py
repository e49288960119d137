"""Semantic tests of the WanNano I2V pair and the VACE reference-to-video model."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wanflow.nano.clips import random_placement, reference_picture, render_clip
from wanflow.nano.files import NANO
from wanflow.nano.measure import read_video
from wanflow.nano.vocabulary import Scene
from wanflow.runner import nano_eval
from wanflow.samplers import conditioning

from nano_testing import need_nano

pytestmark = pytest.mark.slow

I2V_SCENES = (Scene("red", "circle", "up", "black"), Scene("yellow", "square", "left", "white"),
              Scene("blue", "triangle", "right", "black"), Scene("green", "square", "down", "white"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def render_i2v(scene: Scene, seed: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    start = render_clip(scene, random_placement(scene, np.random.default_rng(seed)))[0]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(start).save(folder / "start_image.png")
    return start, nano_eval.render("i2v", scene.caption, seed, input_dir=folder)


def test_i2v_keeps_the_picture_and_moves_as_asked(tmp_path):
    need_nano(NANO.i2v_high, NANO.i2v_low)
    for index, scene in enumerate(I2V_SCENES):
        start, frames = render_i2v(scene, index, tmp_path / str(index))
        assert psnr(frames[0], start) >= 25.0, scene.caption
        reading = read_video(frames)
        assert reading.direction == scene.direction and reading.colour == scene.colour, (scene.caption, reading)


def test_teeth_an_inverted_i2v_mask_loses_the_picture(tmp_path, monkeypatch):
    need_nano(NANO.i2v_high, NANO.i2v_low)
    original = conditioning.i2v_mask
    monkeypatch.setattr(conditioning, "i2v_mask", lambda *a, **k: 1 - original(*a, **k))
    bad = 0
    for index, scene in enumerate(I2V_SCENES[:2]):
        start, frames = render_i2v(scene, index, tmp_path / f"bad{index}")
        reading = read_video(frames)
        bad += psnr(frames[0], start) < 25.0 or reading.direction != scene.direction
    assert bad == 2


R2V_CASES = ((Scene("green", "triangle", "right", "black"), "red", "square"),
             (Scene("red", "circle", "up", "white"), "blue", "triangle"),
             (Scene("yellow", "square", "left", "black"), "green", "circle"),
             (Scene("blue", "circle", "down", "white"), "yellow", "square"))


@pytest.mark.parametrize("count", [1, 2])
def test_r2v_takes_the_object_from_the_references_not_the_words(tmp_path, count):
    need_nano(NANO.vace)
    hits = {"colour": 0, "shape": 0}
    for index, (scene, said_colour, said_shape) in enumerate(R2V_CASES):
        folder = tmp_path / str(index)
        folder.mkdir()
        for n, size in enumerate((28.0, 24.0)):
            Image.fromarray(reference_picture(scene, size if count == 2 else 28.0)).save(folder / f"reference_{n + 1}.png")
        prompt = scene.caption.replace(scene.colour, said_colour, 1).replace(scene.shape, said_shape, 1)
        reading = read_video(nano_eval.render("r2v", prompt, index, input_dir=folder))
        hits["colour"] += reading.colour == scene.colour
        hits["shape"] += reading.shape == scene.shape
    assert hits["colour"] >= 4 and hits["shape"] >= 3, hits
