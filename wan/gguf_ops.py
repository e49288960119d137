"""Block-quantized (GGUF / GGML) weights kept packed in memory and dequantized per call, in torch.

City96's Wan GGUF files store most Linear weights of the DiT blocks as GGML blocks: a fixed number
of values per block (32, or 256 for the "K" types) packed with one or more fp16 scales. A layer
that holds such a weight keeps the raw block bytes as its ``weight`` parameter (``uint8``, as stored:
``[*rows, bytes per row]``), so a Q4_K model costs about 4.5 bits per weight in RAM or VRAM, and
:meth:`QuantizedWeights.compute_weight` rebuilds the float weight for each call: the bytes travel
to the input's device first (that is where the unpacking runs, on the GPU when the model computes
there) and ComfyUI's ``weight_function`` patches apply to the dequantized weight, as for the
other storage dtypes of ``wan/ops.py``.

Every format follows the layout of GGML's reference dequantization (``gguf.quants`` is the
reference in the tests); the arithmetic is done in float32 in the same order, then cast.
F32, F16 and BF16 tensors of a GGUF file need none of this: they load as ordinary tensors.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import ops

QK_K = 256  # values per super-block of the K types


@dataclass(frozen=True)
class BlockFormat:
    """One GGML block type: values and bytes per block, and its dequantizer.

    ``dequantize`` maps ``uint8 [n, type_size]`` blocks to ``float32 [n, block_size]`` values."""

    name: str
    block_size: int
    type_size: int
    dequantize: Callable[[torch.Tensor], torch.Tensor]

    def nbytes(self, values: int) -> int:
        """Bytes that hold ``values`` values (a multiple of ``block_size``)."""
        return values // self.block_size * self.type_size


# --------------------------------------------------------------------------- unpacking helpers
# Large layers are unpacked at every call, so each step works in place where it can: one float32
# allocation per weight, the rest on uint8 planes (memory-bound passes are what this costs).


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at (even) byte ``start`` of each block, as float32 ``[n, 1]``."""
    return blocks.view(torch.float16)[:, start // 2:start // 2 + 1].to(torch.float32)


def _shifts(values: tuple[int, ...], like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return _shift_table(values, like.device, shape)


@functools.lru_cache(maxsize=None)
def _shift_table(values: tuple[int, ...], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    """Shift amounts as a small tensor, made once per device (not one host-to-GPU copy per call)."""
    return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _nibbles(packed: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """Low then high 4 bits of ``packed`` ``[n, groups * width]``: ``[n, groups, 2, width]``."""
    n = packed.shape[0]
    return (packed.reshape(n, groups, 1, width) >> _shifts((0, 4), packed, (1, 1, 2, 1))).bitwise_and_(0x0F)


def _crumbs(packed: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """The four 2-bit fields of ``packed`` ``[n, groups * width]``: ``[n, groups, 4, width]``."""
    n = packed.shape[0]
    shifted = packed.reshape(n, groups, 1, width) >> _shifts((0, 2, 4, 6), packed, (1, 1, 4, 1))
    return shifted.bitwise_and_(0x03)


def _bits(packed: torch.Tensor, width: int) -> torch.Tensor:
    """The eight single bits of ``packed`` ``[n, width]``: ``[n, 8, width]`` (bit k in row k)."""
    n = packed.shape[0]
    return (packed.reshape(n, 1, width) >> _shifts(tuple(range(8)), packed, (1, 8, 1))).bitwise_and_(0x01)


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (12 bytes), each ``[n, 8]``.

    Worked on byte planes (``[12, n]``, one row per byte position): the per-block rows are only
    12 bytes wide, and strided ops over them cost more than the whole weight's unpacking."""
    planes = packed.t().contiguous()
    d, m, md = planes[0:4], planes[4:8], planes[8:12]
    scales = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)])
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)])
    return scales.t(), mins.t()


def _k_scaled(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``d * scale * q - dmin * min`` over the eight groups of 32 of a Q4_K / Q5_K super-block."""
    n = blocks.shape[0]
    scales, mins = _k_scale_min(blocks[:, 4:16])
    d = (_f16(blocks, 0) * scales.to(torch.float32)).reshape(n, 8, 1)
    dm = (_f16(blocks, 2) * mins.to(torch.float32)).reshape(n, 8, 1)
    return q.reshape(n, 8, 32).to(torch.float32).mul_(d).sub_(dm).reshape(n, QK_K)


# --------------------------------------------------------------------------- dequantizers


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """d (fp16), 32 int8 values: ``d * q``."""
    return blocks[:, 2:].view(torch.int8).to(torch.float32).mul_(_f16(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """d (fp16), 16 bytes of 4-bit values (first 16 in the low nibbles): ``d * (q - 8)``."""
    q = _nibbles(blocks[:, 2:], 1, 16).reshape(-1, 32)
    return q.to(torch.float32).sub_(8).mul_(_f16(blocks, 0))


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """d (fp16), 32 high bits (4 bytes), 16 bytes of low nibbles: ``d * (q - 16)``."""
    high = _bits(blocks[:, 2:6], 4).transpose(1, 2).reshape(-1, 32)  # value j: bit j % 8 of byte j // 8
    q = _nibbles(blocks[:, 6:], 1, 16).reshape(-1, 32).bitwise_or_(high << 4)
    return q.to(torch.float32).sub_(16).mul_(_f16(blocks, 0))


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles; eight groups of
    32 values: ``d * scale * q - dmin * min``."""
    return _k_scaled(blocks, _nibbles(blocks[:, 16:], 4, 32))


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K with a fifth bit per value (32 bytes before the nibbles)."""
    n = blocks.shape[0]
    q = _nibbles(blocks[:, 48:], 4, 32).reshape(n, 8, 32).bitwise_or_(_bits(blocks[:, 16:48], 32) << 4)
    return _k_scaled(blocks, q)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, d (fp16); sixteen groups
    of 16 values: ``d * scale * (q - 32)``."""
    n = blocks.shape[0]
    scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)
    d = (_f16(blocks, 208) * scales).reshape(n, 16, 1)
    high = _crumbs(blocks[:, 128:192], 2, 32).reshape(n, 8, 32)
    q = _nibbles(blocks[:, :128], 2, 64).reshape(n, 8, 32).bitwise_or_(high << 4)
    return q.reshape(n, 16, 16).to(torch.float32).sub_(32).mul_(d).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """32 bytes of high-bit mask, 64 bytes of 2-bit lows, 12 bytes of 6-bit scales, d (fp16);
    sixteen groups of 16: ``d * (scale - 32) * q`` with q in -4..3 (a set mask bit means no -4)."""
    n = blocks.shape[0]
    planes = blocks[:, 96:108].t().contiguous()  # byte planes, as in _k_scale_min
    low = torch.cat([planes[:8] & 0x0F, planes[:8] >> 4])                       # scale j: byte j % 8
    high = torch.cat([(planes[8:] >> shift) & 0x03 for shift in (0, 2, 4, 6)])  # scale j: byte 8 + j % 4
    scales = low.bitwise_or_(high << 4).t().to(torch.float32) - 32
    d = (_f16(blocks, 108) * scales).reshape(n, 16, 1)
    # q + 4 = low + 4 * mask bit: the 3-bit code, shifted back by 4 in float
    mask = _bits(blocks[:, :32], 32).reshape(n, 16, 16)
    q = _crumbs(blocks[:, 32:96], 2, 32).reshape(n, 16, 16).bitwise_or_(mask << 2)
    return q.to(torch.float32).sub_(4).mul_(d).reshape(n, QK_K)


FORMATS: dict[str, BlockFormat] = {f.name: f for f in (
    BlockFormat("Q8_0", 32, 34, _q8_0),
    BlockFormat("Q4_0", 32, 18, _q4_0),
    BlockFormat("Q5_0", 32, 22, _q5_0),
    BlockFormat("Q3_K", QK_K, 110, _q3_k),
    BlockFormat("Q4_K", QK_K, 144, _q4_k),
    BlockFormat("Q5_K", QK_K, 176, _q5_k),
    BlockFormat("Q6_K", QK_K, 210, _q6_k),
)}


def dequantize(raw: torch.Tensor, fmt: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The values of the ``fmt`` blocks in ``raw`` (``uint8``, any shape) as ``dtype`` of ``shape``,
    computed on ``raw``'s device."""
    block = FORMATS[fmt]
    values = block.dequantize(raw.reshape(-1, block.type_size))
    return values.to(dtype).reshape(shape)


# --------------------------------------------------------------------------- layers


class QuantizedWeights(ops.CastWeights):
    """``ops.CastWeights`` over a block-quantized ``weight`` (raw ``uint8`` block bytes).

    ``quant_format`` names the block type (:data:`FORMATS`) and ``weight_shape`` is the shape of
    the float weight the blocks encode. Everything else (bias, adapters, ``weight_function``
    patches, the per-call move to the input's device) works as for the other storage dtypes.
    """

    quant_format: str
    weight_shape: torch.Size

    def compute_weight(self, dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.Tensor:
        raw = self.weight
        if device is not None and raw.device != device:  # the packed bytes travel, not the floats
            raw = raw.to(device, non_blocking=True)
        weight = dequantize(raw, self.quant_format, dtype, tuple(self.weight_shape))
        for patch in self.weight_function:
            weight = patch(weight)
        return weight

    def set_scale_weight(self, scale: Optional[torch.Tensor]) -> None:
        if scale is not None:
            raise ValueError(f"a {self.quant_format} weight carries its scales in its blocks; "
                             "it takes no scaled-fp8 scale_weight")
        self._buffers.pop("scale_weight", None)  # type: ignore[attr-defined]


class QuantizedLinear(QuantizedWeights, ops.Linear):
    """``ops.Linear`` whose weight stays block-quantized; LoRA adapters run on top, unmerged."""

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.quant_format}"


def weight_rows(layer: QuantizedWeights, rows: slice, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``rows`` of ``layer``'s float weight (no ``weight_function`` patches), on the blocks'
    device: only their blocks are unpacked when each row holds whole blocks (every city96 Wan
    file); a flattened (``orig_shape``) weight is unpacked whole and sliced."""
    raw, shape = layer.weight, tuple(layer.weight_shape)
    if raw.shape[:-1] == shape[:-1]:
        part = raw[rows]
        return dequantize(part, layer.quant_format, dtype, (part.shape[0], *shape[1:]))
    return dequantize(raw, layer.quant_format, dtype, shape)[rows]


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, QuantizedWeights)


def weight_shape(module: nn.Module) -> torch.Size:
    """The shape of the float weight a layer computes with (quantized or not)."""
    return module.weight_shape if isinstance(module, QuantizedWeights) else module.weight.shape


def quantize_layer(module: ops.Linear, fmt: str, raw_shape: tuple[int, ...]) -> None:
    """Turn an ``ops.Linear`` (usually still on the meta device) into a :class:`QuantizedLinear`
    whose ``weight`` is an empty meta ``uint8`` tensor of ``raw_shape``, ready to be filled with
    ``load_state_dict(assign=True)``. Calling it again on the same layer just re-plans it."""
    if not isinstance(module, ops.Linear):
        raise TypeError(f"only ops.Linear layers keep a quantized weight, not {type(module).__name__}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown block format {fmt!r}; expected one of {sorted(FORMATS)}")
    shape = torch.Size((module.out_features, module.in_features))
    block = FORMATS[fmt]
    if shape.numel() % block.block_size or block.nbytes(shape.numel()) != math.prod(raw_shape):
        raise ValueError(f"{fmt} blocks of shape {tuple(raw_shape)} do not encode a {tuple(shape)} weight")
    module.__class__ = QuantizedLinear
    module.quant_format = fmt
    module.weight_shape = shape
    module.weight = nn.Parameter(torch.empty(raw_shape, dtype=torch.uint8, device="meta"), requires_grad=False)
