"""The WanNano clip world: vocabulary contract, deterministic drawing, and reading videos back."""
import numpy as np
import pytest

from wanflow.nano import clips, measure, vocabulary
from wanflow.nano.vocabulary import Scene


def test_caption_template_is_the_contract():
    scene = Scene("blue", "square", "up", "black")
    assert scene.caption == "a blue square moving up on a black background"
    assert Scene("red", "circle", "left", "white", "slowly").caption == \
        "a red circle moving slowly left on a white background"


def test_held_out_combinations_are_never_trained_but_every_word_is():
    held = vocabulary.HELD_OUT
    assert len(held) >= 8
    train = vocabulary.training_scenes()
    assert not any(s.combination in held for s in train)
    assert len(train) + len(vocabulary.held_out_scenes()) == len(vocabulary.all_scenes()) == 192
    for words, index in ((vocabulary.COLOURS, 0), (vocabulary.SHAPES, 1), (vocabulary.DIRECTIONS, 2),
                         (vocabulary.BACKGROUNDS, 3)):
        assert {s.combination[index] for s in train} == set(words)


@pytest.mark.parametrize("scene", vocabulary.all_scenes()[::7], ids=lambda s: s.caption)
def test_parse_caption_round_trip(scene):
    assert vocabulary.parse_caption(scene.caption) == scene


def test_unknown_words_are_listed_once():
    assert vocabulary.unknown_words("A purple square, purple!") == ["purple"]
    assert vocabulary.unknown_words("a red circle moving slowly left on a white background") == []


def test_clips_are_deterministic_and_stay_in_frame():
    scene = Scene("green", "triangle", "right", "white")
    a = clips.render_clip(scene, clips.random_placement(scene, np.random.default_rng(5)))
    b = clips.render_clip(scene, clips.random_placement(scene, np.random.default_rng(5)))
    assert a.shape == (vocabulary.FRAMES, vocabulary.HEIGHT, vocabulary.WIDTH, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    background = np.asarray(vocabulary.BACKGROUNDS["white"])
    for frame in (a[0], a[-1]):
        border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
        assert np.all(border == background)  # the whole shape is inside the frame


@pytest.mark.parametrize("scene", vocabulary.all_scenes()[::5], ids=lambda s: s.caption)
def test_centred_paths_pass_through_the_middle_of_the_frame(scene):
    rng = np.random.default_rng(3)
    for _ in range(20):
        start = clips.centred_placement(scene, rng)
        first, last = clips.centre_at(scene, start, 0), clips.centre_at(scene, start, vocabulary.FRAMES - 1)
        middle = [(a + b) / 2 for a, b in zip(first, last)]
        assert np.allclose(middle, (vocabulary.WIDTH / 2, vocabulary.HEIGHT / 2), atol=clips.PATH_JITTER)
        half = start.size / 2
        for x, y in (first, last):
            assert half <= x <= vocabulary.WIDTH - half and half <= y <= vocabulary.HEIGHT - half


@pytest.mark.parametrize("shape", vocabulary.SHAPES)
def test_fill_ratio_and_outline_area(shape):
    filled = clips.coverage(shape, 32, 32, 20)
    assert filled.sum() / 400 == pytest.approx(clips.IDEAL_FILL[shape], abs=0.02)
    outline = clips.coverage(shape, 32, 32, 20, "outline")
    assert outline.sum() < 0.6 * filled.sum()


def test_reading_back_every_scene_and_style():
    rng = np.random.default_rng(11)
    for scene in vocabulary.all_scenes()[::3]:
        for style in clips.STYLES:
            reading = measure.read_video(clips.render_clip(scene, clips.random_placement(scene, rng), style))
            assert reading.colour == scene.colour and reading.direction == scene.direction
            assert reading.background == ("night" if style == "night" else scene.background)
            if style != "outline":
                assert reading.shape == scene.shape, reading


def test_reading_an_empty_video_finds_no_object():
    reading = measure.read_video(np.zeros((17, 64, 64, 3), np.uint8))
    assert reading.background == "black" and reading.colour is None and reading.direction is None


def test_static_object_has_no_direction():
    scene = Scene("red", "square", "left", "black")
    frame = clips.render_frame(scene, 32, 32, 20)
    reading = measure.read_video(np.stack([frame] * 17))
    assert reading.direction is None and reading.colour == "red"
