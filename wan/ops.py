"""Layers that keep weights in their storage dtype and compute in the activation dtype.

Real Wan files come in bf16, fp16, fp32, fp8 (e4m3fn / e5m2) and ComfyUI's "scaled fp8"
(fp8 weight times a per-layer fp32 ``scale_weight``). Our layers store the weight exactly as
loaded and cast it for each call, so a 14B fp8 model stays 14 GB in memory.

:class:`Linear` also carries run-time LoRA adapters (``adapters``): callables ``(x, y) -> y`` that
add their delta to the layer's output ``y``, so a LoRA never needs a copy of the base weight.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fp8_matmul
from .adapter_op import apply_adapters

FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None),
                                getattr(torch, "float8_e5m2", None)) if d is not None)


def dequantize(weight: torch.Tensor, dtype: torch.dtype,
               scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weight in ``dtype``, with a scaled-fp8 ``scale`` applied when present."""
    if scale is None:
        return weight.to(dtype)
    # one float32 copy, scaled in place: a second weight-sized temporary is what callers that
    # recast chunk by chunk (LoRA training) would otherwise hold at their peak
    wide = weight.to(torch.float32, copy=True)
    return wide.mul_(scale.to(torch.float32)).to(dtype)


class CastWeights:
    """Mixin for layers whose ``weight`` may be stored in another dtype (and on another device)
    than the activations.

    ``scale_weight`` is an optional buffer (the ComfyUI scaled-fp8 per-layer scale); it is
    registered only for layers loaded from a scaled file.

    The weight is also brought to the activation's device for each call, so a layer left in RAM
    still runs: that is how ComfyUI's model management loads a model that does not fit
    (``--lowvram``). Its loader looks for ``comfy_cast_weights`` to know a layer can stay behind,
    and may hang ``weight_function`` / ``bias_function`` callables on it (weight patches applied
    at cast time); both are honoured here. Nothing here imports ComfyUI.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    comfy_cast_weights = False
    weight_function: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()  # ComfyUI sets lists
    bias_function: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()

    def compute_weight(self, dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
        weight, scale = self.weight, getattr(self, "scale_weight", None)
        if device is not None and weight.device != device:  # storage dtype over the wire: fp8 stays small
            weight = weight.to(device, non_blocking=True)
            scale = None if scale is None else scale.to(device, non_blocking=True)
        weight = dequantize(weight, dtype, scale)
        for patch in self.weight_function:
            weight = patch(weight)
        return weight

    def compute_bias(self, dtype: torch.dtype, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        if self.bias is None:
            return None
        bias = self.bias.to(device=device, dtype=dtype, non_blocking=True)
        for patch in self.bias_function:
            bias = patch(bias)
        return bias

    def set_scale_weight(self, scale: Optional[torch.Tensor]) -> None:
        """Attach (or drop, with None) the scaled-fp8 weight scale."""
        if scale is None:
            self._buffers.pop("scale_weight", None)  # type: ignore[attr-defined]
        else:
            self.register_buffer("scale_weight", scale.to(torch.float32))  # type: ignore[attr-defined]


# adapter(x, y) -> y: adds a LoRA delta for input ``x`` to the layer output ``y`` and returns it.
Adapter = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Linear(CastWeights, nn.Linear):
    """nn.Linear over a storage-dtype weight, with optional run-time LoRA adapters.

    Each adapter gets the input and this layer's freshly computed output and may add its delta
    in place (``wan/lora.py`` accumulates the low-rank product straight into ``y`` with
    ``addmm_``), so a LoRA costs no extra output-sized tensor and no separate add pass.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.adapters: list[Adapter] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = fp8_matmul.try_linear(self, x)  # fp8 x fp8 on GPUs with fp8 tensor cores, else None
        if y is None:
            y = F.linear(x, self.compute_weight(x.dtype, x.device), self.compute_bias(x.dtype, x.device))
        return apply_adapters(self, x, y)  # opaque to torch.compile: see adapter_op


class Conv3d(CastWeights, nn.Conv3d):
    """nn.Conv3d over a storage-dtype weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(x.dtype, x.device), self.compute_bias(x.dtype, x.device))


class Conv2d(CastWeights, nn.Conv2d):
    """nn.Conv2d over a storage-dtype weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(x.dtype, x.device), self.compute_bias(x.dtype, x.device))
