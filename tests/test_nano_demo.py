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
