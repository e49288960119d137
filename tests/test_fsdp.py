"""FSDP2 sharding of the DiT (distributed/fsdp.py) on 2 gloo ranks: each rank holds about half of
the weights, and the sharded model, alone or under sequence parallel, gives the single-process
velocity (T2V, VACE, whose before/after projections run outside their blocks' forward)."""
from __future__ import annotations

import pytest
import torch

from test_sequence_parallel import TOL, case_inputs, random_model
from wanflow.distributed import launch
from wanflow.distributed.fsdp import shard_dit
from wanflow.distributed.sequence_parallel import SequenceParallelDiT


def _compare(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    results = {}
    for name, kind, size in (("t2v_odd", "t2v", (3, 6, 10)), ("vace_odd", "vace", (3, 6, 6))):
        model = random_model(kind)
        total = sum(p.numel() for p in model.parameters())
        inputs = case_inputs(kind, *size)
        x, t, context = inputs.pop("x"), inputs.pop("t"), inputs.pop("context")
        with torch.no_grad():
            reference = model(x, t, context, **inputs)
            shard_dit(model)
            local = sum(p.to_local().numel() for p in model.parameters())
            sharded = model(x, t, context, **inputs)
            parallel = SequenceParallelDiT(model)
            both = [parallel(x, t, context, **inputs) for _ in range(2)]  # resharded in between
        results[name] = (local / total, (sharded - reference).abs().max().item(),
                         max((b - reference).abs().max().item() for b in both))
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_sharded_model_equals_one_process(tmp_path):
    launch.spawn(_compare, 2, args=(str(tmp_path),), backend="gloo")
    for rank in range(2):
        for name, (share, err_sharded, err_parallel) in torch.load(tmp_path / f"rank{rank}.pt").items():
            assert share < 0.55, f"{name} rank {rank} holds {share:.0%} of the weights"
            assert err_sharded <= TOL, f"{name} rank {rank}: FSDP alone: {err_sharded:.3g}"
            assert err_parallel <= TOL, f"{name} rank {rank}: FSDP + sequence parallel: {err_parallel:.3g}"
