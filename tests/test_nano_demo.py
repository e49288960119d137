"""``wanflow demo``: the README's first command, its options and its errors."""
import av
import pytest

from wanflow.nano.vocabulary import FRAMES
from wanflow.runner import cli, errors, nano_runs


def _frames(path) -> int:
    with av.open(str(path)) as container:
        return len(list(container.decode(video=0)))


@pytest.mark.slow
def test_demo_writes_one_video_and_prints_its_path(tmp_path, capsys):
    assert cli.main(["demo", "--output", str(tmp_path / "out"), "--quiet"]) == errors.EXIT_OK
    captured = capsys.readouterr()
    videos = list((tmp_path / "out").rglob("*.mp4"))
    assert len(videos) == 1 and captured.out.strip() == str(videos[0])
    trained = not nano_runs.missing_for("wan22_a14b_t2v")
    assert _frames(videos[0]) == (FRAMES if trained else 5)
    assert ("RANDOM" in captured.err) != trained


def test_unknown_words_are_warned_with_the_vocabulary(tmp_path, capsys):
    code = cli.main(["demo", "--prompt", "a purple dragon moving left on a black background", "--quiet",
                     "--output", str(tmp_path)])
    assert code == errors.EXIT_OK
    err = capsys.readouterr().err
    assert "'purple', 'dragon'" in err and "triangle" in err and "yellow" in err


def test_bad_pictures_fail_before_any_model_work(tmp_path, capsys):
    picture = tmp_path / "p.png"
    assert cli.main(["demo", "--i2v", str(tmp_path / "missing.png")]) == errors.EXIT_MISSING_FILE
    assert "missing.png" in capsys.readouterr().err
    picture.write_bytes(b"x")
    assert cli.main(["demo", "--i2v", str(picture), "--r2v", str(picture)]) == errors.EXIT_USAGE
    assert cli.main(["demo", "--r2v", str(picture), str(picture), str(picture)]) == errors.EXIT_USAGE
    assert not list(tmp_path.rglob("*.mp4"))


def test_bad_lora_options_fail_before_any_model_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["demo", "--lora", "sparkle", "--output", str(out)]) == errors.EXIT_USAGE
    assert "outline, night" in capsys.readouterr().err
    assert cli.main(["demo", "--lora", "outline:strong", "--output", str(out)]) == errors.EXIT_USAGE
    assert "'strong' is not a number" in capsys.readouterr().err
    picture = tmp_path / "p.png"
    picture.write_bytes(b"x")
    assert cli.main(["demo", "--i2v", str(picture), "--lora", "night", "--output", str(out)]) == errors.EXIT_USAGE
    assert "text-to-video" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*.mp4"))


def test_lora_overrides_fill_the_style_slots_as_pairs():
    sets = nano_runs.lora_overrides([("outline", 0.5), ("night", 1.0)])
    assert "12.lora_high=wan_nano_outline_lora_high_noise.safetensors" in sets
    assert "12.strength_low=0.5" in sets and "13.lora_low=wan_nano_night_lora_low_noise.safetensors" in sets
    assert "14.lora_high=none" in nano_runs.NANO_OVERRIDES[nano_runs.LORA_TEMPLATE]


@pytest.mark.slow
def test_the_nano_template_runs_as_shipped_and_shows_its_prompt(tmp_path, capsys):
    """workflows/wanflow_nano_t2v.json needs no download and no --models (issue 11)."""
    import numpy as np

    from wanflow.nano.files import NANO
    from wanflow.nano.measure import read_video
    from wanflow.runner import templates

    from nano_testing import need_nano

    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.umt5, NANO.vae)
    flow = templates.WORKFLOWS_DIR / "wanflow_nano_t2v.json"
    assert cli.main(["run", str(flow), "--output", str(tmp_path), "--quiet", "--set", "8.seed=1"]) == errors.EXIT_OK
    (video,) = tmp_path.rglob("*.mp4")
    with av.open(str(video)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    reading = read_video(frames)  # the template's prompt: a red circle moving slowly left on white
    assert (reading.background, reading.colour, reading.direction) == ("white", "red", "left"), reading
