"""Headless placement of a DiT that does not fit the GPU: block swap (``wanflow run --max-vram``).

Inside ComfyUI its model management places our models (partial loads, ``--lowvram``). Outside
it the pack places them itself, and a Wan 14B expert (28 GB in bf16, 14 GB in fp8) is often
bigger than the card. :func:`block_swap_for` decides whether an expert streams its blocks
(``wan/block_swap.py``) and returns the parking that does it, for the sampler's expert residency.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn as nn

from ..samplers.expert_residency import Parking
from ..wan.block_swap import GIB, BlockSwap, BudgetTooSmall, device_free_bytes, format_bytes
from ..wan.dit import WanDiT
from . import comfy_adapter

log = logging.getLogger("wanflow")

AUTO_RESERVE_MIN = 3 * GIB
"""Without --max-vram, device memory left for activations, at least (480p-720p Wan 14B forwards
need a few GB; a budget set by hand is the weights' alone)."""
AUTO_RESERVE_FRACTION = 0.15
"""... or this share of the card's memory when that is more."""


def auto_reserve(device: torch.device) -> int:
    """Bytes left free for activations when the budget comes from the free memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    return max(AUTO_RESERVE_MIN, int(total * AUTO_RESERVE_FRACTION))


def free_device_bytes(device: torch.device, module: nn.Module) -> int:
    """Memory ``module`` could use on ``device`` (free, cached by PyTorch, or its own)."""
    return device_free_bytes(device, module)


def block_swap_for(module: object, inner: Optional[Parking] = None) -> Optional[BlockSwap]:
    """A :class:`BlockSwap` parking for ``module`` when it should stream its blocks, else None.

    Only headless (inside ComfyUI its model management does this) and only for a WanDiT:
    with ``--max-vram`` when the model's weights are bigger than that budget; without it, when
    the compute device is CUDA and the model does not fit its free memory less a reserve for
    activations (the budget is then measured again at each restore). ``inner``: the model's own
    parking (``DiskBacked``, the low-RAM mode), restored to RAM before streaming starts.
    """
    if comfy_adapter.in_comfyui() or not isinstance(module, WanDiT):
        return None
    device = comfy_adapter.compute_device()
    size = comfy_adapter.module_bytes(module)
    budget = comfy_adapter.max_vram()
    if budget is not None:
        if device.type == "cpu":
            log.warning("--max-vram is ignored: the models run on the CPU")
            return None
        if size <= budget:
            return None
        swap = BlockSwap(module, budget, inner=inner)
        try:  # refuse a budget too small for this model now, not at the first sampling step
            swap.plan_for(budget)
        except BudgetTooSmall as exc:
            raise comfy_adapter.BadSetting(f"--max-vram {format_bytes(budget)}: {exc}") from None
        log.info("DiT weights %s > --max-vram %s: streaming blocks", format_bytes(size),
                 format_bytes(budget))
        return swap
    if device.type != "cuda":
        return None
    reserve = auto_reserve(device)
    available = free_device_bytes(device, module)
    if size + reserve <= available:
        return None
    log.info("DiT weights %s do not fit the %s free on %s with %s kept for activations: "
             "streaming blocks (set --max-vram to choose the budget)", format_bytes(size),
             format_bytes(available), device, format_bytes(reserve))
    return BlockSwap(module, None, reserve=reserve, inner=inner)

