"""CFG-parallel (distributed/cfg_parallel.py): the batched cond + uncond forward split across a
CFG pair of gloo ranks, alone (2 ranks) and with 2-way sequence parallel in each half (4 ranks),
equals the single-process forward; a batch the pair cannot split runs whole."""
from __future__ import annotations

import pytest
import torch

from test_sequence_parallel import TOL, case_inputs, random_model
from wanflow.distributed import cfg_parallel, launch


def _compare(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    layout = cfg_parallel.parallel_layout(cfg_parallel=True)
    cfg_parallel.use_layout(layout)
    results = {}
    for name, kind, size in (("t2v_odd", "t2v", (3, 6, 10)), ("vace_odd", "vace", (3, 6, 6)),
                             ("i2v_odd", "i2v", (3, 2, 6))):
        model = random_model(kind)
        inputs = case_inputs(kind, *size, batch=2)
        x, t, context = inputs.pop("x"), inputs.pop("t"), inputs.pop("context")
        with torch.no_grad():
            reference = model(x, t, context, **inputs)
            single = model(x[:1], t[:1], context[:1], **{k: ([v[:1] for v in val] if isinstance(val, list)
                                                              and torch.is_tensor(val[0]) else
                                                              val[:1] if torch.is_tensor(val) else val)
                                                          for k, val in inputs.items()})
            with cfg_parallel.parallel_dit(model) as runnable:
                split = runnable(x, t, context, **inputs)
                whole = runnable(x[:1], t[:1], context[:1], **{k: ([v[:1] for v in val] if isinstance(val, list)
                                                                    and torch.is_tensor(val[0]) else
                                                                    val[:1] if torch.is_tensor(val) else val)
                                                                for k, val in inputs.items()})
            results[name] = ((split - reference).abs().max().item(), (whole - single).abs().max().item(),
                             type(runnable).__name__, type(getattr(runnable, "model", None)).__name__)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("world,inner", [(2, "WanDiT"), (4, "SequenceParallelDiT")])
def test_cfg_pairs_equal_one_process(tmp_path, world, inner):
    launch.spawn(_compare, world, args=(str(tmp_path),), backend="gloo")
    for rank in range(world):
        for name, (err_split, err_whole, outer, wrapped) in torch.load(tmp_path / f"rank{rank}.pt").items():
            assert outer == "BatchSplitDiT" and wrapped == inner, (name, outer, wrapped)
            assert err_split <= TOL, f"{name} rank {rank}: batch of 2 split over the pair: {err_split:.3g}"
            assert err_whole <= TOL, f"{name} rank {rank}: batch of 1 run whole: {err_whole:.3g}"


def _odd_world(rank: int, world: int, device: torch.device, out_dir: str) -> None:
    try:
        cfg_parallel.parallel_layout(cfg_parallel=True)
    except ValueError as exc:
        torch.save(str(exc), f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_cfg_parallel_on_an_odd_rank_count_says_so(tmp_path):
    launch.spawn(_odd_world, 3, args=(str(tmp_path),), backend="gloo")
    assert "even number of ranks" in torch.load(tmp_path / "rank0.pt")
