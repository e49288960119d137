"""``wanflow run --gpus N`` (runner/parallel_run.py) on the CPU with gloo: the nano T2V template
on a tiny random two-head DiT gives the same video on 2 ranks as on 1 (sequence parallel, or
``--cfg-parallel``; each expert sharded with FSDP2 unless ``--no-fsdp``), so does the LoRA-stack
template with a LoRA on both experts, only rank 0 writes, and sequence parallel on a one-head
model (every shipped nano and tiny DiT) stops with the clear head-count error."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dit_testing import randomize_
from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import cli, errors, tiny_runs
from wanflow.runner.tiny_models import DIT_CONFIGS, write_tiny_models
from wanflow.wan.dit import WanDiT

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "workflows" / "wanflow_nano_t2v.json"
LORA_TEMPLATE = ROOT / "workflows" / "wan22_a14b_lora_stack_4step.json"
TWO_HEADS = "wan_tiny_t2v_two_heads.safetensors"
TWO_HEADS_LORA = "wan_tiny_t2v_two_heads_lora.safetensors"
# 48x48 pixels, 9 frames: a 3x3x3 grid of 27 tokens, which 2 ranks split with one padding token
# PNG frames: H.264 turns tiny differences into block-sized ones (x264's decisions flip)
SIZE = ["7.width=48", "7.height=48", "7.length=9", "10.format=png"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    write_tiny_models(root / "models")
    tiny_runs.write_input_images(root / "input")
    model = WanDiT(dataclasses.replace(DIT_CONFIGS["t2v"], dim=256, num_heads=2))
    randomize_(model, seed=3)  # the default init zeroes the head: the video would not depend on the DiT
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in model.state_dict().items()},
              str(root / "models" / "diffusion_models" / TWO_HEADS), metadata={"format": "pt"})
    save_file(two_heads_lora(model), str(root / "models" / "loras" / TWO_HEADS_LORA))
    yield root
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None


def two_heads_lora(model: WanDiT) -> dict[str, torch.Tensor]:
    """Low-rank factors on each block's q and v (run-time adapters) and a modulation diff (baked
    into the stored weight, in a sharded model into each rank's shard)."""
    gen = torch.Generator().manual_seed(7)
    dim, tensors = model.config.dim, {}
    for block in range(model.config.num_layers):
        for name in ("q", "v"):
            key = f"diffusion_model.blocks.{block}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(4, dim, generator=gen) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(dim, 4, generator=gen) * 0.1
        shape = model.blocks[block].modulation.shape
        tensors[f"diffusion_model.blocks.{block}.diff_m"] = torch.randn(shape, generator=gen) * 0.05
    return tensors


def run(setup: Path, out: str, gpus: int, model: str = "", *extra: str) -> int:
    """The template on the tiny files; ``model`` (both experts) instead of the one-head pair."""
    models = [f"2.model_name={model}", f"3.model_name={model}"] if model else []
    sets = []
    for item in tiny_runs.TINY_OVERRIDES["wanflow_nano_t2v"] + SIZE + models:
        sets += ["--set", item]
    return cli.main(["run", str(TEMPLATE), "--models", str(setup / "models"), "--input", str(setup / "input"),
                     "--output", str(setup / out), "--gpus", str(gpus), "--quiet", *extra, *sets])


def frames(folder: Path) -> tuple[list[str], np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    pictures = [p for p in files if p.suffix == ".png"]
    assert len(pictures) == 9, files
    decoded = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pictures])
    return [p.relative_to(folder).as_posix() for p in files], decoded


@pytest.mark.slow
def test_two_ranks_render_the_single_process_video(setup, capsys):
    assert run(setup, "one", 1, TWO_HEADS) == errors.EXIT_OK, capsys.readouterr().err
    assert run(setup, "two", 2, TWO_HEADS) == errors.EXIT_OK, capsys.readouterr().err
    names_one, one = frames(setup / "one")
    names_two, two = frames(setup / "two")
    assert names_one == names_two  # rank 0 wrote the same files, rank 1 none
    assert one.shape == two.shape and one.std() > 5  # a real picture, not a constant
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


@pytest.mark.slow
def test_a_lora_stack_on_sharded_experts_renders_the_single_process_video(setup, capsys):
    """The LoRA-stack template (4 distilled steps, both experts) with a LoRA in every slot: 2
    ranks with FSDP-sharded experts give the 1-rank video."""
    sets = []
    for item in [s for s in tiny_runs.TINY_OVERRIDES["wan22_a14b_lora_stack_4step"] if ".lora_" not in s] + SIZE + [
            f"2.model_name={TWO_HEADS}", f"3.model_name={TWO_HEADS}", f"12.lora_high={TWO_HEADS_LORA}",
            f"12.lora_low={TWO_HEADS_LORA}", f"13.lora_low={TWO_HEADS_LORA}", f"14.lora_high={TWO_HEADS_LORA}",
            f"14.lora_low={TWO_HEADS_LORA}"]:
        sets += ["--set", item]
    common = [str(LORA_TEMPLATE), "--models", str(setup / "models"), "--input", str(setup / "input"), "--quiet"]
    for out, gpus in (("lora_one", "1"), ("lora_fsdp", "2")):
        code = cli.main(["run", *common, "--output", str(setup / out), "--gpus", gpus, *sets])
        assert code == errors.EXIT_OK, capsys.readouterr().err
    names_one, one = frames(setup / "lora_one")
    names_two, two = frames(setup / "lora_fsdp")
    assert names_one == names_two and one.std() > 5
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1


@pytest.mark.slow
def test_cfg_parallel_renders_the_single_process_video(setup, capsys):
    """The template's CFG 4/3 batches cond and uncond: one rank each (on a one-head model too,
    there with whole copies: --no-fsdp)."""
    if not (setup / "one").exists():
        assert run(setup, "one", 1, TWO_HEADS) == errors.EXIT_OK, capsys.readouterr().err
    assert run(setup, "cfg", 2, TWO_HEADS, "--cfg-parallel") == errors.EXIT_OK, capsys.readouterr().err
    assert run(setup, "cfg_one_head", 2, "", "--cfg-parallel", "--no-fsdp") == errors.EXIT_OK, capsys.readouterr().err
    names_one, one = frames(setup / "one")
    names_cfg, cfg = frames(setup / "cfg")
    assert names_one == names_cfg
    assert np.abs(one.astype(int) - cfg.astype(int)).max() <= 1
    assert len(frames(setup / "cfg_one_head")[0]) == 9


@pytest.mark.slow
def test_a_head_count_two_ranks_cannot_split_is_a_clear_error(setup, capsys):
    code = run(setup, "one_head", 2)
    err = capsys.readouterr().err
    assert code == errors.EXIT_NODE_FAILED, err
    assert "num_heads=1" in err and "2 ranks" in err, err
    assert not any((setup / "one_head").rglob("*.png"))


def test_gpus_must_be_a_positive_number(capsys):
    assert cli.main(["run", str(TEMPLATE), "--gpus", "0"]) == errors.EXIT_USAGE
    assert "expected 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("gpus,message", [("1", "needs --gpus 2 or more"), ("3", "needs an even --gpus")])
def test_cfg_parallel_needs_an_even_rank_count(capsys, gpus, message):
    assert cli.main(["run", str(TEMPLATE), "--gpus", gpus, "--cfg-parallel", "--quiet"]) == errors.EXIT_USAGE
    assert message in capsys.readouterr().err
