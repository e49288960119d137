"""Exact shortcut for the zero padding of the text context (an opt-in speed-up).

Wan pads every prompt's umT5 output with zero rows up to ``text_len`` (512) tokens, and the
cross-attention attends to all of them. A zero row always embeds to the same key and value, so
``n`` padding rows weigh in the softmax exactly like one row whose score is raised by ``log n``.
Collapsing them keeps the result (up to float rounding) and its gradients, while the text
embedding and the key/value projections run on a dozen rows instead of 512: for the nano models,
whose video has only 80 tokens, that halves a training step. Large models gain nothing (their
video has tens of thousands of tokens), so the default path stays the original one.
"""
from __future__ import annotations

import math

import torch


def collapse_padding(context: torch.Tensor, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten ``context`` ``[B, L, C]`` (zero-padded, ``L <= text_len``) to its real rows plus
    one padding row; returns it with the key bias ``[B, L']`` that restores the padding's weight
    (0 on real rows, ``log(padding count)`` on the padding row, ``-inf`` on rows past it)."""
    batch, length, _ = context.shape
    nonzero = context.detach().abs().amax(dim=-1) > 0                       # [B, L]
    positions = torch.arange(1, length + 1, device=context.device)
    real = (nonzero * positions).amax(dim=-1)                                # real rows per sample
    padding = text_len - real
    keep = int((real + (padding > 0).long()).max())
    if length < keep:
        context = torch.nn.functional.pad(context, (0, 0, 0, keep - length))
    compact = context[:, :keep].clone()
    index = torch.arange(keep, device=context.device)[None, :]
    compact[index.expand(batch, -1) >= real[:, None]] = 0
    bias = torch.zeros(batch, keep, device=context.device)
    bias[index.expand(batch, -1) > real[:, None]] = -math.inf
    at_pad = index == real[:, None]
    log_count = torch.log(padding.clamp(min=1).float())[:, None].expand(-1, keep)
    bias[at_pad] = log_count[at_pad]
    return compact, bias


def real_length(contexts: torch.Tensor) -> int:
    """Rows up to the last non-zero one over all of ``contexts`` ``[N, L, C]`` (at least 1): what
    is left of a zero-padded batch once its common padding is cut off."""
    nonzero = contexts.abs().amax(dim=-1) > 0                               # [N, L]
    positions = torch.arange(1, contexts.shape[1] + 1)
    return max(1, int((nonzero * positions).amax())) if contexts.numel() else 1
