"""umT5-XXL text encoder (encoder only), as used by every Wan 2.1 / 2.2 model.

The prompt is tokenized (see ``wan/tokenizer.py``), run through 24 pre-norm T5 blocks and a final
RMSNorm. What makes it *u*mT5 rather than T5: every block owns its relative-position bias table
(T5 shares one table across blocks). Like all T5 models the attention logits are **not** scaled by
``1/sqrt(head_dim)``.

State-dict keys are the official Wan names (``models_t5_umt5-xxl-enc-bf16.pth``)::

    token_embedding.weight
    blocks.{i}.norm1.weight
    blocks.{i}.attn.{q,k,v,o}.weight
    blocks.{i}.pos_embedding.embedding.weight        [num_buckets, num_heads]
    blocks.{i}.norm2.weight
    blocks.{i}.ffn.gate.0.weight / ffn.fc1.weight / ffn.fc2.weight
    norm.weight

HF / ComfyUI files (``encoder.block.{i}.layer.0.SelfAttention.q.weight`` ...) are converted by
``model_loaders/umt5_keys.py``.

:func:`text_context` turns token ids + mask into the DiT ``context``: each prompt's hidden states
trimmed to its real length (tokens + EOS) and zero-padded to ``text_len`` (512).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .compute_dtype import compute_dtype_for
from .tokenizer import UMT5Tokenizer


@dataclass(frozen=True)
class UMT5Config:
    """Shape of a umT5 encoder. The defaults are umT5-XXL as shipped with Wan."""

    vocab_size: int = 256384
    dim: int = 4096
    num_heads: int = 64
    head_dim: int = 64
    ffn_dim: int = 10240
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512  # prompts are padded / truncated to this many tokens

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_heads", "head_dim", "ffn_dim", "num_layers",
                     "num_buckets", "max_distance", "text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"UMT5Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_buckets % 4 != 0:
            raise ValueError(f"UMT5Config.num_buckets must be a multiple of 4 (bidirectional, half "
                             f"exact / half log-spaced), got {self.num_buckets}")

    @classmethod
    def xxl(cls) -> "UMT5Config":
        """umT5-XXL (5.7 B parameters), the text encoder of all Wan 2.1 / 2.2 models."""
        return cls()

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Pull fp16 infinities back into range (what official Wan and HF do after each residual)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bidirectional T5 bucket of ``key_pos - query_pos``.

    Half the buckets are for keys before the query, half for keys after. In each half, distances
    below a quarter of ``num_buckets`` get a bucket each; larger ones share log-spaced buckets up to
    ``max_distance``, beyond which everything lands in the last bucket.
    """
    half = num_buckets // 2
    buckets = (rel_pos > 0).long() * half
    distance = rel_pos.abs()
    exact = half // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (half - exact)).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RMSNorm(nn.Module):
    """T5 layer norm: scale by the root mean square (no mean subtraction, no bias), in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x.float() * rms).to(x.dtype) * self.weight.to(x.dtype)


class TokenEmbedding(ops.CastWeights, nn.Embedding):
    """Embedding table kept in its storage dtype; only the looked-up rows are cast."""

    bias = None  # CastWeights expects the attribute; embeddings have no bias

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)
        scale = getattr(self, "scale_weight", None)
        return ops.dequantize(rows, dtype, scale)


class RelativePositionBias(nn.Module):
    """One block's learned bias table, indexed by the bucket of each query/key offset."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> torch.Tensor:
        """Bias ``[1, heads, length, length]`` for self-attention over ``length`` tokens."""
        pos = torch.arange(length, device=self.embedding.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets,
                                           self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class SelfAttention(nn.Module):
    """Unscaled multi-head self-attention with an additive bias (position bias + padding mask).

    This does not go through ``wan/attention.py``: the pluggable backends there take no additive
    bias, and T5 needs one in every layer. PyTorch SDPA with ``scale=1`` does exactly the official
    ``softmax(q k^T + bias) v``.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q = ops.Linear(dim, inner, bias=False)
        self.k = ops.Linear(dim, inner, bias=False)
        self.v = ops.Linear(dim, inner, bias=False)
        self.o = ops.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, length, -1))


class GatedFeedForward(nn.Module):
    """``fc2(fc1(x) * gelu_tanh(gate(x)))``; ``gate`` is a Sequential so its key is ``gate.0``."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(ops.Linear(dim, ffn_dim, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = ops.Linear(dim, ffn_dim, bias=False)
        self.fc2 = ops.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class UMT5Block(nn.Module):
    """Pre-norm block: ``x += attn(norm1(x))``, ``x += ffn(norm2(x))``, own position bias."""

    def __init__(self, config: UMT5Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.dim, config.eps)
        self.attn = SelfAttention(config.dim, config.num_heads, config.head_dim)
        self.norm2 = RMSNorm(config.dim, config.eps)
        self.ffn = GatedFeedForward(config.dim, config.ffn_dim)
        self.pos_embedding = RelativePositionBias(config.num_buckets, config.num_heads,
                                                  config.max_distance)

    def forward(self, x: torch.Tensor, key_is_pad: Optional[torch.Tensor]) -> torch.Tensor:
        bias = self.pos_embedding(x.shape[1]).to(x.dtype)
        if key_is_pad is not None:
            # like official: padded keys get the dtype minimum instead of (not added to) the bias
            bias = torch.where(key_is_pad, torch.finfo(x.dtype).min, bias)
        x = fp16_clamp(x + self.attn(self.norm1(x), bias))
        return fp16_clamp(x + self.ffn(self.norm2(x)))


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------

def default_compute_dtype(storage_dtype: torch.dtype, device: Optional[torch.device] = None) -> torch.dtype:
    """The storage dtype when the device computes it fast (fp8 → bf16), else float32 (see
    :mod:`.compute_dtype`: a CPU without native bf16 runs bf16 several times slower)."""
    return compute_dtype_for(storage_dtype, device)


class UMT5Encoder(nn.Module):
    """umT5 encoder stack: token ids ``[B, L]`` (+ mask) -> hidden states ``[B, L, dim]``."""

    def __init__(self, config: UMT5Config) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = TokenEmbedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(UMT5Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.eps)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None,
                dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Hidden states of every position (padded positions included, as in official Wan).

        ``mask`` is ``[B, L]`` with 1 for real tokens; padded *keys* are ignored by attention.
        ``dtype`` is the compute dtype; by default that of the token embedding (bf16 for fp8), or
        float32 where the device has no fast bf16/fp16.
        """
        self._check_inputs(ids, mask)
        dtype = dtype or default_compute_dtype(self.token_embedding.weight.dtype, ids.device)
        x = self.token_embedding.lookup(ids, dtype)
        key_is_pad = None if mask is None else (mask == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_is_pad)
        return self.norm(x)

    def _check_inputs(self, ids: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"umT5 ids must be an integer tensor [batch, tokens], got "
                             f"{tuple(ids.shape)} {ids.dtype}")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"umT5 mask shape {tuple(mask.shape)} differs from ids shape "
                             f"{tuple(ids.shape)}")


def prompt_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Real length (tokens + EOS) of each prompt; the mask must be ones followed by zeros."""
    lengths = mask.gt(0).sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask.gt(0)):
        raise ValueError("umT5 attention mask must be right-padded (ones, then zeros) per prompt")
    return lengths


@torch.no_grad()
def text_context(encoder: UMT5Encoder, ids: torch.Tensor, mask: torch.Tensor,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """DiT ``context`` ``[B, text_len, dim]`` float32: each prompt's states, zero past its length.

    Official Wan encodes the 512-token padded batch, keeps ``mask.sum()`` states per prompt and the
    DiT zero-pads back to 512. Padded keys never influence real tokens and the position bias
    depends only on offsets, so encoding just the first ``max(length)`` tokens gives the same
    states for a fraction of the work.
    """
    text_len = encoder.config.text_len
    if ids.shape[1] > text_len:
        raise ValueError(f"umT5 ids have {ids.shape[1]} tokens, more than text_len={text_len}")
    lengths = prompt_lengths(mask)
    longest = int(lengths.max()) if lengths.numel() else 0
    states = encoder(ids[:, :longest], mask[:, :longest], dtype=dtype).float()
    context = states.new_zeros(ids.shape[0], text_len, states.shape[-1])
    for i, n in enumerate(lengths.tolist()):
        context[i, :n] = states[i, :n]
    return context


def encode_prompts(encoder: UMT5Encoder, tokenizer: UMT5Tokenizer,
                   prompts: Union[str, Sequence[str]],
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Prompts -> DiT context ``[B, text_len, dim]`` float32 (tokenize, encode, trim, zero-pad)."""
    tokens = tokenizer(prompts)
    device = encoder.token_embedding.weight.device
    return text_context(encoder, tokens.ids.to(device), tokens.mask.to(device), dtype=dtype)
