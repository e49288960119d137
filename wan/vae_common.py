"""Building blocks shared by the Wan 2.1 and Wan 2.2 video VAEs, plus the streaming driver.

Both VAEs are *causal* in time: frame ``t`` of any layer only sees frames ``<= t``. That lets
them run chunk by chunk (encode: 1 pixel frame, then 4 at a time; decode: one latent frame at a
time) while every causal conv keeps the last ``CACHE_T`` frames of its input in a
:class:`FeatureCache`. Peak memory therefore depends on the frame size, never on the clip length.

Module and attribute names follow the official Wan code so our state-dict keys are the official
ones (``residual.0.gamma``, ``resample.1.weight``, ``time_conv.weight``, ...).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .attention import attention

CACHE_T = 2
"""Frames of input each causal conv remembers from the previous chunk (kernel 3 needs 2)."""

_SKIPPED = "skipped-first-chunk"
"""Cache marker: an upsample3d layer saw the first chunk and did not run its time conv."""


class FeatureCache:
    """Per-conv memory of the previous chunk's last frames, walked in call order.

    The model visits its causal convs in the same order on every chunk, so a flat list of slots
    and a cursor (reset by :meth:`start_chunk`) is enough to give each conv its own slot.
    """

    def __init__(self) -> None:
        self.slots: list[object] = []
        self.cursor = 0

    def start_chunk(self) -> None:
        self.cursor = 0

    def take(self) -> object:
        """The current conv's slot (None on the very first chunk)."""
        if self.cursor == len(self.slots):
            self.slots.append(None)
        return self.slots[self.cursor]

    def put(self, value: object) -> None:
        """Store the current conv's new slot value and move to the next conv."""
        self.slots[self.cursor] = value
        self.cursor += 1


def frames_to_keep(x: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
    """The last ``CACHE_T`` frames of ``x``, topped up from ``previous`` when ``x`` is shorter."""
    keep = x[:, :, -CACHE_T:].clone()
    if keep.shape[2] < CACHE_T and previous is not None:
        keep = torch.cat([previous[:, :, -1:].to(keep.device), keep], dim=2)
    return keep


def update_cache(previous: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A conv's cache after it has run on ``x``: what :func:`frames_to_keep` gives, written into
    ``previous`` itself once that holds a full ``CACHE_T`` frames of the same size.

    From the third latent frame on, every conv thus reuses one cache buffer. Cloning a new one per
    chunk instead leaves a long-lived block wherever the allocator put it among that chunk's
    temporaries; glibc's default malloc then cannot reuse the freed space for the next chunk's
    large temporaries and its heap (RSS) creeps up with the clip length.
    """
    full = (previous is not None and previous.shape[2] == CACHE_T and previous.dtype == x.dtype
            and previous.device == x.device and previous.shape[:2] == x.shape[:2]
            and previous.shape[3:] == x.shape[3:])
    if not full:
        return frames_to_keep(x, previous)
    n = x.shape[2]
    if n < CACHE_T:  # shift the cache left by n frames; CACHE_T = 2, so n = 1 and no overlap
        previous[:, :, :CACHE_T - n].copy_(previous[:, :, n:])
        previous[:, :, CACHE_T - n:].copy_(x)
    else:
        previous.copy_(x[:, :, -CACHE_T:])
    return previous


class CausalConv3d(ops.Conv3d):
    """3-D conv that pads time only at the front (2·p frames), so it never looks ahead.

    ``forward(x, cache)`` prepends the cached frames of the previous chunk instead of zeros.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        pt, ph, pw = self.padding
        self.causal_padding = (pw, pw, ph, ph, 2 * pt, 0)  # F.pad order: W, H, T
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, cache: Optional[torch.Tensor] = None) -> torch.Tensor:
        pad = list(self.causal_padding)
        if cache is not None and pad[4] > 0:
            x = torch.cat([cache.to(device=x.device, dtype=x.dtype), x], dim=2)
            pad[4] -= cache.shape[2]
        return super().forward(F.pad(x, pad))

    def streamed(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Run on one chunk, reading and updating this conv's slot in ``cache``."""
        previous = cache.take()
        out = self(x, previous)  # type: ignore[arg-type]
        cache.put(update_cache(previous, x))  # type: ignore[arg-type]
        return out


class RMSNorm(nn.Module):
    """``normalize(x over channels) · √C · γ`` (official ``RMS_norm``, channel-first, no bias).

    ``images=True`` gives ``γ`` the shape ``[C, 1, 1]`` (2-D maps), else ``[C, 1, 1, 1]``; the
    shape is part of the official checkpoint format.
    """

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for half-precision activations: the sum of squares overflows fp16.
        compute = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normalized = F.normalize(compute, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma.to(x.dtype)


class ResidualBlock(nn.Module):
    """RMS → SiLU → conv3³ → RMS → SiLU → dropout → conv3³, plus a 1³ shortcut when dims differ."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer.streamed(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = ops.Conv2d(dim, dim * 3, 1)
        self.proj = ops.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: Optional[FeatureCache] = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames))                     # [bt, 3c, h, w]
        # contiguous: SDPA's memory-efficient kernels need the last dim at stride 1; without the
        # copy they fall back to the math kernel, which holds the whole hw x hw matrix
        qkv = qkv.reshape(b * t, 3 * c, h * w).transpose(1, 2).contiguous()   # [bt, hw, 3c]
        q, k, v = (part.unsqueeze(2) for part in qkv.chunk(3, dim=-1))  # [bt, hw, 1, c]
        out = attention(q, k, v).squeeze(2).transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(out)
        return x + out.reshape(b, t, c, h, w).transpose(1, 2)


class Upsample2x(nn.Upsample):
    """Nearest-exact 2× spatial upsampling, computed in fp32 (bf16 nearest is unsupported on some
    backends) and returned in the input dtype."""

    def __init__(self) -> None:
        super().__init__(scale_factor=(2.0, 2.0), mode="nearest-exact")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of ``[B, C, T, H, W]``."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    """2× spatial up/down sampling, optionally with 2× in time (``upsample3d`` / ``downsample3d``).

    ``upsample_out_dim``: Wan 2.1 halves the channels in its upsample conv, Wan 2.2 keeps them.
    Temporal behaviour on the first chunk (kept from the official code, it defines the model):
    upsample3d does not double the first frame; downsample3d passes the first frame through.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: Optional[int] = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} is unknown; expected one of {self.MODES}")
        self.mode = mode
        if mode.startswith("upsample"):
            out_dim = dim if upsample_out_dim is None else upsample_out_dim
            self.resample = nn.Sequential(Upsample2x(), ops.Conv2d(dim, out_dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), ops.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """time_conv makes 2·C channels = two interleaved output frames per input frame."""
        previous = cache.take()
        if previous is None:  # first chunk: one frame stays one frame
            cache.put(_SKIPPED)
            return x
        real_previous = None if isinstance(previous, str) else previous
        y = self.time_conv(x, real_previous)
        # After the skipped first chunk a short x is topped up with a zero frame.
        cache.put(update_cache(real_previous if real_previous is not None else torch.zeros_like(x[:, :, :1]), x))
        b, c, t, h, w = x.shape
        return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Stride-2 time conv over [last frame of previous chunk, this chunk]."""
        previous = cache.take()
        if previous is None:  # first chunk (one frame): pass through, remember it
            cache.put(x.clone())
            return x
        y = self.time_conv(torch.cat([previous[:, :, -1:].to(x.device), x], dim=2))  # type: ignore[index]
        last = x[:, :, -1:]
        cache.put(previous.copy_(last) if previous.shape == last.shape else last.clone())  # type: ignore[union-attr]
        return y


def run_blocks(blocks: nn.Sequential, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """Run a Sequential of cache-aware blocks (ResidualBlock, AttentionBlock, Resample)."""
    for block in blocks:
        x = block(x, cache)
    return x


class Head(nn.Sequential):
    """RMS → SiLU → causal conv3³ (official ``head``: keys ``head.0.gamma``, ``head.2.*``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:  # type: ignore[override]
        return self[2].streamed(self[1](self[0](x)), cache)


def middle_blocks(dim: int, dropout: float) -> nn.Sequential:
    """Residual → attention → residual (official ``middle.0/1/2``)."""
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


class StreamingEncoder(nn.Module):
    """Encoder stage order shared by both VAEs: ``conv1 → downsamples → middle → head``.

    Subclasses build those four modules; one chunk of frames flows through them with the cache.
    """

    conv1: CausalConv3d
    downsamples: nn.Sequential
    middle: nn.Sequential
    head: Head

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        x = self.conv1.streamed(x, cache)
        x = run_blocks(self.downsamples, x, cache)
        x = run_blocks(self.middle, x, cache)
        return self.head(x, cache)


class StreamingVideoVAE(nn.Module):
    """Chunked encode / streaming decode shared by both Wan VAEs.

    Subclasses define ``encoder`` (``forward(x, cache)``), ``decoder``
    (``forward(z, cache, first_chunk)``), the top-level 1×1×1 convs ``conv1`` (after the encoder)
    and ``conv2`` (before the decoder), ``z_dim``, ``spatial_factor`` (pixels per latent pixel),
    and the pixel (un)packing hooks :meth:`pack_pixels` / :meth:`unpack_pixels`.

    Latents are *raw* (un-normalised) mu, as in ComfyUI's LATENT; pixels are in [-1, 1].
    """

    z_dim: int
    spatial_factor: int
    temporal_factor = 4
    encoder: nn.Module
    decoder: nn.Module
    conv1: CausalConv3d
    conv2: CausalConv3d

    def pack_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def unpack_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # --- shapes -----------------------------------------------------------------------------
    def latent_shape(self, pixel_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """``[B, 3, F, H, W]`` → ``[B, z_dim, (F-1)/4+1, H/s, W/s]``."""
        b, _, f, h, w = pixel_shape
        return (b, self.z_dim, (f - 1) // self.temporal_factor + 1, h // self.spatial_factor, w // self.spatial_factor)

    def pixel_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """``[B, z_dim, T, h, w]`` → ``[B, 3, 4(T-1)+1, h·s, w·s]``."""
        b, _, t, h, w = latent_shape
        return (b, 3, self.temporal_factor * (t - 1) + 1, h * self.spatial_factor, w * self.spatial_factor)

    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"VAE encode: expected pixels [B, 3, F, H, W], got shape {tuple(x.shape)}")
        f, h, w = x.shape[2:]
        if (f - 1) % self.temporal_factor != 0:
            raise ValueError(f"VAE encode: frame count must be 4n+1 (1, 5, 9, ...), got {f}")
        s = self.spatial_factor
        if h % s or w % s:
            raise ValueError(f"VAE encode: height and width must be multiples of {s}, got {h}x{w}")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"VAE decode: expected latents [B, {self.z_dim}, T, h, w], got shape {tuple(z.shape)}")

    # --- encode -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] → raw latent mu ``[B, z_dim, T, h, w]``.

        Runs the encoder on frame 0, then on groups of 4 frames, writing each latent chunk into a
        preallocated output.
        """
        self._check_pixels(x)
        out = x.new_empty(self.latent_shape(tuple(x.shape)))
        cache = FeatureCache()
        t_out = 0
        chunks = [(0, 1)] + [(s, s + self.temporal_factor) for s in range(1, x.shape[2], self.temporal_factor)]
        for start, stop in chunks:
            cache.start_chunk()
            h = self.encoder(self.pack_pixels(x[:, :, start:stop]), cache)
            mu = self.conv1(h)[:, : self.z_dim]
            out[:, :, t_out:t_out + mu.shape[2]] = mu
            t_out += mu.shape[2]
        return out

    # --- decode -----------------------------------------------------------------------------
    @torch.no_grad()
    def decode_chunks(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield pixel chunks ``[B, 3, n, H, W]`` (n = 1 for the first latent frame, then 4),
        clamped to [-1, 1]. Only one latent frame is in flight, so memory does not grow with T."""
        self._check_latent(z)
        cache = FeatureCache()
        for t in range(z.shape[2]):
            cache.start_chunk()
            x = self.decoder(self.conv2(z[:, :, t:t + 1]), cache, first_chunk=(t == 0))
            yield self.unpack_pixels(x).clamp_(-1.0, 1.0)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw latents ``[B, z_dim, T, h, w]`` → pixels ``[B, 3, 4(T-1)+1, H, W]`` in [-1, 1].

        ``out`` (optional) is a preallocated tensor of that shape (any dtype/device) to fill.
        """
        out = self._output_for(z, out)
        start = 0
        for chunk in self.decode_chunks(z):
            out[:, :, start:start + chunk.shape[2]] = chunk
            start += chunk.shape[2]
        return out

    def _output_for(self, z: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        self._check_latent(z)
        shape = self.pixel_shape(tuple(z.shape))
        if out is None:
            return z.new_empty(shape)
        if tuple(out.shape) != shape:
            raise ValueError(f"VAE decode: `out` has shape {tuple(out.shape)}, expected {shape}")
        return out

    @torch.no_grad()
    def decode_tiled(self, z: torch.Tensor, tile: int = 32, overlap: int = 8,
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode overlapping spatial tiles (``tile``/``overlap`` in latent pixels) and blend
        them with linear ramps, for frames too large to decode at once.

        Each tile streams over time like :meth:`decode` and is added into ``out`` with its weight
        divided by the sum of all tiles' weights at that pixel, so no second full-size buffer is
        needed. ``out`` may have another dtype or device (e.g. the CPU) than ``z``. Not
        bit-identical to :meth:`decode`: a tile's convs see zero padding at its borders.
        """
        if overlap < 0 or tile <= overlap:
            raise ValueError(f"decode_tiled: need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
        out = self._output_for(z, out)
        s = self.spatial_factor
        h, w = z.shape[3:]
        tiles = []
        weight_sum = torch.zeros(h * s, w * s)
        for top in tile_starts(h, tile, overlap):
            for left in tile_starts(w, tile, overlap):
                bottom, right = min(top + tile, h), min(left + tile, w)
                ramp = blend_weights(bottom - top, right - left, s, overlap, (top > 0, bottom < h, left > 0, right < w))
                rows, cols = slice(top * s, bottom * s), slice(left * s, right * s)
                weight_sum[rows, cols] += ramp
                tiles.append((slice(top, bottom), slice(left, right), rows, cols, ramp))
        out.zero_()
        for lat_rows, lat_cols, rows, cols, ramp in tiles:
            weight = (ramp / weight_sum[rows, cols]).to(out.device, out.dtype)
            start = 0
            for chunk in self.decode_chunks(z[:, :, :, lat_rows, lat_cols]):
                n = chunk.shape[2]
                out[:, :, start:start + n, rows, cols] += chunk.to(out.device, out.dtype) * weight
                start += n
        return out


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` with at least ``overlap`` overlap covering ``size``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def blend_weights(h: int, w: int, scale: int, overlap: int, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """Per-pixel tile weight ``[h·scale, w·scale]``: linear ramps over ``overlap`` latent pixels
    on the sides that touch another tile (``edges`` = top, bottom, left, right), 1 elsewhere."""

    def ramp(n: int, rise: bool, fall: bool) -> torch.Tensor:
        r = torch.ones(n)
        m = min(overlap * scale, n)
        if m > 0:
            up = (torch.arange(m, dtype=torch.float32) + 1) / (m + 1)
            if rise:
                r[:m] = torch.minimum(r[:m], up)
            if fall:
                r[n - m:] = torch.minimum(r[n - m:], up.flip(0))
        return r

    top, bottom, left, right = edges
    return ramp(h * scale, top, bottom)[:, None] * ramp(w * scale, left, right)[None, :]
