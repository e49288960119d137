"""The WanNano VACE model takes the object from the reference pictures, not the words: colour on
every case and shape on at least 3 of 4, with one and with two references (the model with its
first-frame pass reads 4 and 3 both times; generation 4 without it read 4 and 2)."""
import pytest
from PIL import Image

from wanflow.nano.clips import reference_picture
from wanflow.nano.files import NANO
from wanflow.nano.measure import read_video
from wanflow.nano.vocabulary import Scene
from wanflow.runner import nano_eval

from nano_testing import need_nano

pytestmark = pytest.mark.slow


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
