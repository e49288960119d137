"""Initial noise and the starting latent.

Noise is drawn on the CPU from the seed, the way ComfyUI's ``prepare_noise`` does it
(``torch.manual_seed(seed)`` then ``torch.randn(shape)`` in float32 on the CPU), so one seed gives
the same video on every device. We use a private generator seeded the same way: the values are
identical and the global RNG is left untouched.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def seeded_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise for ``seed`` on the CPU; bit-identical to ComfyUI for the same latent shape."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seeded_noise: seed must be a non-negative int, got {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")
    return noise.to(dtype)


def noised_start(noise: torch.Tensor, sigma: float, latent: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The starting sample: ``σ·noise + (1−σ)·latent``, or the noise itself without a latent.

    Text/image-to-video starts from the unscaled noise even when the first sigma is a hair
    below 1 (official UniPC grid: 0.9998), as the official code and diffusers do. With a latent
    and ``sigma`` below 1 (denoise < 1) this starts video-to-video from ``latent``, which must be
    in the sampler's normalised latent space.
    """
    if latent is None:
        return noise.clone()
    if latent.shape != noise.shape:
        raise ValueError(f"noised_start: latent shape {tuple(latent.shape)} does not match the "
                         f"noise shape {tuple(noise.shape)}")
    latent = latent.to(device=noise.device, dtype=noise.dtype)
    return sigma * noise + (1.0 - sigma) * latent
