"""GGUF test files written with the ``gguf`` package's own writer, in city96's Wan layout.

``gguf.quants.quantize`` covers BF16, Q8_0, Q4_0 and Q5_0. For the K types (Q3_K … Q6_K) the
package (0.19) only has a dequantizer, so :func:`quantize` packs those with the small
round-to-nearest quantizers below: they choose the scales simply (max-abs / min-max per group, no
search like llama.cpp's), but they write the exact block layout, which the tests check through the
package's reference dequantization (``quants.dequantize(quantize(x)) ≈ x``).
:func:`random_blocks` makes blocks of any type from random bytes with finite fp16 scale fields,
so every bit pattern of the packed values is exercised too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K")
QUANTIZED = tuple(t for t in ALL_TYPES if t not in ("F32", "F16", "BF16"))
# city96's converter keeps these out of the quantizer (tools/lcpp.patch, LLM_ARCH_WAN rules)
HIGH_PRECISION = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.",
                  "time_embedding.", "img_emb.", "head.")


# --------------------------------------------------------------------------- K-type quantizers


def _f16(values: np.ndarray) -> np.ndarray:
    """fp16 copy as float32 (what the block stores), and its bytes."""
    return values.astype(np.float16)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, 0, a / np.where(b == 0, 1, b))


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """``bits`` [n, 8, w] (0/1) → bytes [n, w] with row k in bit k."""
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    return (bits.astype(np.uint8) << shifts).sum(axis=1, dtype=np.uint8)


def _pack_pairs(values: np.ndarray, groups: int, width: int, bits: int) -> np.ndarray:
    """``values`` [n, groups * (8 // bits) * width] → bytes [n, groups * width]: field k of byte
    (g, b) is value (g, k, b) (the inverse of the dequantizers' shift-and-mask)."""
    n, per = values.shape[0], 8 // bits
    v = values.astype(np.uint8).reshape(n, groups, per, width)
    shifts = (np.arange(per, dtype=np.uint8) * bits).reshape(1, 1, per, 1)
    return (v << shifts).sum(axis=2, dtype=np.uint8).reshape(n, groups * width)


def _scale_min_bytes(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins [n, 8] → the 12-byte Q4_K/Q5_K packing."""
    sc, mn = scales.astype(np.uint8), mins.astype(np.uint8)
    d = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    m = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([d, m, md], axis=1)


def _q_k_affine(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Q4_K/Q5_K: eight groups of 32 as ``d·sc·q - dmin·m`` with q in 0..levels."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 8, 32)
    low = np.minimum(x.min(axis=2), 0)
    step = (x.max(axis=2) - low) / levels
    d = _f16(step.max(axis=1, keepdims=True) / 63)
    dmin = _f16(-low.min(axis=1, keepdims=True) / 63)
    sc = np.clip(np.round(_safe_div(step, d.astype(np.float32))), 0, 63)
    mn = np.clip(np.round(_safe_div(-low, dmin.astype(np.float32))), 0, 63)
    scale = (d.astype(np.float32) * sc)[..., None]
    offset = (dmin.astype(np.float32) * mn)[..., None]
    q = np.clip(np.round(_safe_div(x + offset, scale)), 0, levels).astype(np.uint8)
    return d, dmin, _scale_min_bytes(sc, mn), q.reshape(n, 256)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _q_k_affine(blocks, 15)
    return np.concatenate([d.view(np.uint8), dmin.view(np.uint8), scales, _pack_pairs(q, 4, 32, 4)], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _q_k_affine(blocks, 31)
    high = _pack_bits((q >> 4).reshape(-1, 8, 32))
    return np.concatenate([d.view(np.uint8), dmin.view(np.uint8), scales, high,
                           _pack_pairs(q & 0x0F, 4, 32, 4)], axis=1)


def _q_k_symmetric(blocks: np.ndarray, qmax: int, scale_max: int) -> tuple[np.ndarray, ...]:
    """Sixteen groups of 16 as ``d·s·q`` with |q| <= qmax, integer group scales s in 0..scale_max."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    step = np.abs(x).max(axis=2) / qmax
    d = _f16(step.max(axis=1, keepdims=True) / scale_max)
    s = np.clip(np.round(_safe_div(step, d.astype(np.float32))), 0, scale_max)
    q = np.round(_safe_div(x, (d.astype(np.float32) * s)[..., None]))
    return d, s, q.reshape(n, 256)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    d, s, q = _q_k_symmetric(blocks, 31, 127)
    u = (np.clip(q, -32, 31) + 32).astype(np.uint8)
    low = _pack_pairs(u & 0x0F, 2, 64, 4)
    high = _pack_pairs(u >> 4, 2, 32, 2)
    return np.concatenate([low, high, s.astype(np.int8).view(np.uint8), d.view(np.uint8)], axis=1)


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    d, s, q = _q_k_symmetric(blocks, 3, 31)
    u = (np.clip(q, -4, 3) + 4).astype(np.uint8)          # bit 2 set: no -4 offset
    hmask = _pack_bits((u >> 2).reshape(-1, 8, 32))
    low = _pack_pairs(u & 0x03, 2, 32, 2)
    sc = (s + 32).astype(np.uint8)                          # stored as 6-bit scale + 32
    scales = np.concatenate([_pack_pairs(sc & 0x0F, 1, 8, 4), _pack_pairs(sc >> 4, 1, 4, 2)], axis=1)
    return np.concatenate([hmask, low, scales, d.view(np.uint8)], axis=1)


_K_QUANTIZERS = {"Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    """``values`` (float32, last dim a multiple of the block size) in ``type_name``: float arrays for
    F32/F16, raw block bytes otherwise (the form ``GGUFWriter.add_tensor`` takes with ``raw_dtype``)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if type_name in _K_QUANTIZERS:
        block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
        rows = values.reshape(-1, block)
        return _K_QUANTIZERS[type_name](rows).reshape(*values.shape[:-1], -1)
    return gguf.quants.quantize(values, Q[type_name])


def reference(data: np.ndarray, type_name: str) -> np.ndarray:
    """The ``gguf`` package's own dequantization (float32)."""
    return np.asarray(gguf.quants.dequantize(data, Q[type_name]), dtype=np.float32)


# Byte ranges of each type's fp16 scale fields (d, dmin), which random bytes must keep finite.
_SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2),
                 "Q6_K": (208,), "Q3_K": (108,)}


def random_blocks(type_name: str, rows: int, row_values: int, seed: int = 0) -> np.ndarray:
    """Random raw bytes of ``type_name`` for a ``[rows, row_values]`` tensor, with fp16 scales drawn
    from a normal distribution (so every value is finite)."""
    block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
    rng = np.random.default_rng(seed)
    n = rows * row_values // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for start in _SCALE_FIELDS[type_name]:
        raw[:, start:start + 2] = (rng.standard_normal((n, 1)) * 0.05).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, row_values // block * size)


# --------------------------------------------------------------------------- files


def city96_type(key: str, value: torch.Tensor, quant: str, base: str = "BF16") -> str:
    """The type city96's converter + llama.cpp quantizer give this tensor of a Wan model."""
    if value.ndim == 1 or value.numel() <= 1024 or "modulation" in key:
        return "F32"
    if value.ndim > 4 or any(k in key for k in HIGH_PRECISION):
        return "F32" if value.ndim > 4 else base
    block = gguf.GGML_QUANT_SIZES[Q[quant]][0] if quant in QUANTIZED else 1
    return quant if value.shape[-1] % block == 0 else base


def gguf_torch_dtype(type_name: str) -> torch.dtype:
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[type_name]


def write_gguf(path: Path, tensors: Mapping[str, tuple[object, str]], arch: Optional[str] = "wan",
               orig_shapes: Mapping[str, tuple[int, ...]] = (), extra_strings: Mapping[str, str] = ()) -> Path:
    """Write ``{name: (tensor, type name)}`` with ``gguf.GGUFWriter`` (shapes reversed by the writer,
    as in every GGUF file): a torch tensor is quantized to the type, a numpy ``uint8`` array is
    taken as raw blocks of it. ``orig_shapes`` adds ComfyUI-GGUF's ``comfy.gguf.orig_shape.*``."""
    writer = gguf.GGUFWriter(path=None, arch=arch or "wan")
    if arch is None:
        writer.kv_data[0].pop("general.architecture", None)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in dict(extra_strings).items():
        writer.add_string(key, value)
    for key, shape in dict(orig_shapes).items():
        writer.add_array(f"comfy.gguf.orig_shape.{key}", list(shape))
    for key, (tensor, type_name) in tensors.items():
        data = tensor if isinstance(tensor, np.ndarray) else quantize(tensor.detach().float().numpy(), type_name)
        writer.add_tensor(key, data, raw_dtype=None if type_name in ("F32", "F16") else Q[type_name])
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def city96_file(path: Path, state_dict: Mapping[str, torch.Tensor], quant: str, base: str = "BF16",
                prefix: str = "") -> dict[str, str]:
    """A Wan model's state dict written the way ComfyUI-GGUF's tools do it; returns the types used."""
    types = {k: city96_type(k, v, quant, base) for k, v in state_dict.items()}
    write_gguf(path, {prefix + k: (v, types[k]) for k, v in state_dict.items()})
    return types


def dequantized_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file as float32, by the ``gguf`` package alone (the reference)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        values = reference(np.array(t.data), t.tensor_type.name).reshape(shape)
        out[t.name[len(prefix):]] = torch.from_numpy(values.copy())
    return out
