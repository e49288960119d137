"""Fit a trained VAE's latent to the space the diffusion model learns in, by folding a linear map
into the VAE's two 1x1x1 convs.

The real Wan VAE comes with per-channel mean and std that make its latent roughly unit-scaled for
the DiT. Our nano VAE must use the same fixed numbers (``latent_stats.WAN21``, which every loader
and ComfyUI apply to a 16-channel latent), and a tiny VAE trained from scratch does not spread its
latent like the real one: generation 1 put ~95% of the variance in 4 of 16 directions and told
green from blue, or red from yellow, only in directions with a hundredth of that variance. The
flow-matching loss weighs every direction alike, so the DiT barely paid for swapping those colours.

:func:`whitening` finds ``n' = G (n - mean)`` that gives the normalised latent ``n`` zero mean and
(regularised) unit covariance per channel; :func:`fold_into_vae` rewrites ``conv1``'s mu rows and
``conv2`` so the VAE's encode returns that latent and decode inverts it exactly. The decoder sees
the same features as before, so reconstructions do not change (up to float rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..wan.latent_stats import WAN21, LatentStats
from ..wan.vae2_1 import WanVAE21

FLOOR = 0.01
"""Eigenvalues are floored at this fraction of the mean one before whitening, so directions the
encoder barely uses (float noise) are amplified at most ~10x rather than without bound."""


@dataclass(frozen=True)
class LatentMap:
    """``n' = gain @ (n - mean)`` in the normalised latent space (channels ``C``)."""

    gain: torch.Tensor   # [C, C]
    mean: torch.Tensor   # [C]


def whitening(latents: torch.Tensor, floor: float = FLOOR) -> LatentMap:
    """The symmetric (ZCA) whitening of normalised latents ``[N, C, T, h, w]``, each latent pixel
    one sample, with eigenvalues floored at ``floor`` x their mean and the result scaled so the
    mean variance per channel is 1."""
    tokens = latents.double().movedim(1, -1).reshape(-1, latents.shape[1])
    mean = tokens.mean(0)
    values, vectors = torch.linalg.eigh(torch.cov(tokens.T))
    values = values.clamp_min(0)
    gains = (values + floor * values.mean()).rsqrt()
    gains = gains / ((values * gains ** 2).mean()).sqrt()
    return LatentMap(vectors @ torch.diag(gains) @ vectors.T, mean)


@torch.no_grad()
def fold_into_vae(vae: WanVAE21, latent_map: LatentMap, stats: LatentStats = WAN21) -> None:
    """Rewrite ``vae.conv1`` (mu half) and ``vae.conv2`` so that
    ``stats.normalize(vae.encode(x))`` becomes ``latent_map`` applied to what it was, and decode
    of the new latent equals decode of the old one.

    With raw mu = ``W1 h + b1``, ``S = diag(std)``, ``m`` the stats mean and ``T = S G S^-1``:
    new mu = ``T (mu - m - S mean) + m``; ``conv2`` gets ``W2 T^-1`` and a bias that restores
    ``W2 mu + b2``.
    """
    c = vae.z_dim
    std = torch.tensor(stats.std, dtype=torch.float64)
    m = torch.tensor(stats.mean, dtype=torch.float64)
    t = torch.diag(std) @ latent_map.gain @ torch.diag(1 / std)
    t_inv = torch.linalg.inv(t)
    shift = m + std * latent_map.mean

    w1 = vae.conv1.weight[:c, :, 0, 0, 0].double()
    b1 = vae.conv1.bias[:c].double()
    w2 = vae.conv2.weight[:, :, 0, 0, 0].double()
    b2 = vae.conv2.bias.double()

    vae.conv1.weight[:c, :, 0, 0, 0] = (t @ w1).to(vae.conv1.weight.dtype)
    vae.conv1.bias[:c] = (t @ (b1 - shift) + m).to(vae.conv1.bias.dtype)
    vae.conv2.weight[:, :, 0, 0, 0] = (w2 @ t_inv).to(vae.conv2.weight.dtype)
    vae.conv2.bias.copy_((w2 @ (shift - t_inv @ m) + b2).to(vae.conv2.bias.dtype))
