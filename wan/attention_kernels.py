"""Optional fast attention kernels: flash-attn, SageAttention and torch's fp8 SDPA (FlashAttention 3).

None of them is required: each comes with a ``requirement`` (why it cannot run here, naming the pip
package, or None) and a ``supports`` check for one call (device, dtype, head size); wan/attention.py
registers them and falls back to SDPA for calls a kernel cannot take. Tensors use the Wan layout
``[batch, tokens, heads, head_dim]``.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import torch

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

HALF_DTYPES = (torch.float16, torch.bfloat16)
FP8_ATTENTION_MAX = 448.0  # largest finite float8_e4m3fn
FA3_MODULE = "flash_attn_interface"


@dataclass(frozen=True)
class Package:
    """An optional Python package: the module it imports as and how a user installs it."""

    module: str
    install: str

    def missing(self) -> Optional[str]:
        """None when the module can be imported; else a sentence naming the install command."""
        if importlib.util.find_spec(self.module) is not None:
            try:
                importlib.import_module(self.module)
                return None
            except Exception as exc:  # a wheel built for another torch/CUDA fails here, not at find_spec
                return f"the {self.module} module is installed but does not import ({exc}); reinstall it: {self.install}"
        return f"the {self.module} module is not installed: {self.install}"


FLASH_ATTN = Package("flash_attn", "pip install flash-attn --no-build-isolation")
SAGEATTENTION = Package("sageattention", "pip install sageattention")
FLASH_ATTN_3 = Package(FA3_MODULE, "build FlashAttention 3 from the hopper/ folder of the flash-attention "
                                   "repository (pip install . there); it is not on PyPI")


def _cuda_missing(package: Package) -> Optional[str]:
    if torch.cuda.is_available():
        return None
    return f"it runs on CUDA GPUs only and torch sees none (it also needs the {package.module} module: {package.install})"


def flash_requirement() -> Optional[str]:
    return _cuda_missing(FLASH_ATTN) or FLASH_ATTN.missing()


def sage_requirement() -> Optional[str]:
    return _cuda_missing(SAGEATTENTION) or SAGEATTENTION.missing()


def sdpa_fp8_requirement() -> Optional[str]:
    """torch's fp8 SDPA runs through FlashAttention 3 kernels, on Hopper (sm90) GPUs."""
    try:
        from torch.nn.attention import activate_flash_attention_impl  # noqa: F401
        from torch.nn.attention.experimental._scaled_dot_product_attention_quantized import (  # noqa: F401
            _scaled_dot_product_attention_quantized)
    except ImportError:
        return f"this torch ({torch.__version__}) has no fp8 scaled-dot-product attention"
    missing = _cuda_missing(FLASH_ATTN_3)
    if missing:
        return missing
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return f"it needs a Hopper GPU (compute capability 9.x); this one is {major}.{minor}"
    return FLASH_ATTN_3.missing()


def activate_fa3() -> None:
    """Route torch's flash SDPA (and its fp8 variant) to FlashAttention 3 while sdpa_fp8 is active."""
    from torch.nn.attention import activate_flash_attention_impl
    activate_flash_attention_impl("FA3")


def restore_default_flash() -> None:
    from torch.nn.attention import restore_flash_attention_impl
    restore_flash_attention_impl()


# --------------------------------------------------------------------------------------------
# Per-call support: None when the kernel takes these tensors, else why not
# --------------------------------------------------------------------------------------------

def _half_cuda(q: torch.Tensor) -> Optional[str]:
    if q.dtype not in HALF_DTYPES:
        return f"{q.dtype} inputs (it takes float16/bfloat16)"
    if q.device.type != "cuda":
        return f"tensors on {q.device.type}, not CUDA"
    return None


def flash_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    head_dim = q.shape[-1]
    if head_dim > 256 or head_dim % 8:
        return f"head_dim {head_dim} (it takes multiples of 8 up to 256)"
    return _half_cuda(q)


SAGE_HEAD_DIMS = (64, 96, 128)


def sage_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    if q.shape[-1] not in SAGE_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} (it takes {', '.join(map(str, SAGE_HEAD_DIMS))})"
    return _half_cuda(q)


FA3_FP8_HEAD_DIMS = (64, 128, 256)


def sdpa_fp8_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    if q.shape[-1] not in FA3_FP8_HEAD_DIMS:
        return f"head_dim {q.shape[-1]} (it takes {', '.join(map(str, FA3_FP8_HEAD_DIMS))})"
    return _half_cuda(q)


# --------------------------------------------------------------------------------------------
# Kernels (no key mask; per_sample_keys adds key lengths)
# --------------------------------------------------------------------------------------------

def flash_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func
    return flash_attn_func(q, k, v)


def sage_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


def quantize_per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, H, L, D]`` → float8_e4m3fn values and float32 descales ``[B, H]`` (x ≈ values · descale).

    One scale per (sample, head) maps that head's largest magnitude onto e4m3's largest finite
    value, the granularity torch's fp8 SDPA takes."""
    amax = x.detach().abs().amax(dim=(2, 3)).float()
    descale = torch.where(amax > 0, amax / FP8_ATTENTION_MAX, torch.ones_like(amax))
    values = (x.float() / descale[:, :, None, None]).clamp(-FP8_ATTENTION_MAX, FP8_ATTENTION_MAX)
    return values.to(torch.float8_e4m3fn), descale


def sdpa_fp8_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v quantized to e4m3 per head, then torch's fp8 SDPA; the result in q's dtype."""
    from torch.nn.attention.experimental._scaled_dot_product_attention_quantized import (
        _scaled_dot_product_attention_quantized)
    (q8, qs), (k8, ks), (v8, vs) = (quantize_per_head(t.transpose(1, 2)) for t in (q, k, v))
    out = _scaled_dot_product_attention_quantized(q8, k8, v8, q_descale=qs, k_descale=ks, v_descale=vs)
    return out.transpose(1, 2).to(q.dtype)


def per_sample_keys(kernel: Kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_lens: Optional[torch.Tensor]) -> torch.Tensor:
    """``kernel`` over each sample's first ``k_lens[b]`` keys (kernels without a key mask).

    Wan batches are one or two samples, so a call per sample costs a launch, not a pass."""
    if k_lens is None or bool((k_lens >= k.shape[1]).all()):
        return kernel(q, k, v)
    lengths = [int(n) for n in k_lens.tolist()]
    return torch.cat([kernel(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n]) for b, n in enumerate(lengths)])
