"""FSDP2 (``fully_shard``) for a :class:`wan.dit.WanDiT`: each rank keeps 1/N of every weight.

Each block is one FSDP unit (its weights are all-gathered just before it runs and freed after),
and the root holds the rest (embeddings, head). VACE blocks' ``before_proj`` / ``after_proj`` are
units of their own because the model calls them outside the block's forward (``start``/``hint``),
where the block's hooks do not run. Works with :class:`.sequence_parallel.SequenceParallelDiT`,
which unshards the root around its forward. Inference: weights are resharded after each use.
"""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from ..wan.dit import WanDiT


def shard_dit(model: WanDiT, group: Optional[dist.ProcessGroup] = None,
              device_type: Optional[str] = None) -> WanDiT:
    """Shard ``model`` in place across ``group`` (default: the world); returns it (now also an
    ``FSDPModule``). ``device_type`` of the mesh: where the weights are ("cuda" or "cpu")."""
    if isinstance(model, FSDPModule):
        return model
    device_type = device_type or next(model.parameters()).device.type
    mesh = DeviceMesh.from_group(group or dist.group.WORLD, device_type)
    for block in getattr(model, "vace_blocks", ()):
        if block.before_proj is not None:
            fully_shard(block.before_proj, mesh=mesh)
        fully_shard(block.after_proj, mesh=mesh)
    for block in [*model.blocks, *getattr(model, "vace_blocks", ())]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
