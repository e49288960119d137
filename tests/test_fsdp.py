"""FSDP2 sharding of the DiT (distributed/fsdp.py) on 2 gloo ranks: each rank holds about half of
the weights, and the sharded model, under sequence parallel and then alone, gives the
single-process velocity (T2V, VACE, whose before/after projections run outside their blocks'
forward, and a file mixing bf16 and fp32 weights); and `wanflow run --gpus N`'s path: the model
loader node shards each expert, the MoE sampler node runs them with a LoRA and CFG."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from test_sequence_parallel import TOL, case_inputs, random_model
from wanflow.distributed import launch
from wanflow.distributed.fsdp import local_bytes, minor_params, shard_dit, shard_problem
from wanflow.distributed.sequence_parallel import SequenceParallelDiT
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.wan import ops


def _compare(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    results = {}
    for name, kind, size in (("t2v_odd", "t2v", (3, 6, 10)), ("vace_odd", "vace", (3, 6, 6)),
                             ("t2v_mixed_dtypes", "t2v", (3, 6, 10)), ("gguf_q8_0", "t2v", (3, 6, 6))):
        model = load_dit(f"{out_dir}/{GGUF}").model if name == "gguf_q8_0" else random_model(kind)
        if name == "t2v_mixed_dtypes":  # bf16 Linear weights beside fp32 biases, norms, modulations
            for module in model.modules():
                if isinstance(module, ops.Linear):
                    module.weight.data = module.weight.data.to(torch.bfloat16)
        total = local_bytes(model)
        inputs = case_inputs(kind, *size) if name != "gguf_q8_0" else _gguf_inputs(model)
        x, t, context = inputs.pop("x"), inputs.pop("t"), inputs.pop("context")
        with torch.no_grad():
            reference = model(x, t, context, **inputs)
            shard_dit(model)
            parallel = SequenceParallelDiT(model)
            both = [parallel(x, t, context, **inputs) for _ in range(2)]  # resharded in between
            parallel.unwrap()
            sharded = model(x, t, context, **inputs)  # a plain call after the wrapper's
        results[name] = (local_bytes(model) / total, (sharded - reference).abs().max().item(),
                         max((b - reference).abs().max().item() for b in both))
    torch.save(results, f"{out_dir}/rank{rank}.pt")


GGUF = "t2v_q8_0.gguf"


def _gguf_inputs(model) -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(2, 16, 3, 6, 6, generator=gen), t=torch.tensor([700.0, 300.0]),
                context=torch.randn(2, 7, model.config.text_dim, generator=gen))


def _write_gguf(folder) -> None:
    """A city96-style Q8_0 file of a 2-head T2V DiT: raw uint8 blocks beside bf16 and fp32 tensors."""
    from dit_testing import randomize_
    from gguf_fixtures import city96_file
    from wanflow.runner.tiny_models import DIT_CONFIGS
    from wanflow.wan.dit import WanDiT

    model = WanDiT(dataclasses.replace(DIT_CONFIGS["t2v"], dim=256, num_heads=2))
    randomize_(model, 1)
    city96_file(folder / GGUF, model.state_dict(), "Q8_0")


@pytest.mark.slow
def test_sharded_model_equals_one_process(tmp_path):
    """Also a GGUF (Q8_0), whose raw blocks shard by rows like any weight."""
    _write_gguf(tmp_path)
    launch.spawn(_compare, 2, args=(str(tmp_path),), backend="gloo")
    for rank in range(2):
        for name, (share, err_sharded, err_parallel) in torch.load(tmp_path / f"rank{rank}.pt").items():
            # mixed dtypes (and GGUF): the small fp32/bf16 parts stay whole on each rank, a larger share
            # of a tiny model than of a 14B one
            bound = 0.55 if name in ("t2v_odd", "vace_odd") else 0.6
            assert share < bound, f"{name} rank {rank} holds {share:.0%} of the weights"
            assert err_sharded <= TOL, f"{name} rank {rank}: FSDP alone: {err_sharded:.3g}"
            assert err_parallel <= TOL, f"{name} rank {rank}: FSDP + sequence parallel: {err_parallel:.3g}"


# --------------------------------------------------------------------------------------------
# `wanflow run --gpus N`'s path: the model loader shards each expert, the MoE sampler runs them
# --------------------------------------------------------------------------------------------

HIGH, LOW, LORA = "fsdp_high.safetensors", "fsdp_low.safetensors", "fsdp_lora.safetensors"
FRAMES, HEIGHT, WIDTH = 3, 6, 6  # latent: 27 tokens, which 2 ranks split with one padding token


def _write_models(root) -> None:
    """Two fp32 experts with 2 heads (head_dim 128, so the variant is detected as for real files)
    and a LoRA with low-rank factors (adapters) and full diffs on a modulation, a norm and the
    patch embedding's conv (baked into the shards)."""
    from safetensors.torch import save_file

    from dit_testing import randomize_
    from wanflow.runner.tiny_models import DIT_CONFIGS
    from wanflow.wan.dit import WanDiT

    config = dataclasses.replace(DIT_CONFIGS["t2v"], dim=256, num_heads=2)
    (root / "diffusion_models").mkdir(parents=True)
    (root / "loras").mkdir()
    for name, seed in ((HIGH, 1), (LOW, 2)):
        model = WanDiT(config)
        randomize_(model, seed)
        save_file({"model.diffusion_model." + k: v.contiguous() for k, v in model.state_dict().items()},
                  str(root / "diffusion_models" / name), metadata={"format": "pt"})
    gen = torch.Generator().manual_seed(5)
    lora = {}
    sd = model.state_dict()
    for block in range(config.num_layers):
        key = f"diffusion_model.blocks.{block}.self_attn.q"
        lora[f"{key}.lora_A.weight"] = torch.randn(4, config.dim, generator=gen) * 0.1
        lora[f"{key}.lora_B.weight"] = torch.randn(config.dim, 4, generator=gen) * 0.1
        lora[f"diffusion_model.blocks.{block}.diff_m"] = 0.05 * torch.randn(sd[f"blocks.{block}.modulation"].shape,
                                                                            generator=gen)
        lora[f"diffusion_model.blocks.{block}.self_attn.norm_q.diff"] = 0.05 * torch.randn(config.dim, generator=gen)
    lora["diffusion_model.patch_embedding.diff"] = 0.05 * torch.randn(sd["patch_embedding.weight"].shape,
                                                                      generator=gen)
    save_file(lora, str(root / "loras" / LORA))


def _sample_with_nodes(models: str, cfg_parallel: bool = False, sharded: bool = True) -> dict:
    """Load both experts with the model loader node and sample with the MoE sampler node (a
    LoRA on both experts, CFG 4 batched); the latent, and per expert this rank's parameter
    bytes against the whole model's."""
    from wanflow.distributed import cfg_parallel as cfg
    from wanflow.distributed import fsdp
    from wanflow.nodes import comfy_adapter as ca
    from wanflow.nodes.loader_nodes import WanFlowModelLoader
    from wanflow.nodes.lora_nodes import WanFlowLoraSelect
    from wanflow.nodes.sampler_nodes import WanFlowMoESampler
    from wanflow.nodes.train_nodes import WanFlowTrainLora
    from wanflow.samplers.conditioning import WanConditioning

    ca.configure_headless(models, None, None, "cpu")
    try:
        if dist.is_initialized():
            cfg.use_layout(cfg.parallel_layout(cfg_parallel))
            fsdp.use_fsdp(sharded)
        loader = WanFlowModelLoader()
        experts = [loader.load(name, "default", "sdpa")["result"][0] for name in (HIGH, LOW)]
        shares = [(fsdp.local_bytes(h.model), sum(p.numel() * p.element_size() for p in h.model.parameters()))
                  for h in experts]
        before = [[fsdp.local_tensor(p).clone() for p in h.model.parameters()] for h in experts]
        stack = WanFlowLoraSelect().select(LORA, 1.0, LORA, 0.7)[0]
        gen = torch.Generator().manual_seed(0)
        text_dim = experts[0].model.config.text_dim
        cond = WanConditioning(torch.randn(1, 7, text_dim, generator=gen), torch.randn(1, 7, text_dim, generator=gen))
        latent = {"samples": torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH)}
        out = WanFlowMoESampler().sample(experts[0], cond, latent, seed=3, steps=4, shift=5.0, solver="euler",
                                         scheduler="simple", cfg_high=4.0, cfg_low=3.0, boundary=0.5, denoise=1.0,
                                         model_low=experts[1], lora_stack=stack)
        restored = all(torch.equal(fsdp.local_tensor(p), b) for h, saved in zip(experts, before)
                       for p, b in zip(h.model.parameters(), saved))
        train_error = None
        if fsdp.is_sharded(experts[0].model):  # training needs whole weights: refused before any work
            try:
                WanFlowTrainLora().train(experts[0], None, None, *[None] * 13)
            except ValueError as exc:
                train_error = str(exc)
        return {"latent": out["result"][0]["samples"], "shares": shares, "restored": restored,
                "sharded": [fsdp.is_sharded(h.model) for h in experts], "train_error": train_error}
    finally:
        ca.configure_headless(None, None, None)
        ca._headless.models_dir = None


def _node_ranks(rank: int, world: int, device: torch.device, models: str, out_dir: str) -> None:
    results = {layout: _sample_with_nodes(models, layout.startswith("cfg"), not layout.endswith("whole"))
               for layout in ("sequence", "cfg", "cfg_whole")}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_loader_shards_each_expert_and_the_sampler_matches_one_process(tmp_path):
    """The loader node shards both experts (each rank holds about half of each), and the MoE
    sampler with both experts, a LoRA (adapters and baked diffs) and CFG gives the single-process
    latent, with sequence parallel or CFG-parallel; the LoRA comes off the shards bit-exactly.

    CFG-parallel runs each rank's forward on a batch of 1 where one process runs 2 at once, and
    CPU matmuls round differently at another batch size: there the bound is 1e-5 relative to the
    latent, and sharding adds nothing to it (the same run with whole copies is bit-equal)."""
    _write_models(tmp_path / "models")
    reference = _sample_with_nodes(str(tmp_path / "models"))
    assert reference["sharded"] == [False, False]
    scale = reference["latent"].abs().max().item()
    assert scale > 0.1
    launch.spawn(_node_ranks, 2, args=(str(tmp_path / "models"), str(tmp_path)), backend="gloo")
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for layout in ("sequence", "cfg"):
            result = results[layout]
            assert result["sharded"] == [True, True], layout
            for expert, (local, whole) in zip(("high", "low"), result["shares"]):
                assert 0.45 < local / whole < 0.55, f"{layout} rank {rank} {expert}: holds {local / whole:.0%}"
            err = (result["latent"] - reference["latent"]).abs().max().item()
            bound = TOL if layout == "sequence" else TOL * scale
            assert err <= bound, f"{layout} rank {rank}: {err:.3g} (latent up to {scale:.3g})"
            assert result["restored"], f"{layout} rank {rank}: the LoRA left the shards changed"
            assert "Train LoRA: model is sharded" in result["train_error"]
        whole = results["cfg_whole"]
        assert whole["sharded"] == [False, False]
        assert whole["shares"][0][0] == whole["shares"][0][1]  # --no-fsdp: whole copies
        assert torch.equal(results["cfg"]["latent"], whole["latent"]), f"rank {rank}: sharding changed CFG-parallel"


def test_fp8_weights_cannot_be_sharded_over_gloo():
    """gloo has no fp8 all-gather: the loader keeps such a model whole (the reason names the dtype)."""
    model = random_model("t2v")
    assert shard_problem(model, "cpu") is None
    model.blocks[0].ffn[0].weight.data = model.blocks[0].ffn[0].weight.data.to(torch.float8_e4m3fn)
    assert "float8_e4m3fn" in shard_problem(model, "cpu")
    assert shard_problem(model, "cuda") is None


def test_a_unit_shards_its_largest_dtype_and_keeps_the_others_whole():
    model = random_model("t2v")
    block = model.blocks[0]
    for module in block.modules():
        if isinstance(module, ops.Linear):
            module.weight.data = module.weight.data.to(torch.bfloat16)
    minor = minor_params(block)
    assert minor and all(p.dtype == torch.float32 for p in minor)
    assert block.modulation in minor and block.ffn[0].weight not in minor
    assert minor_params(random_model("t2v").blocks[0]) == set()
