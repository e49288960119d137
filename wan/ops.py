"""Layers that keep weights in their storage dtype and compute in the activation dtype.

Real Wan files come in bf16, fp16, fp32, fp8 (e4m3fn / e5m2) and ComfyUI's "scaled fp8"
(fp8 weight times a per-layer fp32 ``scale_weight``). Our layers store the weight exactly as
loaded and cast it for each call, so a 14B fp8 model stays 14 GB in memory.

:class:`Linear` also carries run-time LoRA adapters (``adapters``): callables ``(x, y) -> y`` that
add their delta to the layer's output ``y``, so a LoRA never needs a copy of the base weight.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    """Mixin for layers whose ``weight`` may be stored in another dtype than the activations.

    ``scale_weight`` is an optional buffer (the ComfyUI scaled-fp8 per-layer scale); it is
    registered only for layers loaded from a scaled file.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def compute_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, dtype, getattr(self, "scale_weight", None))

    def compute_bias(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        return None if self.bias is None else self.bias.to(dtype)

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
        y = F.linear(x, self.compute_weight(x.dtype), self.compute_bias(x.dtype))
        for adapter in self.adapters:
            y = adapter(x, y)
        return y


class Conv3d(CastWeights, nn.Conv3d):
    """nn.Conv3d over a storage-dtype weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(x.dtype), self.compute_bias(x.dtype))


class Conv2d(CastWeights, nn.Conv2d):
    """nn.Conv2d over a storage-dtype weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.compute_weight(x.dtype), self.compute_bias(x.dtype))
