"""CFG-parallel: the batched cond + uncond forward split across 2 ranks, one half each.

The sampler's batched guidance calls the DiT once on a batch of 2B (cond then uncond).
:class:`BatchSplitDiT` gives each rank of its group an equal slice of the batch and all-gathers
the outputs, so every rank returns the whole batch. A batch the group does not divide (CFG 1,
or unbatched guidance) runs whole on every rank: correct, just not faster.

:func:`parallel_layout` cuts the world into a CFG group of 2 and sequence-parallel groups of
``world / 2`` ranks (``cfg_parallel=True``), or one sequence-parallel group of every rank.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..wan.dit import WanDiT
from .sequence_parallel import SequenceParallelDiT, world_size

ProcessGroup = Optional[dist.ProcessGroup]


@dataclass(frozen=True)
class ParallelLayout:
    """The groups this rank belongs to; ``None`` means "no such split"."""

    sp_group: ProcessGroup
    cfg_group: ProcessGroup


def parallel_layout(cfg_parallel: bool) -> ParallelLayout:
    """Groups for the running world: every rank does sequence parallel, or (``cfg_parallel``)
    ranks ``i`` and ``i + world/2`` split the CFG batch and each half does sequence parallel.

    Every rank must call this (``new_group`` is collective), in the same order.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if not cfg_parallel:
        return ParallelLayout(dist.group.WORLD if world > 1 else None, None)
    if world % 2:
        raise ValueError(f"CFG-parallel needs an even number of ranks (cond and uncond); got {world}")
    half = world // 2
    sp_group = cfg_group = None
    for start in (0, half):  # sequence-parallel groups: the two halves
        group = dist.new_group(list(range(start, start + half)))
        if start <= rank < start + half:
            sp_group = group
    for i in range(half):  # CFG pairs
        group = dist.new_group([i, i + half])
        if rank in (i, i + half):
            cfg_group = group
    return ParallelLayout(sp_group if half > 1 else None, cfg_group)


def _take(value: Any, batch: int, start: int, size: int) -> Any:
    """The batch slice of a tensor (or list of tensors) whose first axis is the batch."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
        return value.narrow(0, start, size)
    if isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
        return [_take(v, batch, start, size) for v in value]
    return value


class BatchSplitDiT(nn.Module):
    """A DiT (or :class:`~.sequence_parallel.SequenceParallelDiT`) whose batch is split across
    the ranks of ``group``; called like the model, returns the whole batch on every rank."""

    def __init__(self, model: nn.Module, group: ProcessGroup) -> None:
        super().__init__()
        self.model = model
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @property
    def config(self):
        return self.model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                **extras: Any) -> torch.Tensor:
        batch = x.shape[0]
        if batch % self.world:
            return self.model(x, t, context, **extras)
        size = batch // self.world
        start = self.rank * size
        take = lambda v: _take(v, batch, start, size)  # noqa: E731
        out = self.model(take(x), take(torch.as_tensor(t, device=x.device)), take(context),
                         **{k: take(v) for k, v in extras.items()}).contiguous()
        parts = [torch.empty_like(out) for _ in range(self.world)]
        dist.all_gather(parts, out, group=self.group)
        return torch.cat(parts, dim=0)


_layout: Optional[ParallelLayout] = None


def use_layout(layout: Optional[ParallelLayout]) -> None:
    """The split :func:`parallel_dit` applies in this process (``None``: sequence parallel over
    the whole world when one is up)."""
    global _layout
    _layout = layout


@contextlib.contextmanager
def parallel_dit(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` split as this process's layout says while 2+ ranks are up, unwrapped on exit;
    the model itself in a single-process run or when it is not a WanDiT (the MoE sampler node
    wraps its experts with this)."""
    if world_size() < 2 or not isinstance(model, WanDiT):
        yield model
        return
    layout = _layout or ParallelLayout(dist.group.WORLD, None)
    sequence = SequenceParallelDiT(model, layout.sp_group) if layout.sp_group is not None else None
    try:
        runnable: nn.Module = sequence or model
        yield BatchSplitDiT(runnable, layout.cfg_group) if layout.cfg_group is not None else runnable
    finally:
        if sequence is not None:
            sequence.unwrap()
