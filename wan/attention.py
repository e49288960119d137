"""One small, pluggable attention function.

Every attention call in wan/ goes through :func:`attention`, so a faster kernel can be dropped in
with :func:`register_backend` / :func:`set_backend` without touching the models. Tensors use the
official Wan layout ``[batch, tokens, heads, head_dim]``.

Built in: ``sdpa`` (PyTorch's scaled-dot-product attention, the default, everywhere), and, when
their packages are installed, ``flash`` (flash-attn), ``sage`` (SageAttention) and ``sdpa_fp8``
(torch's fp8 SDPA over FlashAttention 3). The pack never requires the optional ones: choosing one
that cannot run here raises :class:`AttentionBackendError` naming the package to install, and a
call an optional kernel cannot take (CPU tensors, float32, an unsupported head size such as the
VAE's 384) runs through SDPA instead, logged once.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attention_kernels as kernels

log = logging.getLogger("wanflow")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
Check = Callable[[], Optional[str]]


class AttentionBackendError(ValueError):
    """An attention backend was chosen that is unknown or cannot run on this machine."""


def _key_padding_mask(k_lens: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Boolean mask ``[B, 1, Lq, Lk]``; True where a key is a real (unpadded) token."""
    keep = torch.arange(k_len, device=k_lens.device)[None, :] < k_lens[:, None]
    return keep[:, None, None, :].expand(-1, 1, q_len, -1)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PyTorch scaled-dot-product attention; the default backend, available everywhere."""
    mask = None if k_lens is None else _key_padding_mask(k_lens, q.shape[1], k.shape[1])
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """Attention with an additive score bias per key ``[B, Lk]`` (see ``text_padding``); always
    PyTorch's SDPA, since only the opt-in collapsed-padding path uses it."""
    mask = key_bias.to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


@dataclass(frozen=True)
class Backend:
    """A named attention function, what it needs to run here, and what to switch on while active."""

    name: str
    fn: AttentionFn
    requirement: Check = lambda: None
    activate: Optional[Callable[[], None]] = None
    deactivate: Optional[Callable[[], None]] = None


_fallback_logged: set[tuple[str, str]] = set()


def with_fallback(name: str, kernel: kernels.Kernel,
                  supports: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Optional[str]]) -> AttentionFn:
    """``kernel`` (no key mask) as a backend: key lengths per sample, SDPA for calls it cannot take."""
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        reason = supports(q, k, v)
        if reason is None:
            return kernels.per_sample_keys(kernel, q, k, v, k_lens)
        if (name, reason) not in _fallback_logged:
            _fallback_logged.add((name, reason))
            log.info("attention backend %r does not take %s; those calls use sdpa", name, reason)
        return sdpa_attention(q, k, v, k_lens)
    return run


_BACKENDS: dict[str, Backend] = {
    "sdpa": Backend("sdpa", sdpa_attention),
    "flash": Backend("flash", with_fallback("flash", kernels.flash_kernel, kernels.flash_supports),
                     kernels.flash_requirement),
    "sage": Backend("sage", with_fallback("sage", kernels.sage_kernel, kernels.sage_supports),
                    kernels.sage_requirement),
    "sdpa_fp8": Backend("sdpa_fp8", with_fallback("sdpa_fp8", kernels.sdpa_fp8_kernel, kernels.sdpa_fp8_supports),
                        kernels.sdpa_fp8_requirement, kernels.activate_fa3, kernels.restore_default_flash),
}
_active = "sdpa"


def register_backend(name: str, fn: AttentionFn, requirement: Check = lambda: None) -> None:
    """Make ``fn`` selectable by name (it must accept and return ``[B, L, H, D]`` tensors)."""
    _BACKENDS[name] = Backend(name, fn, requirement)


def backend_names() -> list[str]:
    """Every known backend, usable here or not (what a saved workflow may name)."""
    return ["sdpa"] + sorted(n for n in _BACKENDS if n != "sdpa")


def backend_problem(name: str) -> Optional[str]:
    """None when backend ``name`` can run here; else a sentence saying why not and what to install."""
    backend = _BACKENDS.get(name) if isinstance(name, str) else None
    if backend is None:
        return f"attention backend {name!r:.80} is unknown; known: {', '.join(backend_names())}"
    reason = backend.requirement()
    return None if reason is None else f"attention backend {name!r} cannot run here: {reason}"


def available_backends() -> list[str]:
    """The backends that can run on this machine now."""
    return [name for name in backend_names() if backend_problem(name) is None]


def set_backend(name: str) -> None:
    global _active
    if name == _active:
        return
    problem = backend_problem(name)
    if problem is not None:
        raise AttentionBackendError(problem)
    previous = _BACKENDS[_active]
    if previous.deactivate is not None:
        previous.deactivate()
    chosen = _BACKENDS[name]
    if chosen.activate is not None:
        chosen.activate()
    _active = name


def get_backend() -> str:
    return _active


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily switch the attention backend (restored on exit, also after errors)."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@contextlib.contextmanager
def backend_for(module: nn.Module, name: str) -> Iterator[None]:
    """Run every forward of ``module`` with backend ``name`` (two experts, two loaders' choices).

    Checked on entry, so a backend that cannot run fails before any work."""
    problem = backend_problem(name)
    if problem is not None:
        raise AttentionBackendError(problem)
    outer: list[str] = []

    def enter(*_args) -> None:
        outer.append(get_backend())
        set_backend(name)

    def leave(*_args) -> None:
        set_backend(outer.pop())

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention over ``[B, L, H, D]`` tensors with optional key lengths per sample."""
    return _BACKENDS[_active].fn(q, k, v, k_lens)
