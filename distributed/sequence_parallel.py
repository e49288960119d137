"""DeepSpeed-Ulysses sequence parallel for :class:`wan.dit.WanDiT` over ``torch.distributed``.

Every rank holds the whole model and the same inputs; the video tokens are cut into N equal,
contiguous slices, one per rank. Everything a block does per token (modulation, cross-attention
to the text, which every rank holds whole, the FFN, the VACE hints) runs on the local slice
unchanged. Self-attention is the only place that mixes tokens: an all-to-all trades the token
split for a head split (each rank then sees every token for H/N heads), attention runs, and a
second all-to-all trades back. The head's output is all-gathered, so every rank returns the full
velocity and the sampler, which runs identically on every rank, stays in step without more
communication.

A token count that N does not divide is padded with zero tokens at the end; they are masked out
of the self-attention keys (``k_lens``), so they never reach a real token, and are cut off after
the gather. RoPE tables are built for the global grid and sliced, so each token keeps its global
position; per-frame or per-token timestep vectors are sliced the same way, in groups that never
straddle a frame (see :func:`local_groups`). Inference only: the collectives carry no autograd.
"""
from __future__ import annotations

import math
import types
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule

from ..wan import dit as wan_dit
from ..wan.attention import attention
from ..wan.dit import WanDiT, apply_rope, rope_tables

ProcessGroup = Optional[dist.ProcessGroup]


class SequenceParallelError(ValueError):
    """The model or the process group cannot be split as asked."""


def world_size(group: ProcessGroup = None) -> int:
    """Ranks in ``group``; 1 when no process group is up (a plain single-process run)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def check_heads(num_heads: int, world: int) -> None:
    """Ulysses gives each rank H/N heads: a head count N does not divide cannot be split."""
    if world < 1:
        raise SequenceParallelError(f"sequence parallel: world size must be >= 1; got {world}")
    if num_heads % world:
        divisors = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
        raise SequenceParallelError(
            f"sequence parallel: the model has num_heads={num_heads}, which {world} ranks cannot "
            f"split (Ulysses gives each rank num_heads/N heads); use a rank count that divides "
            f"{num_heads}: {divisors}")


# --------------------------------------------------------------------------------------------
# The two all-to-alls and the gather
# --------------------------------------------------------------------------------------------

def tokens_to_heads(x: torch.Tensor, world: int, group: ProcessGroup) -> torch.Tensor:
    """``[B, L/N, H, D]`` (my tokens, all heads) -> ``[B, L, H/N, D]`` (all tokens, my heads)."""
    b, local, heads, d = x.shape
    send = x.reshape(b, local, world, heads // world, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)                       # [src rank, B, L/N, H/N, D]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, world * local, heads // world, d)


def heads_to_tokens(x: torch.Tensor, world: int, group: ProcessGroup) -> torch.Tensor:
    """``[B, L, H/N, D]`` (all tokens, my heads) -> ``[B, L/N, H, D]`` (my tokens, all heads)."""
    b, length, part, d = x.shape
    send = x.reshape(b, world, length // world, part, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)                       # [src rank (its heads), B, L/N, H/N, D]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, length // world, world * part, d)


def gather_tokens(x: torch.Tensor, world: int, group: ProcessGroup) -> torch.Tensor:
    """Every rank's ``[B, L/N, C]`` slice, concatenated in rank order: ``[B, L, C]``."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=1)


# --------------------------------------------------------------------------------------------
# Slicing the per-token inputs
# --------------------------------------------------------------------------------------------

class TokenSplit:
    """Where this rank's tokens lie: ``length`` real tokens padded to ``world * local``."""

    def __init__(self, length: int, world: int, rank: int) -> None:
        self.length = length
        self.world = world
        self.rank = rank
        self.local = math.ceil(length / world)
        self.start = rank * self.local
        self.padded = self.local * world

    @property
    def padding(self) -> int:
        return self.padded - self.length

    def take(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of a full-length tensor along ``dim``, zero-padded past the end."""
        if self.padding:
            pad_shape = list(x.shape)
            pad_shape[dim] = self.padding
            x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
        return x.narrow(dim, self.start, self.local)


def local_groups(e: torch.Tensor, split: TokenSplit) -> torch.Tensor:
    """This rank's time vectors ``[B, G', ...]`` from the global ``[B, G, ...]``.

    :func:`wan.dit.modulate` applies group g to the g-th of G equal, contiguous runs of tokens.
    A rank's slice starts and ends on multiples of ``local``, so runs of
    ``gcd(L/G, local)`` tokens never cross a group boundary: the slice is ``local/size`` such runs,
    each taking its group's vector, without building a vector per token. Padding tokens take the
    last group's vector (they are discarded).
    """
    groups = e.shape[1]
    if groups == 1:
        return e
    size = math.gcd(split.length // groups, split.local)
    first = split.start + torch.arange(split.local // size, device=e.device) * size
    index = (first // (split.length // groups)).clamp(max=groups - 1)
    return e.index_select(1, index)


# --------------------------------------------------------------------------------------------
# Self-attention with the Ulysses all-to-all
# --------------------------------------------------------------------------------------------

class _SplitState:
    """Kept on the model while wrapped: its group and what the replaced self-attention forwards
    read during one sequence-parallel forward. Two wrappers of one model (both experts from one
    file) share it, and the last :meth:`SequenceParallelDiT.unwrap` restores the model."""

    def __init__(self, world: int, group: ProcessGroup) -> None:
        self.world = world
        self.group = group
        self.k_lens: Optional[torch.Tensor] = None
        self.users = 0


_STATE = "_sequence_parallel_state"


def _ulysses_forward(state: _SplitState):
    """A ``SelfAttention.forward`` for local tokens: projections, qk-norm and RoPE (the local
    slice of the global tables) per token, then attention over all tokens for H/N heads."""
    def forward(self: wan_dit.SelfAttention, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), rope)
        v = self.v(x).unflatten(-1, heads)
        q, k, v = (tokens_to_heads(t, state.world, state.group) for t in (q, k, v))
        out = attention(q, k, v, state.k_lens)
        return self.o(heads_to_tokens(out, state.world, state.group).flatten(-2))
    return forward


def _self_attentions(model: nn.Module) -> list[wan_dit.SelfAttention]:
    return [m for m in model.modules() if isinstance(m, wan_dit.SelfAttention)]


def _attach(model: WanDiT, world: int, group: ProcessGroup) -> _SplitState:
    """Give every self-attention of ``model`` (main and VACE blocks) the all-to-all forward."""
    state = model.__dict__.get(_STATE)
    if state is None:
        state = _SplitState(world, group)
        forward = _ulysses_forward(state)
        for attn in _self_attentions(model):
            attn.forward = types.MethodType(forward, attn)
        model.__dict__[_STATE] = state
    elif state.group is not group:
        raise SequenceParallelError("sequence parallel: this model is already split across another "
                                    f"group ({state.world} ranks); unwrap it first")
    state.users += 1
    return state


def _detach(model: WanDiT) -> None:
    state = model.__dict__[_STATE]
    state.users -= 1
    if state.users == 0:
        for attn in _self_attentions(model):
            attn.__dict__.pop("forward", None)
        del model.__dict__[_STATE]


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------

class SequenceParallelDiT(nn.Module):
    """``WanDiT`` with its tokens split across the ranks of ``group`` (default: the world).

    Call it exactly like the model, with the same inputs on every rank; every rank returns the
    full velocity. Wrapping replaces each block's ``self_attn.forward`` (main and VACE blocks)
    with the all-to-all version, so the bare model must not be called while wrapped;
    :meth:`unwrap` restores it. With one rank the wrapper calls the model unchanged.
    """

    def __init__(self, model: WanDiT, group: ProcessGroup = None) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise SequenceParallelError("sequence parallel: torch.distributed is not initialised; "
                                        "call init_process_group (see distributed.launch) first")
        self.model = model
        self.group = group = group if group is not None else dist.group.WORLD
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        check_heads(model.config.num_heads, self.world)
        self._state = _attach(model, self.world, group) if self.world > 1 else None

    @property
    def config(self) -> wan_dit.WanDiTConfig:
        return self.model.config

    def unwrap(self) -> WanDiT:
        """The model with its own self-attention back once no other wrapper of it is left (this
        wrapper is unusable afterwards)."""
        if self._state is not None:
            _detach(self.model)
            self._state = None
        return self.model

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                y: Optional[torch.Tensor] = None, clip_fea: Optional[torch.Tensor] = None,
                vace_context: wan_dit.VaceContext = None, vace_scale: wan_dit.VaceScale = 1.0,
                pad_context: bool = True) -> torch.Tensor:
        """``WanDiT.forward`` with the blocks on this rank's tokens (same contract)."""
        model = self.model
        if self.world == 1:
            return model(x, t, context, y=y, clip_fea=clip_fea, vace_context=vace_context,
                         vace_scale=vace_scale, pad_context=pad_context)
        if self._state is None:
            raise SequenceParallelError("sequence parallel: this wrapper was unwrapped; wrap the model again")
        sharded = isinstance(model, FSDPModule)  # FSDP2: the root's hooks do not run here
        if sharded:
            # what the root's first forward would do: make it the root of every unit inside it
            # (else each block becomes a root of its own and a plain call of the model fails)
            model._get_fsdp_state()._lazy_init()
            model.unshard()
        try:
            return self._split_forward(x, t, context, y, clip_fea, vace_context, vace_scale,
                                       pad_context)
        finally:
            if sharded:
                model.reshard()

    def _split_forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                       y: Optional[torch.Tensor], clip_fea: Optional[torch.Tensor],
                       vace_context: wan_dit.VaceContext, vace_scale: wan_dit.VaceScale,
                       pad_context: bool) -> torch.Tensor:
        model = self.model
        cfg = model.config
        dtype = x.dtype
        x, grid = model._model_input(x, context, y, clip_fea)
        batch = x.shape[0]
        split = TokenSplit(math.prod(grid), self.world, self.rank)

        # The patch embedding and VACE's start run on the whole latent (a few convs, as in the
        # official code); everything after them on the local slice.
        h = model.patch_embedding(x).flatten(2).transpose(1, 2).float()
        e, e0 = model._embed_time(torch.as_tensor(t, device=x.device), batch, grid)
        e, e0 = local_groups(e, split), local_groups(e0, split)
        context, key_bias = model._embed_text(context.to(dtype), pad_context)
        context_img = model.img_emb(clip_fea, dtype) if cfg.has_image_input else None
        rope = tuple(split.take(r, dim=0) for r in rope_tables(grid, cfg.rope_axes,
                                                                 cfg.rope_theta, x.device))
        vace = model._vace_streams(vace_context, vace_scale, h, grid, dtype)
        for stream in vace:
            stream.state = split.take(stream.state)
        h = split.take(h)

        self._state.k_lens = (torch.full((batch,), split.length, dtype=torch.int64, device=x.device)
                              if split.padding else None)
        try:
            for i, block in enumerate(model.blocks):
                h = block(h, e0, context, context_img, rope, dtype, key_bias)
                j = model._vace_after.get(i)
                if j is not None and vace:
                    h = model._add_vace_hints(h, j, vace, e0, context, context_img, rope, dtype,
                                              key_bias)
        finally:
            self._state.k_lens = None
        out = gather_tokens(model.head(h, e), self.world, self.group)[:, :split.length]
        return model._unpatchify(out, grid)

