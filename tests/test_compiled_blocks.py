"""Regional compile of the DiT blocks (wan/compiled_blocks.py, wan/adapter_op.py).

Graphs are counted with dynamo's ``CompileCounterWithBackend`` (one count per compiled graph)
and every LoRA / expert change runs under ``error_on_recompile``, so a single recompile fails.
``aot_eager`` goes through the same functionalisation as inductor (the adapter op mutates the
layer output in place) without building C++ kernels; one slow test uses inductor itself.
"""
from __future__ import annotations

import copy
from typing import Iterator

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from wanflow.samplers import schedules as S
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.wan import compiled_blocks as cb
from wanflow.wan.lora import LoraStack

from lora_fixtures import (default_targets, dit_inputs, make_spec, random_dit, run, write_comfyui_ab,
                           write_kohya, write_loha)
from moe_testing import single_thread  # noqa: F401

ATOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches live on the code object: start each test without earlier graphs."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def counted(backend: str = "aot_eager") -> tuple[CompileCounterWithBackend, cb.CompileSettings]:
    counter = CompileCounterWithBackend(backend)
    return counter, cb.CompileSettings(backend=counter, fullgraph=True)


def eager(model, inputs) -> torch.Tensor:
    """The same model's output with its blocks uncompiled (its LoRAs stay applied)."""
    settings = model.blocks[0].forward.settings
    cb.uncompile_blocks(model)
    try:
        return run(model, inputs)
    finally:
        cb.compile_blocks(model, settings)


def test_one_graph_serves_every_block_and_every_lora_change():
    model = random_dit("t2v")
    inputs = dit_inputs(model.config)
    plain = run(model, inputs)
    counter, settings = counted()
    assert cb.compile_blocks(model, settings) == model.config.num_layers and cb.is_compiled(model)
    torch.testing.assert_close(run(model, inputs), plain, rtol=0, atol=ATOL)
    assert counter.frame_count == 1  # three blocks, one graph

    spec = make_spec(model, default_targets(model.config))
    spec_b = make_spec(model, default_targets(model.config), rank=6, seed=5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        stack = LoraStack()
        stack.add("a", high=write_comfyui_ab(spec), low=None)
        applied = stack.apply(model)
        with_lora = run(model, inputs)
        assert (with_lora - plain).abs().max() > 0.1  # the adapters did run inside the graph
        torch.testing.assert_close(with_lora, eager(model, inputs), rtol=0, atol=ATOL)

        stack.set_strength("a", high=-0.4)
        torch.testing.assert_close(run(model, inputs), eager(model, inputs), rtol=0, atol=ATOL)

        applied.remove()  # another stack: a second rank, a LoHa (a dense adapter)
        stack = LoraStack()
        stack.add("a", high=write_comfyui_ab(spec), low=None, strength_high=0.5)
        stack.add("b", high=write_kohya(spec_b), low=None, strength_high=1.5)
        stack.add("c", high=write_loha(spec_b), low=None, strength_high=0.3)
        with stack.apply(model):
            torch.testing.assert_close(run(model, inputs), eager(model, inputs), rtol=0, atol=ATOL)
        with stack.apply(model, mode="merged"):
            torch.testing.assert_close(run(model, inputs), eager(model, inputs), rtol=0, atol=ATOL)
        torch.testing.assert_close(run(model, inputs), plain, rtol=0, atol=ATOL)
    assert counter.frame_count == 1


def test_moe_sampling_with_two_experts_and_their_loras_compiles_once():
    high, low = random_dit("t2v", seed=0), random_dit("t2v", seed=1)
    spec = make_spec(high, default_targets(high.config))
    stack = LoraStack()
    stack.add("style", high=write_comfyui_ab(spec), low=write_comfyui_ab(spec),
              strength_high=0.8, strength_low=0.3)
    stack.apply(high, "high")
    stack.apply(low, "low")
    cfg = high.config
    gen = torch.Generator().manual_seed(4)
    cond = WanConditioning(context=torch.randn(1, 6, cfg.text_dim, generator=gen),
                           negative_context=torch.randn(1, 6, cfg.text_dim, generator=gen))
    noise = seeded_noise((1, cfg.in_dim, 2, 4, 4), 0)
    schedule = S.official_unipc(6, 5.0)

    def sample() -> torch.Tensor:
        return MoESampler(high, low).sample(noise, schedule, cond, cfg_high=4.0, switch_step=3).latent

    reference = sample()
    counter, settings = counted()
    cb.compile_blocks(high, settings)
    cb.compile_blocks(low, settings)
    torch.testing.assert_close(sample(), reference, rtol=0, atol=ATOL)
    with torch._dynamo.config.patch(error_on_recompile=True):
        stack.set_strength("style", high=0.2, low=1.1)
        changed = sample()
    assert (changed - reference).abs().max() > 1e-3
    assert counter.frame_count == 1  # 6 steps x 2 experts x 3 blocks x batched CFG: one graph


@pytest.mark.parametrize("kind", ["i2v", "ti2v", "vace"])
def test_every_variant_matches_eager(kind):
    model = random_dit(kind)
    inputs = dit_inputs(model.config)
    if kind == "ti2v":  # per-token timesteps with a clean first frame
        inputs["t"] = torch.full((1, 2 * 2 * 2), 700.0).index_fill_(1, torch.arange(4), 0.0)
    if kind == "vace":
        inputs["vace_context"] = torch.randn(1, model.config.vace_in_dim, 2, 4, 4,
                                             generator=torch.Generator().manual_seed(7))
    plain = run(model, inputs)
    counter, settings = counted("eager")
    cb.compile_blocks(model, settings)
    torch.testing.assert_close(run(model, inputs), plain, rtol=0, atol=ATOL)
    # VACE blocks are another class: one more graph for them, shared by all of them
    assert counter.frame_count == (2 if kind == "vace" else 1)


def test_autograd_runs_the_blocks_eagerly():
    """LoRA training through a compiled model: the opaque adapter op has no gradient."""
    model = random_dit("t2v")
    inputs = dit_inputs(model.config)
    counter, settings = counted("eager")
    cb.compile_blocks(model, settings)
    spec = make_spec(model, default_targets(model.config))
    stack = LoraStack()
    stack.add("a", high=write_comfyui_ab(spec), low=None)
    with stack.apply(model):
        adapter = model.blocks[0].self_attn.q.adapters[0]
        adapter.down.requires_grad_(True)
        model(**inputs).square().mean().backward()
    assert counter.frame_count == 0 and adapter.down.grad is not None


def test_a_copied_compiled_model_runs_its_own_adapters():
    model = random_dit("t2v")
    inputs = dit_inputs(model.config)
    counter, settings = counted("eager")
    cb.compile_blocks(model, settings)
    run(model, inputs)
    twin = copy.deepcopy(model)
    stack = LoraStack()
    stack.add("a", high=write_comfyui_ab(make_spec(model, default_targets(model.config))), low=None)
    with stack.apply(model):
        with_lora = run(model, inputs)
        torch.testing.assert_close(run(twin, inputs), eager(twin, inputs), rtol=0, atol=ATOL)
        assert (run(twin, inputs) - with_lora).abs().max() > 0.1
    assert counter.frame_count == 1


def test_uncompile_and_settings():
    model = random_dit("t2v")
    cb.compile_blocks(model)
    assert cb.uncompile_blocks(model) == model.config.num_layers and not cb.is_compiled(model)
    assert "forward" not in model.blocks[0].__dict__
    with pytest.raises(ValueError, match="reduce-overhead"):
        cb.CompileSettings(mode="reduce-overhead")
    with pytest.raises(ValueError, match="no 'blocks'"):
        cb.compile_blocks(torch.nn.Linear(2, 2))


def test_compile_problem_names_the_missing_compiler(monkeypatch):
    monkeypatch.setattr(cb.shutil, "which", lambda name: None)
    assert "C++ compiler" in cb.compile_problem("cpu") and "g++" in cb.compile_problem("cpu")
    assert cb.compile_problem("cpu", backend="aot_eager") is None


@pytest.mark.slow
def test_inductor_blocks_match_eager_and_survive_a_strength_change():
    if cb.compile_problem("cpu") is not None:
        pytest.skip(cb.compile_problem("cpu"))
    model = random_dit("t2v")
    inputs = dit_inputs(model.config)
    stack = LoraStack()
    stack.add("a", high=write_comfyui_ab(make_spec(model, default_targets(model.config))), low=None)
    stack.apply(model)
    counter = CompileCounterWithBackend("inductor")
    cb.compile_blocks(model, cb.CompileSettings(backend=counter, fullgraph=True))
    torch.testing.assert_close(run(model, inputs), eager(model, inputs), rtol=0, atol=ATOL)
    with torch._dynamo.config.patch(error_on_recompile=True):
        stack.set_strength("a", high=0.3)
        torch.testing.assert_close(run(model, inputs), eager(model, inputs), rtol=0, atol=ATOL)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_wanflow_run_compile_samples_the_nano_template_with_compiled_blocks(tmp_path, monkeypatch):
    """``wanflow run --compile`` on the shipped nano template: both experts, one inductor graph."""
    from torch._dynamo.utils import counters

    from wanflow.runner import cli, errors, templates

    if cb.compile_problem("cpu") is not None:
        pytest.skip(cb.compile_problem("cpu"))
    monkeypatch.setenv(cb.COMPILE_ENV, "0")  # restored after the test (--compile sets it to 1)
    flow = templates.WORKFLOWS_DIR / "wanflow_nano_t2v.json"
    graphs = counters["stats"]["unique_graphs"]
    code = cli.main(["run", str(flow), "--output", str(tmp_path), "--quiet", "--compile",
                     "--set", "8.steps=4", "--set", "7.length=5"])
    assert code == errors.EXIT_OK
    assert counters["stats"]["unique_graphs"] - graphs == 1 and any(tmp_path.rglob("*.mp4"))


def test_block_swap_streams_the_blocks_of_a_compiled_model():
    """Block swap's hooks run outside the compiled forward: streamed blocks, one graph, same output."""
    from wanflow.wan.block_swap import BlockSwap

    model = random_dit("t2v")
    inputs = dit_inputs(model.config)
    plain = run(model, inputs)
    counter, settings = counted()
    cb.compile_blocks(model, settings)
    probe = BlockSwap(model, 1)
    budget = probe.plan_for(10 ** 12).other_bytes + 2 * max(unit.nbytes for unit in probe.units)
    swap = BlockSwap(model, budget)  # room for the non-block parts and two blocks in flight
    swap.restore("cpu")
    assert len(swap.plan.streamed) == model.config.num_layers
    torch.testing.assert_close(run(model, inputs), plain, rtol=0, atol=ATOL)
    torch.testing.assert_close(run(model, inputs), plain, rtol=0, atol=ATOL)
    swap.park()
    assert counter.frame_count == 1
