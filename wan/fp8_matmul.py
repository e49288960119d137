"""fp8 matmuls for fp8-stored Linear weights on GPUs with fp8 tensor cores.

An fp8 (or ComfyUI scaled-fp8) weight normally becomes a bf16 copy on every call (``ops.dequantize``)
before the matmul. On CUDA devices of compute capability 8.9 or higher, :func:`try_linear` instead
quantizes the activation to float8_e4m3fn and multiplies fp8 by fp8 with ``torch._scaled_mm``:

    y = (x_q · s_x) (W_q · s_w)^T = s_x s_w (x_q W_q^T)

with one activation scale per tensor or per row (token) ``s_x = amax|x| / 448`` and the file's
per-layer ``scale_weight`` (1 when unscaled) as ``s_w``. The quantization is compiled into one fused
kernel where Triton is installed (:func:`quantize_for_matmul`); eager it costs what the matmul saves. Adapters (unmerged LoRA) still run on top,
in ``ops.Linear``. Any call this path cannot take (CPU, grads needed, ComfyUI weight patches, sizes
not multiples of 16, a non-fp8 weight) returns None and the layer upcasts as before: that path stays
the fallback and the reference. ``WANFLOW_FP8_MATMUL=off|tensor|row|auto`` (auto: per-row where the GPU
takes it, else per-tensor) or :func:`use_mode` choose. The default is ``off``: on an H200 a whole
Wan 2.2 A14B step ran 0.93x as fast with this path as with the upcast one, though a lone Linear ran
faster (bench/results/gpu-nvidia-h200-2026-12-04*.md, fp8_linear-nvidia-h200-2026-12-04*.md).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Iterator, Literal, Optional

import torch

log = logging.getLogger("wanflow")

Mode = Literal["off", "auto", "tensor", "row"]
MODES: tuple[Mode, ...] = ("off", "auto", "tensor", "row")
E4M3_MAX = 448.0
WEIGHT_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None))
                      if d is not None)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MIN_CAPABILITY = (8, 9)      # Ada / Hopper and later have fp8 tensor cores
ROW_CAPABILITY = (9, 0)      # row-wise scales in torch's _scaled_mm (bf16 output)
# torch's CPU _scaled_mm is a reference kernel, far slower than upcasting; tests switch this on to
# run the whole path on small layers
ALLOW_CPU = False


def _mode_from_env() -> Mode:
    value = os.environ.get("WANFLOW_FP8_MATMUL", "off").strip().lower()  # off: see the module docstring
    if value not in MODES:
        raise ValueError(f"WANFLOW_FP8_MATMUL={value!r}: expected one of {', '.join(MODES)}")
    return value  # type: ignore[return-value]


_mode: Mode = _mode_from_env()


def get_mode() -> Mode:
    return _mode


def set_mode(mode: Mode) -> None:
    global _mode
    if mode not in MODES:
        raise ValueError(f"fp8 matmul mode {mode!r}: expected one of {', '.join(MODES)}")
    _mode = mode


@contextlib.contextmanager
def use_mode(mode: Mode) -> Iterator[None]:
    """Temporarily choose the fp8 matmul mode (the GPU bench times "off" against the others)."""
    previous = get_mode()
    set_mode(mode)
    try:
        yield
    finally:
        set_mode(previous)


@dataclass(frozen=True)
class Call:
    """Everything that decides whether one Linear call can run as an fp8 matmul."""

    weight_dtype: torch.dtype
    x_dtype: torch.dtype
    device_type: str
    capability: Optional[tuple[int, int]]   # CUDA compute capability; None off CUDA
    in_features: int
    out_features: int
    patched: bool                           # ComfyUI weight_function patches want the upcast weight
    needs_grad: bool                        # _scaled_mm has no backward
    scalar_scale: bool = True               # scale_weight absent or one number (ComfyUI's scaled fp8)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def describe_call(layer: torch.nn.Module, x: torch.Tensor) -> Call:
    device = x.device
    capability = _capability(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else None
    weight, scale = layer.weight, getattr(layer, "scale_weight", None)
    return Call(weight.dtype, x.dtype, device.type, capability, weight.shape[-1], weight.shape[0],
                bool(getattr(layer, "weight_function", ())),
                torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad),
                scale is None or scale.numel() == 1)


def choose(call: Call, mode: Mode) -> tuple[Optional[Literal["tensor", "row"]], str]:
    """The activation-scale granularity for this call, or None with the reason for upcasting."""
    if mode == "off":
        return None, "fp8 matmuls are off"
    if call.weight_dtype not in WEIGHT_DTYPES:
        return None, f"weight is {call.weight_dtype}, not fp8"
    if call.x_dtype not in OUT_DTYPES:
        return None, f"activation is {call.x_dtype}"
    if call.patched:
        return None, "weight patches (weight_function) need the upcast weight"
    if not call.scalar_scale:
        return None, "scale_weight is not one number per layer"
    if call.needs_grad:
        return None, "gradients are needed and _scaled_mm has no backward"
    if call.in_features % 16 or call.out_features % 16:
        return None, f"weight {call.out_features}x{call.in_features} is not a multiple of 16 in both sizes"
    if call.device_type == "cpu" and ALLOW_CPU:
        capability = ROW_CAPABILITY
    elif call.device_type != "cuda" or call.capability is None:
        return None, f"device {call.device_type} has no fp8 tensor cores"
    elif call.capability < MIN_CAPABILITY:
        return None, f"compute capability {call.capability} < {MIN_CAPABILITY} (no fp8 tensor cores)"
    else:
        capability = call.capability
    rows_ok = (capability >= ROW_CAPABILITY and call.x_dtype == torch.bfloat16
               and call.weight_dtype == torch.float8_e4m3fn)
    if mode == "row" and not rows_ok:
        return None, "row-wise scales need compute capability >= 9.0, bf16 activations and e4m3 weights"
    if mode == "tensor" or (mode == "auto" and not rows_ok):
        return "tensor", "per-tensor activation scale"
    return "row", "per-row activation scales"


def quantize_activation(x: torch.Tensor, granularity: Literal["tensor", "row"]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[M, K]`` → e4m3 values and float32 scales (``[]`` per tensor, ``[M, 1]`` per row), x ≈ values · scale."""
    amax = x.abs().amax() if granularity == "tensor" else x.abs().amax(dim=1, keepdim=True)
    scale = (amax.float() / E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    values = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return values, scale


def weight_scale(layer: torch.nn.Module, out_features: int, granularity: str, device: torch.device) -> torch.Tensor:
    """The per-layer ``scale_weight`` (1 when unscaled) as _scaled_mm takes it: ``[]`` or ``[1, N]``."""
    scale = getattr(layer, "scale_weight", None)
    scale = torch.ones((), device=device) if scale is None else scale.to(device, torch.float32).reshape(())
    return scale if granularity == "tensor" else scale.expand(1, out_features).contiguous()


def emulated_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                       out_dtype: torch.dtype) -> torch.Tensor:
    """What ``torch._scaled_mm(a, b, scale_a, scale_b)`` computes, in float32 (products of fp8 values
    are exact there): the reference the tests hold the kernel and the scale arithmetic to."""
    return ((a.float() @ b.float()) * scale_a * scale_b).to(out_dtype)


_fused_quantize = None     # torch.compile'd quantize_activation, made on the first CUDA call
_fused_broken = False


def quantize_for_matmul(x: torch.Tensor, granularity: Literal["tensor", "row"]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_activation`, fused into one kernel on CUDA where Triton is installed.

    Eager, the quantization is a chain of full passes over the activation (abs, amax, float, divide,
    clamp, cast) that on an H200 costs as much as the fp8 matmul saves: 3.5 ms against a 2.5 ms
    kernel for 65,520 x 5120 (bench/results/fp8_linear-nvidia-h200-2026-12-04.md). Compiled, it is
    two kernels and the fp8 Linear runs in 0.63-0.68x the bf16 time. If compiling fails (no C
    compiler, an old Triton) the eager version runs from then on, after one warning.
    """
    global _fused_quantize, _fused_broken
    if x.device.type != "cuda" or _fused_broken:
        return quantize_activation(x, granularity)
    if _fused_quantize is None:
        from torch.utils._triton import has_triton

        if not has_triton():
            _fused_broken = True
            return quantize_activation(x, granularity)
        _fused_quantize = torch.compile(quantize_activation, dynamic=True)
    try:
        return _fused_quantize(x, granularity)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - inductor raises many kinds; eager is always right
        _fused_broken = True
        log.warning("fp8 matmul: the fused activation quantization failed to compile, running it eagerly "
                    "(slower): %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return quantize_activation(x, granularity)


_failed: set[tuple] = set()


def try_linear(layer: torch.nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``layer(x)`` without its adapters as an fp8 matmul, or None when the layer must upcast."""
    if (_mode == "off" or layer.weight.dtype not in WEIGHT_DTYPES
            or (x.device.type != "cuda" and not ALLOW_CPU)):  # the common cases, decided cheaply
        return None
    call = describe_call(layer, x)
    granularity, _ = choose(call, _mode)
    key = (granularity, call.weight_dtype, call.x_dtype, call.capability)
    if granularity is None or key in _failed:
        return None
    weight = layer.weight.to(x.device, non_blocking=True)   # left in RAM by ComfyUI's lowvram: fp8 over the wire
    rows = x.reshape(-1, x.shape[-1])
    values, scale_x = quantize_for_matmul(rows, granularity)
    scale_w = weight_scale(layer, weight.shape[0], granularity, x.device)
    try:
        y = torch._scaled_mm(values, weight.contiguous().t(), scale_a=scale_x, scale_b=scale_w, out_dtype=x.dtype)
    except RuntimeError as exc:  # a combination this torch/GPU does not build: upcast from now on
        _failed.add(key)
        log.warning("fp8 matmul (%s scales, %s weight, %s) unavailable here, upcasting instead: %s",
                    granularity, call.weight_dtype, call.x_dtype, str(exc).splitlines()[0])
        return None
    bias = layer.compute_bias(x.dtype, x.device)
    if bias is not None:
        y = y.add_(bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])
