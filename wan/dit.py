"""The Wan 2.1 / 2.2 diffusion transformer (DiT), one configurable model for every variant.

One class, :class:`WanDiT`, covers

* Wan 2.1 T2V (1.3B, 14B) and the 2.2 T2V-A14B experts,
* Wan 2.1 I2V / FLF2V with CLIP image tokens (``img_emb``, ``k_img``/``v_img`` per block),
* the 2.2 I2V-A14B experts (channel-concat condition, no CLIP),
* TI2V-5B (48-channel latents, per-token timesteps),
* VACE (a side stream of ``vace_blocks`` whose hints are added to the main blocks).

State-dict keys are exactly the official Wan names (``blocks.N.self_attn.q.weight`` ...), so
official and ComfyUI files load directly; diffusers files go through ``model_loaders/dit_keys.py``.

Numerics follow the official code: the residual stream, time embedding, modulation, norms, RoPE
and the output head run in float32; the Linear layers, the patch embedding and attention run in
the *compute dtype*, which is the dtype of the latent ``x`` given by the caller (pass bf16 latents
to compute in bf16, fp32 latents for reference runs). The output is always float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .attention import attention, biased_attention
from .dit_config import WanDiTConfig
from .text_padding import collapse_padding


# --------------------------------------------------------------------------------------------
# Embeddings: timestep sinusoid and 3-axis RoPE
# --------------------------------------------------------------------------------------------

def _precise_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sinusoid/RoPE angles, as the original; float32 where there is none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t*f_k), sin(t*f_k)]`` with ``f_k = 10000^(-k/(dim/2))``; float64 like the original,
    returned as float32. ``t`` has any shape; the result has one more axis of size ``dim``."""
    half = dim // 2
    precise = _precise_dtype(t.device)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=precise, device=t.device) / half)
    angles = t.to(precise).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_tables(grid: tuple[int, int, int], axes: tuple[int, int, int], theta: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[L, head_dim/2]`` for tokens on a (frames, height, width) grid.

    Each axis ``a`` with ``D_a`` channels rotates ``D_a/2`` channel pairs at frequencies
    ``theta^(-2i/D_a)`` times the token's integer position on that axis. Built in float64 from the
    grid on every forward (L x head_dim/2 values, negligible next to one attention call).
    """
    precise = _precise_dtype(device)
    angles = []
    for size, axis_dim in zip(grid, axes):
        freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=precise, device=device)
                                / axis_dim)
        angles.append(torch.outer(torch.arange(size, dtype=precise, device=device), freqs))
    f, h, w = grid
    table = torch.cat([
        angles[0][:, None, None, :].expand(f, h, w, -1),
        angles[1][None, :, None, :].expand(f, h, w, -1),
        angles[2][None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)
    return torch.cos(table).float(), torch.sin(table).float()


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive channel pairs ``(x[2i], x[2i+1])`` of ``x [B, L, H, D]`` in float32."""
    cos, sin = (r[None, :, None, :] for r in rope)
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Time modulation over groups of tokens
# --------------------------------------------------------------------------------------------
# Time-dependent vectors have shape [B, G, dim]: G = 1 (one t per sample), G = frames (TI2V:
# one t per latent frame) or G = L (one t per token). Tokens are frame-major, so group g is the
# contiguous run of L/G tokens; the vectors are broadcast over it without being repeated.

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``x`` [B, L, dim] and shift/scale [B, G, dim]."""
    groups = x.unflatten(1, (shift.shape[1], -1))
    return (groups * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def add_gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32 with ``x``, ``y`` [B, L, dim] and ``gate`` [B, G, dim]."""
    groups = gate.shape[1]
    out = x.unflatten(1, (groups, -1)) + y.float().unflatten(1, (groups, -1)) * gate[:, :, None]
    return out.flatten(1, 2)


# --------------------------------------------------------------------------------------------
# Norms (float32 compute, storage-dtype parameters)
# --------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned scale (``norm_q`` / ``norm_k``), in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.to(x.device, torch.float32)).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (returns float32) whatever the input and parameter dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.device, torch.float32)
        bias = None if self.bias is None else self.bias.to(x.device, torch.float32)
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


# --------------------------------------------------------------------------------------------
# Attention layers
# --------------------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Self-attention with RMS qk-norm over the full width and 3-D RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), rope)
        v = self.v(x).unflatten(-1, heads)
        return self.o(attention(q, k, v).flatten(-2))


class CrossAttention(nn.Module):
    """Attention from the video tokens to the text tokens.

    With ``with_image`` (Wan 2.1 I2V / FLF2V) the same queries also attend to the CLIP image
    tokens through their own ``k_img`` / ``v_img``; both results are summed before ``o``.
    No key mask: padded text positions take part, as in the original (``key_bias`` only comes
    with the collapsed padding of :mod:`.text_padding`, which gives the same result).
    """

    def __init__(self, dim: int, num_heads: int, eps: float, with_image: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        if with_image:
            self.k_img = ops.Linear(dim, dim)
            self.v_img = ops.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_img: Optional[torch.Tensor], key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        v = self.v(context).unflatten(-1, heads)
        out = attention(q, k, v) if key_bias is None else biased_attention(q, k, v, key_bias)
        if context_img is not None:
            k_img = self.norm_k_img(self.k_img(context_img)).unflatten(-1, heads)
            v_img = self.v_img(context_img).unflatten(-1, heads)
            out = out + attention(q, k_img, v_img)
        return self.o(out.flatten(-2))


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

def _feed_forward(dim: int, ffn_dim: int) -> nn.Sequential:
    """``ffn.0`` / ``ffn.2`` in the official key names."""
    return nn.Sequential(ops.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"),
                         ops.Linear(ffn_dim, dim))


class WanBlock(nn.Module):
    """One transformer block: modulated self-attention, plain cross-attention, modulated FFN.

    ``x`` is the float32 residual stream ``[B, L, dim]``; ``e0`` the float32 time projection
    ``[B, G, 6, dim]`` for G groups of tokens (see :func:`modulate`).
    """

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps, cfg.has_image_input)
        self.norm2 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = _feed_forward(dim, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim).mul_(dim ** -0.5))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                context_img: Optional[torch.Tensor], rope: tuple[torch.Tensor, torch.Tensor],
                dtype: torch.dtype, key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        mod = self.modulation.to(e0.device, torch.float32).unsqueeze(0) + e0
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(dim=2)

        y = self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa).to(dtype), rope)
        x = add_gated(x, y, gate_sa)
        x = x + self.cross_attn(self.norm3(x).to(dtype), context, context_img, key_bias).float()
        y = self.ffn(modulate(self.norm2(x), shift_ff, scale_ff).to(dtype))
        return add_gated(x, y, gate_ff)


class VaceBlock(WanBlock):
    """A VACE side-stream block: a full Wan block plus ``after_proj`` producing the hint.

    The first VACE block also owns ``before_proj``, which mixes the embedded VACE context with
    the embedded noisy latent before the stream starts.
    """

    def __init__(self, cfg: WanDiTConfig, first: bool) -> None:
        super().__init__(cfg)
        self.before_proj = ops.Linear(cfg.dim, cfg.dim) if first else None
        self.after_proj = ops.Linear(cfg.dim, cfg.dim)

    def start(self, c: torch.Tensor, x0: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Initial stream state ``before_proj(c) + x0`` (first block only), float32."""
        if self.before_proj is None:
            raise RuntimeError("VaceBlock.start() is only defined for the first VACE block")
        return self.before_proj(c.to(dtype)).float() + x0

    def hint(self, c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.after_proj(c.to(dtype)).float()


class Head(nn.Module):
    """Output head: time-modulated LayerNorm then a Linear to ``prod(patch) * out_dim``, fp32."""

    def __init__(self, cfg: WanDiTConfig) -> None:
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = ops.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim).mul_(cfg.dim ** -0.5))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        modulation = self.modulation.to(e.device, torch.float32)
        shift, scale = (modulation.unsqueeze(0) + e.unsqueeze(2)).unbind(dim=2)
        return self.head(modulate(self.norm(x), shift, scale))


class ImageEmbedding(nn.Module):
    """``img_emb``: CLIP tokens -> model width (LN, Linear, GELU, Linear, LN), official MLPProj.

    FLF2V adds the learned ``emb_pos`` to the 2x257 first/last-frame tokens first.
    """

    def __init__(self, clip_dim: int, dim: int, pos_len: Optional[int]) -> None:
        super().__init__()
        self.proj = nn.Sequential(LayerNorm32(clip_dim), ops.Linear(clip_dim, clip_dim),
                                  nn.GELU(), ops.Linear(clip_dim, dim), LayerNorm32(dim))
        self.emb_pos = (nn.Parameter(torch.zeros(1, pos_len, clip_dim))
                        if pos_len is not None else None)

    def forward(self, clip_fea: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = clip_fea.float()
        if self.emb_pos is not None:
            x = x + self.emb_pos.to(x.device, torch.float32)
        norm_in, fc1, act, fc2, norm_out = self.proj
        x = fc2(act(fc1(norm_in(x).to(dtype))))
        return norm_out(x).to(dtype)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def group_timesteps(t: torch.Tensor, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Timesteps as ``[B, G]`` over G equal, contiguous token groups (see :func:`modulate`).

    Accepts ``[B]`` (or a scalar / ``[1]``), per-frame ``[B, frames]`` (ComfyUI style) and per-token
    ``[B, seq_len]`` (official TI2V). Per-token timesteps that are constant within each latent
    frame, as TI2V's always are, become per-frame, so no ``[B, L, 6, dim]`` tensor is built.
    """
    frames, seq_len = grid[0], math.prod(grid)
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(batch)
    if t.shape == (batch,):
        return t[:, None]
    if t.shape == (batch, frames):
        return t
    if t.shape == (batch, seq_len):
        per_frame = t.unflatten(1, (frames, -1))
        if torch.equal(per_frame, per_frame[:, :, :1].expand_as(per_frame)):
            return per_frame[:, :, 0]
        return t
    raise ValueError(f"WanDiT: t must be [B={batch}], per-frame [B, {frames}] or per-token "
                     f"[B, seq_len={seq_len}]; got {tuple(t.shape)}")


VaceContext = Union[torch.Tensor, Sequence[torch.Tensor], None]
VaceScale = Union[float, Sequence[float]]


@dataclass
class VaceStream:
    """The running state of one VACE context (float32 ``[B, L, dim]``) and its hint strength."""

    state: torch.Tensor
    strength: float


class WanDiT(nn.Module):
    """Wan 2.1 / 2.2 DiT. See the module docstring and docs/DEVELOPING.md for the contract.

    Construction allocates no data-dependent state, so ``with torch.device("meta"):
    WanDiT(cfg)`` followed by ``load_state_dict(sd, assign=True)`` never holds two copies.
    """

    def __init__(self, config: WanDiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        self.patch_embedding = ops.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size,
                                          stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(ops.Linear(cfg.text_dim, dim),
                                            nn.GELU(approximate="tanh"), ops.Linear(dim, dim))
        self.time_embedding = nn.Sequential(ops.Linear(cfg.freq_dim, dim), nn.SiLU(),
                                            ops.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.has_image_input:
            self.img_emb = ImageEmbedding(cfg.clip_dim, dim, cfg.flf_pos_len)
        if cfg.vace_layers:
            self.vace_patch_embedding = ops.Conv3d(cfg.vace_in_dim, dim,
                                                   kernel_size=cfg.patch_size,
                                                   stride=cfg.patch_size)
            self.vace_blocks = nn.ModuleList(VaceBlock(cfg, first=(j == 0))
                                             for j in range(len(cfg.vace_layers)))
        self.collapse_text_padding = False
        """Opt-in exact shortcut for the text padding (see :mod:`.text_padding`); small models only."""
        # main block index -> VACE block index
        self._vace_after = {layer: j for j, layer in enumerate(cfg.vace_layers)}

    # ---- forward -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                y: Optional[torch.Tensor] = None, clip_fea: Optional[torch.Tensor] = None,
                vace_context: VaceContext = None, vace_scale: VaceScale = 1.0,
                pad_context: bool = True) -> torch.Tensor:
        """Predict the flow velocity ``[B, out_dim, F, H, W]`` (float32).

        ``x`` [B, C, F, H, W] latent (its dtype is the compute dtype); ``t`` timesteps in
        0..1000 as [B], per-frame [B, F] or per-token [B, seq_len] (TI2V); ``context``
        [B, L, text_dim] text embeddings (zero-padded to ``text_len`` here when shorter); ``y``
        channel-concat condition; ``clip_fea`` [B, N, clip_dim] CLIP tokens (2.1 I2V/FLF2V);
        ``vace_context`` one [B, vace_in_dim, F', H, W] tensor or a list of them, each with its
        strength in ``vace_scale``. ``pad_context=False`` takes the context at the length given:
        ComfyUI's core text encoders never pad, and the zero rows change the cross-attention.
        """
        cfg = self.config
        dtype = x.dtype
        x, grid = self._model_input(x, context, y, clip_fea)
        batch = x.shape[0]

        h = self.patch_embedding(x).flatten(2).transpose(1, 2).float()   # residual [B, L, dim]
        e, e0 = self._embed_time(torch.as_tensor(t, device=x.device), batch, grid)
        context, key_bias = self._embed_text(context.to(dtype), pad_context)
        context_img = self.img_emb(clip_fea, dtype) if cfg.has_image_input else None
        rope = rope_tables(grid, cfg.rope_axes, cfg.rope_theta, x.device)

        vace = self._vace_streams(vace_context, vace_scale, h, grid, dtype)
        for i, block in enumerate(self.blocks):
            h = block(h, e0, context, context_img, rope, dtype, key_bias)
            j = self._vace_after.get(i)
            if j is not None and vace:
                h = self._add_vace_hints(h, j, vace, e0, context, context_img, rope, dtype, key_bias)

        return self._unpatchify(self.head(h, e), grid)

    # ---- pieces of forward ---------------------------------------------------------------

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor, y: Optional[torch.Tensor],
                      clip_fea: Optional[torch.Tensor]) -> None:
        cfg = self.config
        if x.ndim != 5:
            raise ValueError(f"WanDiT: x must be [B, C, F, H, W]; got shape {tuple(x.shape)}")
        channels = x.shape[1] + (0 if y is None else y.shape[1])
        if channels != cfg.in_dim:
            raise ValueError(
                f"WanDiT: x has {x.shape[1]} channels and y has "
                f"{0 if y is None else y.shape[1]}; this {cfg.model_type} model expects "
                f"in_dim={cfg.in_dim} in total (I2V models need y with {cfg.in_dim - cfg.out_dim} "
                f"condition channels)")
        if y is not None and (y.shape[0], *y.shape[2:]) != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"WanDiT: y shape {tuple(y.shape)} does not match x shape "
                             f"{tuple(x.shape)} outside the channel axis")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.text_dim:
            raise ValueError(f"WanDiT: context must be [B={x.shape[0]}, L, {cfg.text_dim}]; got "
                             f"{tuple(context.shape)}")
        if cfg.has_image_input:
            if clip_fea is None:
                raise ValueError(f"WanDiT: this {cfg.model_type} model has a CLIP branch and "
                                 f"needs clip_fea [B, N, {cfg.clip_dim}]")
            expected_n = cfg.flf_pos_len
            if (clip_fea.ndim != 3 or clip_fea.shape[0] != x.shape[0]
                    or clip_fea.shape[2] != cfg.clip_dim
                    or (expected_n is not None and clip_fea.shape[1] != expected_n)):
                raise ValueError(
                    f"WanDiT: clip_fea must be [B={x.shape[0]}, "
                    f"{expected_n if expected_n else 'N'}, {cfg.clip_dim}]; got "
                    f"{tuple(clip_fea.shape)}")
        elif clip_fea is not None:
            raise ValueError(f"WanDiT: clip_fea was given but this {cfg.model_type} model has no "
                             "CLIP branch (img_emb); Wan 2.2 models take the image through y only")

    def _model_input(self, x: torch.Tensor, context: torch.Tensor, y: Optional[torch.Tensor],
                     clip_fea: Optional[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The checked DiT input (``y`` joined along channels) and its token grid (F, H, W)."""
        self._check_inputs(x, context, y, clip_fea)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        return x, self._grid(x)

    def _grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        sizes = x.shape[2:]
        if any(s % p for s, p in zip(sizes, self.config.patch_size)):
            raise ValueError(f"WanDiT: latent size (F, H, W)={tuple(sizes)} is not divisible by "
                             f"patch_size={self.config.patch_size}")
        return tuple(s // p for s, p in zip(sizes, self.config.patch_size))  # type: ignore

    def _embed_time(self, t: torch.Tensor, batch: int,
                    grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``e`` [B, G, dim] for the head and ``e0`` [B, G, 6, dim] for the blocks, float32."""
        t = group_timesteps(t, batch, grid)
        sinusoid = sinusoidal_embedding(t, self.config.freq_dim)
        e = self.time_embedding(sinusoid)
        e0 = self.time_projection(e).unflatten(-1, (6, self.config.dim))
        return e, e0

    def _embed_text(self, context: torch.Tensor,
                    pad: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Zero-pad to ``text_len`` tokens (as the original does; not with ``pad=False``) and project
        to model width; with ``collapse_text_padding`` the padding is one row plus a key bias."""
        if not pad:
            return self.text_embedding(context), None
        if self.collapse_text_padding:
            context, key_bias = collapse_padding(context, self.config.text_len)
            return self.text_embedding(context), key_bias
        pad = self.config.text_len - context.shape[1]
        if pad > 0:
            context = F.pad(context, (0, 0, 0, pad))
        return self.text_embedding(context), None

    def _vace_streams(self, vace_context: VaceContext, vace_scale: VaceScale, x0: torch.Tensor,
                      grid: tuple[int, int, int], dtype: torch.dtype) -> list[VaceStream]:
        """Start one VACE stream per context from the embedded latent ``x0`` (float32)."""
        if vace_context is None:
            return []
        if not self.config.vace_layers:
            raise ValueError(f"WanDiT: vace_context was given but this {self.config.model_type} "
                             "model has no VACE blocks")
        contexts = [vace_context] if torch.is_tensor(vace_context) else list(vace_context)
        single = isinstance(vace_scale, (int, float)) or (torch.is_tensor(vace_scale)
                                                           and vace_scale.ndim == 0)
        scales = ([float(vace_scale)] * len(contexts) if single  # type: ignore[arg-type]
                  else [float(s) for s in vace_scale])  # type: ignore[union-attr]
        if len(scales) != len(contexts):
            raise ValueError(f"WanDiT: {len(contexts)} VACE contexts but {len(scales)} entries "
                             "in vace_scale")
        pt, ph, pw = self.config.patch_size
        frames, height, width = grid[0] * pt, grid[1] * ph, grid[2] * pw
        streams = []
        for n, c in enumerate(contexts):
            if (c.ndim != 5 or c.shape[:2] != (x0.shape[0], self.config.vace_in_dim)
                    or c.shape[2] > frames or c.shape[3:] != (height, width)):
                raise ValueError(
                    f"WanDiT: vace_context[{n}] must be [B={x0.shape[0]}, "
                    f"{self.config.vace_in_dim}, F'<={frames}, {height}, {width}]; got "
                    f"{tuple(c.shape)}")
            tokens = self.vace_patch_embedding(c.to(dtype)).flatten(2).transpose(1, 2)
            tokens = F.pad(tokens, (0, 0, 0, x0.shape[1] - tokens.shape[1]))  # missing frames: 0
            streams.append(VaceStream(self.vace_blocks[0].start(tokens, x0, dtype), scales[n]))
        return streams

    def _add_vace_hints(self, h: torch.Tensor, j: int, streams: list[VaceStream],
                        e0: torch.Tensor, context: torch.Tensor,
                        context_img: Optional[torch.Tensor],
                        rope: tuple[torch.Tensor, torch.Tensor],
                        dtype: torch.dtype, key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Advance every VACE stream through ``vace_blocks[j]`` and add its scaled hint.

        Running VACE block j right after main block ``vace_layers[j]`` equals the original
        "all hints first" order (the stream never reads the main ``h``) but keeps one state per
        context in memory instead of every hint.
        """
        block = self.vace_blocks[j]
        for stream in streams:
            stream.state = block(stream.state, e0, context, context_img, rope, dtype, key_bias)
            h = h + block.hint(stream.state, dtype) * stream.strength
        return h

    def _unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Tokens ``[B, L, pt*ph*pw*C]`` (C fastest) -> ``[B, C, F, H, W]`` float32."""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        out = out.reshape(out.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(out.shape[0], self.config.out_dim, f * pt, h * ph, w * pw).float()
