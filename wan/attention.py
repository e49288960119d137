"""One small, pluggable attention function.

Every attention call in wan/ goes through :func:`attention`, so a faster kernel (flash, sage, ...)
can be dropped in with :func:`register_backend` / :func:`set_backend` without touching the models.
Tensors use the official Wan layout ``[batch, tokens, heads, head_dim]``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


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


_BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention}
_active = "sdpa"


def register_backend(name: str, fn: AttentionFn) -> None:
    """Make ``fn`` selectable by name (it must accept and return ``[B, L, H, D]`` tensors)."""
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def set_backend(name: str) -> None:
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"attention backend {name!r} is unknown; available: {available_backends()}")
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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention over ``[B, L, H, D]`` tensors with optional key lengths per sample."""
    return _BACKENDS[_active](q, k, v, k_lens)
