"""Block swap (wan/block_swap.py): the residency plan, and streaming blocks through forward hooks.

On the CPU the "device copies" are clones, so the hooks' logic (one block ahead, release, LoRA
buffers travelling with their block, no duplicated weights) runs with a fake budget. The CUDA
test runs when a GPU is present: peak memory and output against the non-swapped model.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dit_testing import randomize_
from lora_fixtures import (default_targets, dit_inputs, make_spec, random_dit, run, to_fp8,
                           write_comfyui_ab)
from wanflow.model_loaders.parking import DiskBacked
from wanflow.wan.block_swap import BlockSwap, BudgetTooSmall, _slots, plan_residency
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS, WanDiTConfig
from wanflow.wan.lora import LoraStack

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def six_block_dit(kind: str = "t2v", seed: int = 0) -> WanDiT:
    """A tiny random WanDiT with six blocks (the tiny presets have three)."""
    model = WanDiT(dataclasses.replace(TINY_PRESETS[kind], num_layers=6)).eval()
    randomize_(model, seed)
    return model


def block_budget(swap: BlockSwap, resident: int) -> int:
    """A budget that keeps ``resident`` blocks and streams the rest (two in flight)."""
    sizes = [u.nbytes for u in swap.units]
    other = swap.plan_for(10 ** 12).other_bytes
    return other + sum(sizes[:resident]) + 2 * max(sizes[resident:])


def storages(model: torch.nn.Module) -> dict[int, int]:
    """Every distinct storage reachable from the model's parameters and buffers -> its bytes."""
    tensors = list(model.parameters()) + list(model.buffers())
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def host_pointers(model: torch.nn.Module) -> dict[str, int]:
    return {name: t.data_ptr() for name, t in list(model.named_parameters()) + list(model.named_buffers())}


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

def test_plan_everything_fits():
    plan = plan_residency([10] * 4, 5, 45)
    assert plan.resident == (0, 1, 2, 3) and plan.streamed == () and not plan.swapping
    assert plan.device_bytes == 45


@pytest.mark.parametrize("budget, resident", [(44, (0,)), (35, (0,)), (34, ()), (25, ())])
def test_plan_keeps_a_prefix_and_counts_two_blocks_in_flight(budget, resident):
    plan = plan_residency([10] * 4, 5, budget)
    assert plan.resident == resident
    assert plan.streamed == tuple(i for i in range(4) if i not in resident)
    assert plan.in_flight_bytes == 20 and plan.device_bytes <= budget


def test_plan_with_uneven_blocks_stays_within_budget():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        sizes = torch.randint(1, 100, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
        other = int(torch.randint(0, 200, (1,), generator=gen))
        budget = int(torch.randint(1, 1200, (1,), generator=gen))
        try:
            plan = plan_residency(sizes, other, budget)
        except BudgetTooSmall:
            assert other + sum(sorted(sizes)[-2:]) > budget
            continue
        assert plan.device_bytes <= budget
        assert sorted(plan.resident + plan.streamed) == list(range(len(sizes)))
        assert plan.resident == tuple(range(len(plan.resident)))


@pytest.mark.parametrize("budget", [24, 50])
def test_plan_refuses_a_budget_below_the_non_block_part_plus_two_blocks(budget):
    other = 5 if budget == 24 else 100
    with pytest.raises(BudgetTooSmall, match=r"parts that never stream .*it needs at least"):
        plan_residency([10] * 4, other, budget)


# --------------------------------------------------------------------------------------------
# Streaming on the CPU
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("resident", [0, 2])
def test_swapped_forward_equals_plain_forward_and_streams_one_block_ahead(resident):
    model = six_block_dit()
    inputs = dit_inputs(model.config)
    expected = run(model, inputs)
    swap = BlockSwap(model, 1)
    swap.budget = block_budget(swap, resident)
    hosts = host_pointers(model)
    seen: list[str] = []

    def check(index):
        def hook(module, args):
            name = f"blocks.{index}"
            seen.append(name)
            assert len(swap.loaded) <= 2
            weight = module.self_attn.q.weight
            if index >= resident:  # streamed: computing on a device copy, next one on its way
                assert weight.data_ptr() != hosts[f"{name}.self_attn.q.weight"]
                if index + 1 < 6:
                    assert swap.loaded == [name, f"blocks.{index + 1}"]
            else:
                assert weight.data_ptr() == hosts[f"{name}.self_attn.q.weight"]
        return hook

    assert swap.restore(CPU) is model
    assert swap.plan.resident == tuple(range(resident)) and swap.hooked
    handles = [b.register_forward_pre_hook(check(i)) for i, b in enumerate(model.blocks)]
    assert torch.equal(run(model, inputs), expected)
    assert torch.equal(run(model, inputs), expected)
    assert seen == [f"blocks.{i}" for i in range(6)] * 2
    assert swap.loaded == [] and host_pointers(model) == hosts  # released: weights point at RAM
    for handle in handles:
        handle.remove()
    swap.park()
    assert not swap.hooked and hook_count(model) == 0
    assert torch.equal(run(model, inputs), expected)


def test_no_second_copy_and_stable_host_tensors_across_cycles():
    model = six_block_dit()
    inputs = dit_inputs(model.config)
    before, hosts = storages(model), host_pointers(model)
    swap = BlockSwap(model, 1)
    swap.budget = block_budget(swap, 1)
    for _ in range(2):
        swap.restore(CPU)
        assert storages(model) == before
        run(model, inputs)
        assert storages(model) == before and host_pointers(model) == hosts
        swap.park()
        assert storages(model) == before and host_pointers(model) == hosts


def test_a_failing_forward_releases_its_blocks():
    model = six_block_dit()
    swap = BlockSwap(model, 1)
    swap.budget = block_budget(swap, 0)
    swap.restore(CPU)
    inputs = dit_inputs(model.config)
    with pytest.raises(ValueError, match="context must be"):
        model(inputs["x"], inputs["t"], inputs["context"][..., :5])
    assert swap.loaded == []
    swap.park()


def test_too_small_budget_and_missing_budget_are_refused():
    model = six_block_dit()
    with pytest.raises(BudgetTooSmall, match="parts that never stream"):
        BlockSwap(model, 1000).restore(CPU)
    with pytest.raises(ValueError, match="give a budget"):
        BlockSwap(model).restore(CPU)
    with pytest.raises(ValueError, match="positive"):
        BlockSwap(model, 0)
    with pytest.raises(TypeError, match="blocks"):
        BlockSwap(torch.nn.Linear(2, 2), 10)
    assert hook_count(model) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="pinning works here; the fallback is for machines where it fails")
def test_streams_from_pageable_ram_when_pinning_fails():
    model = six_block_dit()
    swap = BlockSwap(model, 10 ** 9)
    slot = next(s for s in _slots(model.blocks[0]) if s.name == "weight")
    before = slot.get()
    swap._pin = True  # as on a CUDA device; this CPU-only torch cannot pin
    assert swap._host(slot) is not None and not swap._pin
    assert slot.get().data_ptr() == before.data_ptr()


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_fp8_weights_and_scales_stream_as_stored(scaled):
    model = six_block_dit()
    to_fp8(model, scaled)
    inputs = dit_inputs(model.config)
    expected = run(model, inputs)
    swap = BlockSwap(model, 1)
    swap.budget = block_budget(swap, 1)
    swap.restore(CPU)
    assert torch.equal(run(model, inputs), expected)
    assert model.blocks[3].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert hasattr(model.blocks[3].self_attn.q, "scale_weight") == scaled
    swap.park()


@pytest.mark.parametrize("contexts", [1, 2])
def test_vace_blocks_stream_in_their_order(contexts):
    model = random_dit("vace")
    cfg = model.config
    inputs = dit_inputs(cfg)
    gen = torch.Generator().manual_seed(4)
    vace = [torch.randn(1, cfg.vace_in_dim, 2, 4, 4, generator=gen) for _ in range(contexts)]
    scale = [0.7, 1.3][:contexts]
    with torch.no_grad():
        expected = model(inputs["x"], inputs["t"], inputs["context"], vace_context=vace, vace_scale=scale)
        plain = run(model, inputs)
    swap = BlockSwap(model, 1)
    assert [u.name for u in swap.units] == ["blocks.0", "vace_blocks.0", "blocks.1", "blocks.2", "vace_blocks.1"]
    swap.budget = block_budget(swap, 0)
    swap.restore(CPU)
    assert len(swap.plan.streamed) == 5
    with torch.no_grad():
        got = model(inputs["x"], inputs["t"], inputs["context"], vace_context=vace, vace_scale=scale)
    assert torch.equal(got, expected)
    assert torch.equal(run(model, inputs), plain)  # without VACE context the VACE blocks stay in RAM
    swap.park()
    assert hook_count(model) == 0


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
@pytest.mark.parametrize("apply_after_restore", [False, True])
def test_lora_adapters_travel_with_their_block(mode, apply_after_restore):
    model = six_block_dit()
    inputs = dit_inputs(model.config)
    spec = make_spec(model, default_targets(model.config), seed=2)
    stack = LoraStack()
    stack.add("style", high=write_comfyui_ab(spec), low=None, strength_high=0.8)
    with stack.apply(model, "high", mode=mode):
        expected = run(model, inputs)
    swap = BlockSwap(model, 1)
    if not apply_after_restore:
        applied = stack.apply(model, "high", mode=mode)
    swap.budget = block_budget(swap, 2)
    swap.restore(CPU)
    if apply_after_restore:
        applied = stack.apply(model, "high", mode=mode)
    q = model.blocks[4].self_attn.q
    seen = []

    def check(module, args):
        if mode == "unmerged":  # the adapter's factors are the block's device copies too
            adapter = q.adapters[0]
            unit = swap.units[4]
            host = next(h for s, h in zip(unit.slots, unit.hosts) if s.owner is adapter and s.name == "down")
            assert adapter.down.data_ptr() != host.data_ptr()
        seen.append(True)

    handle = model.blocks[4].register_forward_pre_hook(check)
    assert torch.equal(run(model, inputs), expected)
    assert seen
    stack.set_strength("style", high=0.0)  # merged: re-baked in RAM; unmerged: read per call
    without = run(model, inputs)
    handle.remove()
    swap.park()
    applied.remove()
    assert torch.equal(without, run(model, inputs))


def test_disk_backed_weights_are_read_back_before_streaming():
    model = six_block_dit()
    inputs = dit_inputs(model.config)
    expected = run(model, inputs)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    disk = DiskBacked(model, lambda m: m.load_state_dict({k: v.clone() for k, v in saved.items()}, assign=True),
                      "test expert")
    disk.park()
    with pytest.raises(ValueError, match="inner="):
        BlockSwap(model, 10 ** 9).restore(CPU)
    swap = BlockSwap(model, 1, inner=disk)
    swap.budget = block_budget(BlockSwap(WanDiT(model.config)), 1)
    for _ in range(2):
        swap.restore(CPU)
        assert swap.plan.streamed and torch.equal(run(model, inputs), expected)
        swap.park()
        assert all(p.device.type == "meta" for p in model.parameters())


# --------------------------------------------------------------------------------------------
# CUDA
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_within_budget_with_pinned_host_weights():
    cuda = torch.device("cuda", torch.cuda.current_device())
    cfg = WanDiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=8, text_dim=64)
    model = WanDiT(cfg).eval()
    randomize_(model, 0)
    inputs = {k: v.to(cuda) for k, v in dit_inputs(cfg).items()}

    model.to(cuda)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated(cuda)
    torch.cuda.reset_peak_memory_stats(cuda)
    expected = run(model, inputs)
    activations = torch.cuda.max_memory_allocated(cuda) - start
    model.to("cpu")
    torch.cuda.empty_cache()

    swap = BlockSwap(model, 1)
    block = max(u.nbytes for u in swap.units)
    swap.budget = budget = block_budget(swap, 2)
    for cycle in range(2):
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)
        swap.restore(cuda)
        assert swap.plan.resident == (0, 1) and len(swap.plan.streamed) == 6
        got = run(model, inputs)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(cuda) - start
        assert peak <= budget + block + activations + 2 ** 20, (peak, budget, block, activations)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # same kernels: bit-equal in practice
        streamed = [p for u in swap.units if u.streamed for p in u.module.parameters()]
        assert all(p.device.type == "cpu" and p.is_pinned() for p in streamed)
        pointers = [p.data_ptr() for p in streamed]
        if cycle == 0:
            first_pointers = pointers
        else:
            assert pointers == first_pointers  # pinned once, not again per cycle
        swap.park()
        assert hook_count(model) == 0 and all(t.device.type == "cpu" for t in model.parameters())
        del got
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated(cuda) <= start


def test_compiled_blocks_stream_without_recompiling():
    """Block swap's hooks sit outside the compiled block function; swapping weights between RAM
    and device copies changes no shape, dtype or device the graph is specialised on."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    from wanflow.wan import compiled_blocks as cb

    model = six_block_dit()
    inputs = dit_inputs(model.config)
    expected = run(model, inputs)
    torch._dynamo.reset()
    try:
        counter = CompileCounterWithBackend("eager")
        cb.compile_blocks(model, cb.CompileSettings(backend=counter, fullgraph=True))
        swap = BlockSwap(model, 1)
        swap.budget = block_budget(swap, 2)
        swap.restore(CPU)
        torch.testing.assert_close(run(model, inputs), expected, rtol=0, atol=1e-5)
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(run(model, inputs), expected, rtol=0, atol=1e-5)
            swap.park()
            swap.restore(CPU)
            torch.testing.assert_close(run(model, inputs), expected, rtol=0, atol=1e-5)
        assert counter.frame_count == 1
        swap.park()
    finally:
        cb.uncompile_blocks(model)
        torch._dynamo.reset()
