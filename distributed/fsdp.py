"""FSDP2 (``fully_shard``) for a :class:`wan.dit.WanDiT`: each rank keeps 1/N of every weight.

Each block is one FSDP unit (its weights are all-gathered just before it runs and freed after),
and the root holds the rest (embeddings, head). VACE blocks' ``before_proj`` / ``after_proj`` are
units of their own because the model calls them outside the block's forward (``start``/``hint``),
where the block's hooks do not run. FSDP2 gathers one dtype per unit: in a file that mixes storage
dtypes (fp8 weights beside bf16/fp32 biases, norms and modulations, or a GGUF's raw blocks) each
unit shards its largest dtype group and keeps the few small others whole on every rank
(:func:`minor_params`). Works with :class:`.sequence_parallel.SequenceParallelDiT`,
which unshards the root around its forward. Inference: every unit, the root included, is
resharded after each use, so between forwards a rank holds only its shards.

``wanflow run --gpus N`` shards every DiT the model loader reads (:func:`use_fsdp`,
:func:`fsdp_active`); a sharded expert never moves between devices (:class:`ShardedInPlace`):
its shards stay where ``fully_shard`` put them, and only the running block is ever whole.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..wan.dit import WanDiT
from ..wan.lora import local_tensor
from ..wan.ops import FP8_DTYPES
from .sequence_parallel import world_size


def shard_dit(model: WanDiT, group: Optional[dist.ProcessGroup] = None,
              device_type: Optional[str] = None) -> WanDiT:
    """Shard ``model`` in place across ``group`` (default: the world); returns it (now also an
    ``FSDPModule``). ``device_type`` of the mesh: where the shards go ("cuda": this process's
    current GPU, "cpu"); default: where the weights are."""
    if isinstance(model, FSDPModule):
        return model
    device_type = device_type or next(model.parameters()).device.type
    mesh = DeviceMesh.from_group(group or dist.group.WORLD, device_type)
    device = (torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda"
              else torch.device(device_type))
    for block in getattr(model, "vace_blocks", ()):
        if block.before_proj is not None:
            _shard_unit(block.before_proj, mesh, device)
        _shard_unit(block.after_proj, mesh, device)
    for block in [*model.blocks, *getattr(model, "vace_blocks", ())]:
        _shard_unit(block, mesh, device)
    _shard_unit(model, mesh, device)
    return model


def _shard_unit(module: nn.Module, mesh: DeviceMesh, device: torch.device) -> None:
    """One FSDP unit: its largest dtype group sharded, the others whole on ``device``."""
    ignored = minor_params(module)
    for param in ignored:  # FSDP leaves ignored parameters where they are
        param.data = param.data.to(device)
    # explicit True: by default FSDP2 keeps the root's weights whole after its forward (training)
    fully_shard(module, mesh=mesh, reshard_after_forward=True, ignored_params=ignored or None)


def minor_params(module: nn.Module) -> set[nn.Parameter]:
    """The parameters of ``module`` not yet sharded by a unit inside it whose dtype is not the
    one holding the most bytes (FSDP2 all-gathers a unit's parameters as one dtype)."""
    params = [p for p in module.parameters() if not isinstance(p, DTensor)]
    by_dtype: dict[torch.dtype, int] = {}
    for p in params:
        by_dtype[p.dtype] = by_dtype.get(p.dtype, 0) + p.numel() * p.element_size()
    if len(by_dtype) < 2:
        return set()
    main = max(by_dtype, key=by_dtype.__getitem__)
    return {p for p in params if p.dtype != main}


def shard_problem(model: nn.Module, device_type: str) -> Optional[str]:
    """Why ``model`` cannot be sharded on ``device_type`` (None: it can). gloo, the CPU backend,
    has no fp8 all-gather (NCCL moves fp8 as bytes)."""
    if device_type == "cpu":
        fp8 = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype in FP8_DTYPES})
        if fp8:
            return f"its {', '.join(fp8)} weights: gloo (the CPU backend) cannot all-gather fp8"
    return None


def is_sharded(model: object) -> bool:
    return isinstance(model, FSDPModule)


def local_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers this rank holds (a sharded weight: its local shard)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(local_tensor(t).numel() * t.element_size() for t in tensors)


# --------------------------------------------------------------------------------------------
# The run's choice: shard every loaded DiT or not
# --------------------------------------------------------------------------------------------

_wanted = False


def use_fsdp(on: bool) -> None:
    """Shard every DiT the model loader reads from now on in this process (``wanflow run --gpus
    N``, on unless ``--no-fsdp``); takes effect only while 2+ ranks are up."""
    global _wanted
    _wanted = bool(on)


def fsdp_active() -> bool:
    """Whether a DiT loaded now gets sharded: asked for, and a process group of 2+ ranks."""
    return _wanted and world_size() > 1


class ShardedInPlace:
    """The sampler's expert parking for a sharded expert: it stays where its shards are.

    Moving a sharded expert off the device would save only its 1/N share, and FSDP already
    gathers just the running block of the active expert, so both experts' shards stay put and
    the expert switch costs nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def park(self) -> None:
        pass

    def restore(self, device: torch.device) -> nn.Module:
        return self.model
