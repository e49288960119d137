"""Wan 2.2 video VAE: 3 RGB channels ↔ 48 latent channels, 4× in time, 16× in space.

Used by TI2V-5B. Compared with 2.1 it first packs 2×2 pixels into channels (RGB → 12), uses
residual down/up blocks whose shortcut is a parameter-free space/time-to-channel average
(:class:`AvgDown3D`) or channel duplication (:class:`DupUp3D`), and has a wider decoder
(``decoder_dim`` 256) whose upsample convs keep their channels.

State-dict keys are those of ``Wan2.2_VAE.pth``: ``encoder.downsamples.B.downsamples.J.*``,
``decoder.upsamples.B.upsamples.J.*``, plus the 2.1-style ``conv1``/``middle``/``head``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae_common import (StreamingEncoder, CausalConv3d, FeatureCache, Head, Resample, ResidualBlock, StreamingVideoVAE,
                         middle_blocks, run_blocks)

PATCH = 2
"""Pixels per side packed into channels before the encoder (and unpacked after the decoder)."""


@dataclass(frozen=True)
class WanVAE22Config:
    """Shape of a Wan 2.2 VAE. The defaults are the released model (704.7 M parameters)."""

    dim: int = 160                         # encoder base channels
    decoder_dim: int = 256                 # decoder base channels
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2                # residual blocks per encoder level (decoder: one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"WanVAE22Config: temporal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} "
                             f"entries, got {len(self.temporal_downsample)}")
        if sum(self.temporal_downsample) != 2:
            raise ValueError("WanVAE22Config: exactly two levels must downsample time (4x), "
                             f"got temporal_downsample={self.temporal_downsample}")

    @property
    def spatial_factor(self) -> int:
        return PATCH * 2 ** (len(self.dim_mult) - 1)


WAN22_VAE = WanVAE22Config()
"""The released Wan 2.2 VAE (``Wan2.2_VAE.pth``)."""

TINY_WAN22_VAE = WanVAE22Config(dim=8, decoder_dim=12)
"""Same structure with 8 / 12 base channels: for tests."""


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, 2H, 2W]`` → ``[B, 4C, F, H, W]``; channel = c·4 + col·2 + row (official order)."""
    b, c, f, h, w = x.shape
    x = x.reshape(b, c, f, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * PATCH * PATCH, f, h // PATCH, w // PATCH)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, cp, f, h, w = x.shape
    x = x.reshape(b, cp // (PATCH * PATCH), PATCH, PATCH, f, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cp // (PATCH * PATCH), f, h * PATCH, w * PATCH)


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: fold ``ft×fs×fs`` neighbours into channels, then average groups
    of channels down to ``out_dim``. Time is front-padded with zeros to a multiple of ``ft``."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        folded = in_dim * factor_t * factor_s * factor_s
        if folded % out_dim:
            raise ValueError(f"AvgDown3D: {in_dim} channels × {factor_t * factor_s ** 2} is not divisible by {out_dim}")
        self.out_dim, self.group = out_dim, folded // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels, then unfold them into ``ft×fs×fs`` neighbours.
    On the first chunk only the last of the ``ft`` duplicated frames is kept (1 frame → 1 frame)."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        unfolded = out_dim * factor_t * factor_s * factor_s
        if unfolded % in_dim:
            raise ValueError(f"DupUp3D: {out_dim} channels × {factor_t * factor_s ** 2} is not divisible by {in_dim}")
        self.out_dim, self.repeats = out_dim, unfolded // in_dim

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).reshape(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownResidualBlock(nn.Module):
    """Residual blocks + optional Resample (``downsamples``), plus an :class:`AvgDown3D` shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, dropout: float,
                 temporal: bool, spatial: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if spatial else 1)
        blocks: list[nn.Module] = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        return run_blocks(self.downsamples, x, cache) + shortcut


class UpResidualBlock(nn.Module):
    """Residual blocks + optional Resample (``upsamples``), plus a :class:`DupUp3D` shortcut when
    upsampling."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, dropout: float,
                 temporal: bool, spatial: bool) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if spatial else None
        blocks: list[nn.Module] = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", upsample_out_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool) -> torch.Tensor:
        main = run_blocks(self.upsamples, x, cache)
        if self.avg_shortcut is None:
            return main
        return main + self.avg_shortcut(x, first_chunk)


class Encoder22(StreamingEncoder):
    """Packed pixels ``[B, 12, F, H/2, W/2]`` → ``[B, 2·z_dim, T, H/16, W/16]``."""

    def __init__(self, cfg: WanVAE22Config) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        last_level = len(cfg.dim_mult) - 1
        self.downsamples = nn.Sequential(*(
            DownResidualBlock(in_dim, out_dim, cfg.num_res_blocks, cfg.dropout,
                              temporal=level != last_level and cfg.temporal_downsample[level],
                              spatial=level != last_level)
            for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))))
        self.middle = middle_blocks(dims[-1], cfg.dropout)
        self.head = Head(dims[-1], cfg.z_dim * 2)


class Decoder22(nn.Module):
    """One latent frame ``[B, z_dim, 1, h, w]`` → packed pixels ``[B, 12, 1 or 4, 8h, 8w]``."""

    def __init__(self, cfg: WanVAE22Config) -> None:
        super().__init__()
        dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0], cfg.dropout)
        last_level = len(cfg.dim_mult) - 1
        self.upsamples = nn.Sequential(*(
            UpResidualBlock(in_dim, out_dim, cfg.num_res_blocks + 1, cfg.dropout,
                            temporal=level != last_level and temporal_upsample[level],
                            spatial=level != last_level)
            for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))))
        self.head = Head(dims[-1], 3 * PATCH * PATCH)

    def forward(self, z: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        x = self.conv1.streamed(z, cache)
        x = run_blocks(self.middle, x, cache)
        for block in self.upsamples:
            x = block(x, cache, first_chunk)
        return self.head(x, cache)


class WanVAE22(StreamingVideoVAE):
    """The Wan 2.2 VAE. ``encode`` returns raw mu, ``decode`` takes raw latents (see
    :mod:`.latent_stats`)."""

    def __init__(self, cfg: WanVAE22Config = WAN22_VAE) -> None:
        super().__init__()
        self.config = cfg
        self.z_dim = cfg.z_dim
        self.spatial_factor = cfg.spatial_factor
        self.encoder = Encoder22(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder22(cfg)

    def pack_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x)

    def unpack_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x)
