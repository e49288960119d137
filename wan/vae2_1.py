"""Wan 2.1 video VAE: 3 RGB channels ↔ 16 latent channels, 4× in time, 8× in space.

Used by every 16-channel Wan model (2.1 T2V/I2V/FLF2V/VACE and the 2.2 A14B experts).
State-dict keys are the official ones of ``Wan2.1_VAE.pth`` / ComfyUI ``wan_2.1_vae.safetensors``:
``encoder.conv1``, ``encoder.downsamples.N``, ``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``,
top-level ``conv1`` / ``conv2``, and the mirrored ``decoder.*``.

Streaming encode/decode lives in :class:`~.vae_common.StreamingVideoVAE`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .vae_common import (StreamingEncoder, CausalConv3d, FeatureCache, Head, Resample, ResidualBlock, StreamingVideoVAE,
                         middle_blocks, run_blocks)


@dataclass(frozen=True)
class WanVAE21Config:
    """Shape of a Wan 2.1 VAE. The defaults are the released model (126.9 M parameters)."""

    dim: int = 96                          # channels of the first encoder level (and of the decoder base)
    z_dim: int = 16                        # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2                # residual blocks per encoder level (decoder: one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per encoder level transition
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"WanVAE21Config: temporal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} "
                             f"entries, got {len(self.temporal_downsample)}")
        if sum(self.temporal_downsample) != 2:
            raise ValueError("WanVAE21Config: exactly two levels must downsample time (4x), "
                             f"got temporal_downsample={self.temporal_downsample}")
        if any(self.dim * m % 2 for m in self.dim_mult):
            raise ValueError(f"WanVAE21Config: dim·mult must be even (upsampling halves channels), got dim={self.dim}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


WAN21_VAE = WanVAE21Config()
"""The released Wan 2.1 VAE (``Wan2.1_VAE.pth``)."""

TINY_WAN21_VAE = WanVAE21Config(dim=8)
"""Same structure with 8 base channels: for tests."""


class Encoder21(StreamingEncoder):
    """Pixels ``[B, 3, F, H, W]`` → ``[B, 2·z_dim, T, H/8, W/8]`` (mu and log-variance)."""

    def __init__(self, cfg: WanVAE21Config) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        last_level = len(cfg.dim_mult) - 1
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level != last_level:
                mode = "downsample3d" if cfg.temporal_downsample[level] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = middle_blocks(dims[-1], cfg.dropout)
        self.head = Head(dims[-1], cfg.z_dim * 2)


class Decoder21(nn.Module):
    """Latents ``[B, z_dim, 1, h, w]`` (one latent frame) → pixels ``[B, 3, 1 or 4, 8h, 8w]``."""

    def __init__(self, cfg: WanVAE21Config) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0], cfg.dropout)
        blocks: list[nn.Module] = []
        last_level = len(cfg.dim_mult) - 1
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the previous level's upsample conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                in_dim = out_dim
            if level != last_level:
                mode = "upsample3d" if temporal_upsample[level] else "upsample2d"
                blocks.append(Resample(out_dim, mode, upsample_out_dim=out_dim // 2))
        self.upsamples = nn.Sequential(*blocks)
        self.head = Head(dims[-1], 3)

    def forward(self, z: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        x = self.conv1.streamed(z, cache)
        x = run_blocks(self.middle, x, cache)
        x = run_blocks(self.upsamples, x, cache)
        return self.head(x, cache)


class WanVAE21(StreamingVideoVAE):
    """The Wan 2.1 VAE. ``encode`` returns raw mu, ``decode`` takes raw latents (see
    :mod:`.latent_stats` for the normalisation the diffusion model expects)."""

    def __init__(self, cfg: WanVAE21Config = WAN21_VAE) -> None:
        super().__init__()
        self.config = cfg
        self.z_dim = cfg.z_dim
        self.spatial_factor = cfg.spatial_factor
        self.encoder = Encoder21(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder21(cfg)
