"""Ulysses sequence parallel (distributed/sequence_parallel.py): 2 gloo ranks on CPU give the
single-process velocity to <= 1e-5 in fp32, for T2V, I2V, VACE, TI2V per-token timesteps and a
LoRA, with token counts 2 divides and does not divide (padding masked out, then cut off).

All cases run in one spawn of 2 processes (start-up dominates); each rank compares its own
sequence-parallel output with a plain forward of the same model and returns the max error.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from lora_fixtures import default_targets, make_spec, write_comfyui_ab
from dit_testing import randomize_
from wanflow.distributed import launch
from wanflow.distributed.sequence_parallel import (SequenceParallelDiT, SequenceParallelError,
                                                   TokenSplit, check_heads, local_groups)
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.lora import LoraStack

TOL = 1e-5
WORLD = 2


def four_heads(kind: str):
    """The tiny preset with 4 heads (head_dim 12), so 2 ranks can split them."""
    return dataclasses.replace(TINY_PRESETS[kind], num_heads=4)


def random_model(kind: str, seed: int = 0) -> WanDiT:
    model = WanDiT(four_heads(kind)).eval()
    randomize_(model, seed)
    return model


def case_inputs(kind: str, frames: int, height: int, width: int, batch: int = 2,
                per_frame_t: bool = False, seed: int = 1) -> tuple[WanDiT, dict]:
    cfg = four_heads(kind)
    gen = torch.Generator().manual_seed(seed)
    x_channels = cfg.out_dim
    inputs = dict(x=torch.randn(batch, x_channels, frames, height, width, generator=gen),
                  t=torch.tensor([700.0, 300.0][:batch]),
                  context=torch.randn(batch, 7, cfg.text_dim, generator=gen))
    if per_frame_t:
        inputs["t"] = torch.rand(batch, frames, generator=gen) * 1000
    if cfg.in_dim > cfg.out_dim and kind != "ti2v":
        inputs["y"] = torch.randn(batch, cfg.in_dim - cfg.out_dim, frames, height, width,
                                  generator=gen)
    if cfg.has_image_input:
        n = cfg.flf_pos_len or 257
        inputs["clip_fea"] = torch.randn(batch, n, cfg.clip_dim, generator=gen)
    if kind == "ti2v":  # official per-token timesteps: first-frame tokens at t=0
        tokens_per_frame = (height // 2) * (width // 2)
        t = torch.full((batch, frames * tokens_per_frame), 600.0)
        t[:, :tokens_per_frame] = 0.0
        inputs["t"] = t
    if kind == "vace":  # two contexts, the second shorter than the clip (zero-padded frames)
        inputs["vace_context"] = [
            torch.randn(batch, cfg.vace_in_dim, frames, height, width, generator=gen),
            torch.randn(batch, cfg.vace_in_dim, frames - 1, height, width, generator=gen)]
        inputs["vace_scale"] = [1.0, 0.5]
    return inputs


# name -> (kind, (F, H, W) latent, options); token count = F * H/2 * W/2
CASES = {
    "t2v_even": ("t2v", (2, 4, 8), {}),                       # 16 tokens
    "t2v_odd": ("t2v", (3, 6, 10), {}),                       # 45 tokens: padded to 46
    "t2v_odd_per_frame_t": ("t2v", (3, 6, 10), {"per_frame_t": True}),
    "i2v_odd": ("i2v", (3, 2, 6), {}),                        # 9 tokens, y + CLIP
    "i2v_2.2_even": ("i2v-2.2", (2, 4, 4), {}),               # y only
    "vace_odd": ("vace", (3, 6, 6), {}),                      # 27 tokens
    "vace_even": ("vace", (2, 4, 4), {}),
    "ti2v_odd": ("ti2v", (3, 2, 6), {}),                      # per-token t, 9 tokens
    "t2v_lora_odd": ("t2v", (3, 6, 2), {}),                   # 9 tokens, LoRA adapters
}


def _compare(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    errors = {}
    for name, (kind, (f, h, w), options) in CASES.items():
        model = random_model(kind)
        inputs = case_inputs(kind, f, h, w, **options)
        x, t, context = inputs.pop("x"), inputs.pop("t"), inputs.pop("context")
        applied = None
        if "lora" in name:
            with torch.no_grad():
                without = model(x, t, context, **inputs)
            spec = make_spec(model, default_targets(model.config), seed=2)
            stack = LoraStack()
            stack.add("lora", high=write_comfyui_ab(spec), low=None)
            applied = stack.apply(model, "high")
        with torch.no_grad():
            reference = model(x, t, context, **inputs)
            if applied is not None:  # the adapters are live: the case tests something
                assert (reference - without).abs().max() > 1e-3
            wrapped = SequenceParallelDiT(model)
            parallel = wrapped(x, t, context, **inputs)
            restored = wrapped.unwrap()(x, t, context, **inputs)
        if applied is not None:
            applied.remove()
        errors[name] = ((parallel - reference).abs().max().item(),
                        torch.equal(restored, reference), tuple(parallel.shape) == tuple(reference.shape))
    errors["two_wrappers_of_one_model"] = _two_wrappers()
    torch.save(errors, f"{out_dir}/rank{rank}.pt")


def _two_wrappers() -> tuple[float, bool, bool]:
    """Both experts from one file are one model: two wrappers share its split state, and only the
    last unwrap restores it (padding is masked through either)."""
    model = random_model("t2v")
    inputs = case_inputs("t2v", 3, 6, 10)
    x, t, context = inputs.pop("x"), inputs.pop("t"), inputs.pop("context")
    with torch.no_grad():
        reference = model(x, t, context)
        high, low = SequenceParallelDiT(model), SequenceParallelDiT(model)
        err = max((high(x, t, context) - reference).abs().max().item(),
                  (low(x, t, context) - reference).abs().max().item())
        low.unwrap()
        err = max(err, (high(x, t, context) - reference).abs().max().item())
        high.unwrap()
        restored = torch.equal(model(x, t, context), reference)
    return err, restored, True


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp")
    launch.spawn(_compare, WORLD, args=(str(out),), backend="gloo")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES) + ["two_wrappers_of_one_model"])
def test_two_ranks_equal_one_process(errors, name):
    for rank, result in enumerate(errors):
        err, restored_equal, same_shape = result[name]
        assert same_shape, (name, rank)
        assert err <= TOL, f"{name} rank {rank}: max |SP - single| = {err:.3g}"
        assert restored_equal, f"{name} rank {rank}: unwrap() did not restore the model"


def test_heads_not_divisible_is_a_clear_error():
    with pytest.raises(SequenceParallelError, match=r"num_heads=3.*2 ranks.*\[1, 3\]"):
        check_heads(TINY_PRESETS["t2v"].num_heads, 2)
    check_heads(4, 2)


def _wrap_three_heads(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    try:
        SequenceParallelDiT(WanDiT(TINY_PRESETS["t2v"]))
    except SequenceParallelError as exc:
        torch.save(str(exc), f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_wrapping_a_three_head_model_on_two_ranks_raises(tmp_path):
    launch.spawn(_wrap_three_heads, WORLD, args=(str(tmp_path),), backend="gloo")
    message = torch.load(tmp_path / "rank0.pt")
    assert "num_heads=3" in message and "2 ranks" in message


def test_wrapping_without_a_process_group_says_so():
    assert not dist.is_initialized()
    with pytest.raises(SequenceParallelError, match="not initialised"):
        SequenceParallelDiT(random_model("t2v"))


@pytest.mark.parametrize("length,world", [(45, 2), (16, 2), (27, 4), (9, 3)])
@pytest.mark.parametrize("groups_of", ["one", "frames", "tokens"])
def test_local_groups_give_each_token_its_own_vector(length, world, groups_of):
    frames = {45: 3, 16: 2, 27: 3, 9: 3}[length]
    groups = {"one": 1, "frames": frames, "tokens": length}[groups_of]
    e = torch.randn(2, groups, 5)
    per_token = e.repeat_interleave(length // groups, dim=1)
    for rank in range(world):
        split = TokenSplit(length, world, rank)
        local = local_groups(e, split)
        expanded = local.repeat_interleave(split.local // local.shape[1], dim=1)
        real = min(split.local, max(0, length - split.start))
        assert torch.equal(expanded[:, :real], per_token[:, split.start:split.start + real])
