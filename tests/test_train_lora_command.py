"""``wanflow train-lora``: a clip folder in, a ComfyUI-format LoRA out, on the shipped nano models."""
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from wanflow.model_loaders.lora_files import read_lora_file
from wanflow.nano.clips import random_placement, render_clip
from wanflow.nano.files import NANO
from wanflow.nano.vocabulary import training_scenes
from wanflow.runner import cli, errors

pytestmark = pytest.mark.slow


def write_clip_folder(folder, count=3, frames=5):
    """PNG-frame clips of the nano world with their captions (the layout other trainers read)."""
    rng = np.random.default_rng(0)
    for index, scene in enumerate(training_scenes()[:count]):
        clip_dir = folder / f"clip{index}"
        clip_dir.mkdir(parents=True)
        for f, frame in enumerate(render_clip(scene, random_placement(scene, rng))[:frames]):
            Image.fromarray(frame).save(clip_dir / f"{f:03d}.png")
        (folder / f"clip{index}.txt").write_text(scene.caption)
    return folder


def command(data, output, *extra):
    return ["train-lora", str(data), "--model", str(NANO.path(NANO.t2v_low)), "--vae", str(NANO.path(NANO.vae)),
            "--text-encoder", str(NANO.path(NANO.umt5)), "--output", str(output), "--steps", "3",
            "--width", "64", "--height", "64", "--max-frames", "5", "--rank", "4", "--quiet", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_clip_folder(tmp_path_factory.mktemp("clips"))


def test_writes_a_lora_file_that_the_loader_reads_with_metadata(data, tmp_path, capsys):
    out = tmp_path / "loras" / "mine.safetensors"
    assert cli.main(command(data, out)) == errors.EXIT_OK
    assert capsys.readouterr().out.strip() == str(out)
    tensors = read_lora_file(out).state_dict
    assert any(k.startswith("diffusion_model.blocks.0.") and k.endswith(".lora_A.weight") for k in tensors)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["trainer"], meta["base_model"], meta["rank"], meta["steps"]) == ("wanflow", NANO.t2v_low, "4", "3")
    assert meta["expert"] == "low"  # auto: the loaded low-noise expert trains on its own range


def test_an_existing_output_is_refused_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"user's file")
    assert cli.main(command(data, out)) == errors.EXIT_USAGE
    assert "already exist" in capsys.readouterr().err
    assert out.read_bytes() == b"user's file"
    assert not (tmp_path / ".wanflow_lora_work").exists()


def test_a_pair_writes_high_and_low_files(data, tmp_path, capsys):
    out = tmp_path / "style.safetensors"
    assert cli.main(command(data, out, "--model-low", str(NANO.path(NANO.t2v_low)),
                            "--model", str(NANO.path(NANO.t2v_high)))) == errors.EXIT_OK
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["style_high_noise.safetensors", "style_low_noise.safetensors"]


def test_missing_inputs_and_bad_options_are_named(tmp_path, capsys):
    assert cli.main(command(tmp_path / "nope", tmp_path / "x.safetensors")) == errors.EXIT_MISSING_FILE
    assert "DATA_DIR" in capsys.readouterr().err
    tmp_path.joinpath("d").mkdir()
    assert cli.main(command(tmp_path / "d", tmp_path / "x.safetensors", "--blocks", "a,b")) == errors.EXIT_USAGE
    assert "--blocks" in capsys.readouterr().err
