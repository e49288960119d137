"""The activation dtype a device computes fast for weights stored in a given dtype.

Our layers keep weights in their storage dtype and cast them per call (wan/ops.py), so the compute
dtype is free to differ from the storage. Half-precision storage (bf16, fp16, fp8) computes in half
precision where the device has native support for it; elsewhere float32 is the fast choice: on a
CPU without native bf16 (AVX2 only, or AVX-512 without its BF16 extension) a bf16 DiT forward is
several times slower than the same forward in float32 (bench/results/cpu_compute_dtype.md).

Native bf16 on a CPU means x86 AVX512_BF16 or AMX-BF16 (with torch dispatching to AVX-512 at all),
or the Arm BF16 extension. ``WANFLOW_CPU_BF16=1`` / ``0`` overrides the detection.
"""
from __future__ import annotations

import functools
import os
import platform
from typing import Optional

import torch

HALF_DTYPES = (torch.bfloat16, torch.float16)
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
X86_FP16_FLAGS = ("amx_fp16",)
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include bf16 instructions
_ONEDNN_BF16_ISAS = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")


def _cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (x86 'flags', Arm 'Features'); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _env_choice(name: str) -> Optional[bool]:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def _onednn_capped_below_bf16() -> bool:
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return bool(cap) and not any(part in cap for part in _ONEDNN_BF16_ISAS)


def _x86_has(flags: tuple[str, ...], probes: tuple[str, ...]) -> bool:
    """torch's own cpuinfo probes where it has them, /proc/cpuinfo flags otherwise."""
    found = [getattr(torch.cpu, p)() for p in probes if callable(getattr(torch.cpu, p, None))]
    return any(found) if found else bool(_cpu_flags() & set(flags))


@functools.lru_cache(maxsize=None)
def _detect_cpu_bf16() -> bool:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if torch.backends.cpu.get_cpu_capability() != "AVX512" or _onednn_capped_below_bf16():
            return False  # torch (ATEN_CPU_CAPABILITY) or oneDNN limited to ISAs without bf16
        return _x86_has(X86_BF16_FLAGS, ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    if machine in ("aarch64", "arm64"):
        return "bf16" in _cpu_flags()
    return False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (faster than float32), not by emulation."""
    forced = _env_choice("WANFLOW_CPU_BF16")
    return _detect_cpu_bf16() if forced is None else forced


@functools.lru_cache(maxsize=None)
def cpu_has_native_fp16() -> bool:
    """AMX-FP16 (x86) or the Arm FP16 arithmetic extension ('asimdhp')."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "asimdhp" in _cpu_flags()
    if torch.backends.cpu.get_cpu_capability() != "AVX512" or _onednn_capped_below_bf16():
        return False
    return _x86_has(X86_FP16_FLAGS, ("_is_amx_fp16_supported",))


def half_is_fast(dtype: torch.dtype, device: Optional[torch.device]) -> bool:
    """Whether ``device`` computes in ``dtype`` (bf16 or fp16) at least as fast as in float32."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu":
        return cpu_has_native_bf16() if dtype == torch.bfloat16 else cpu_has_native_fp16()
    if device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True  # GPUs and other accelerators: half precision is what they are built for


def compute_dtype_for(storage: torch.dtype, device: Optional[torch.device] = None) -> torch.dtype:
    """The activation dtype for weights stored as ``storage`` on ``device`` (default: the CPU).

    fp32 → fp32; bf16 / fp16 → the same where the device does it fast; fp8 and GGUF blocks (raw
    ``uint8``) → bf16 likewise. A GPU without fast bf16 gets fp16, a CPU float32. The weights stay
    as stored either way."""
    one_byte = storage.itemsize == 1 and (storage.is_floating_point or storage == torch.uint8)
    wanted = torch.bfloat16 if one_byte else storage
    if wanted in HALF_DTYPES:
        if half_is_fast(wanted, device):
            return wanted
        on_cpu = device is None or torch.device(device).type == "cpu"
        return torch.float16 if not on_cpu and half_is_fast(torch.float16, device) else torch.float32
    return torch.float32 if storage != torch.float64 else storage


def module_compute_dtype(module: torch.nn.Module, device: Optional[torch.device] = None) -> torch.dtype:
    """:func:`compute_dtype_for` the dtype holding most of ``module``'s parameters (float32 if none)."""
    sizes: dict[torch.dtype, int] = {}
    for tensor in module.parameters():
        sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.numel()
    if not sizes:
        return torch.float32
    return compute_dtype_for(max(sizes, key=sizes.__getitem__), device)
