"""Train a Wan 2.1-architecture VAE as an autoencoder, through its streaming (causal) path.

``WanVAE21.encode`` / ``decode`` are ``no_grad`` inference loops; training runs the same chunk
structure (1 pixel frame, then 4 at a time; one latent frame at a time to decode) with gradients.
The VAE is convolutional and causal, so it trains on short clips (1 + 4 frames) and small crops
and then runs on whole clips.

At this tiny width the VAE's per-pixel RMS norms make early learning very slow (a decoder alone
needs hundreds of steps to map a flat latent to a flat colour; without the norms, a few dozen). So
training starts with the norms *relaxed* to ``x * gamma`` and blends them back in
(:func:`relaxed_norms`); from then on, and in every saved model, they are the real ones.

The diffusion models sample in ``latent_stats.WAN21``-normalised space, so the latent is pulled
towards zero mean and unit variance *in that space* (a moment penalty per channel), and the
decoder learns on slightly noisy latents so that imperfect samples still decode cleanly.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ..wan.latent_stats import WAN21
from ..wan.vae2_1 import WanVAE21
from ..wan.vae_common import FeatureCache, RMSNorm


@dataclass(frozen=True)
class VAELossWeights:
    l1: float = 1.0
    mse: float = 1.0
    object_weight: float = 4.0
    """Extra weight of pixels that differ from the clip's background (its median colour)."""
    moments: float = 0.05
    latent_noise: float = 0.05
    """Std of the noise added to the normalised latent before decoding."""
    latent_scale: float = 1.0
    """Before decoding, each latent is moved away from (or towards) its background's latent by a
    factor drawn log-uniformly from ``[1 / latent_scale, latent_scale]``. Guided samples overshoot
    that way (1.1-1.2x), and a VAE trained without it put yellow where a red object's latent
    lands at 1.3x, so a colour flipped with the guidance. 1: off."""


class _RelaxedRMSNorm(RMSNorm):
    """``alpha * rms_norm(x) + (1 - alpha) * x * gamma``: the real norm at ``alpha = 1``."""

    alpha: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = super().forward(x)
        if self.alpha >= 1.0:
            return normalised
        return self.alpha * normalised + (1.0 - self.alpha) * x * self.gamma.to(x.dtype)


@contextmanager
def relaxed_norms(model: nn.Module, alpha: float) -> Iterator[None]:
    """Run ``model``'s VAE RMS norms relaxed by ``alpha`` (see the module docstring) inside the block."""
    norms = [m for m in model.modules() if type(m) is RMSNorm]
    for norm in norms:
        norm.__class__ = _RelaxedRMSNorm
        norm.alpha = alpha
    try:
        yield
    finally:
        for norm in norms:
            norm.__class__ = RMSNorm
            del norm.alpha


def encode_with_grad(vae: WanVAE21, pixels: torch.Tensor) -> torch.Tensor:
    """Raw mu ``[B, z, T, h, w]`` of pixels ``[B, 3, 4n+1, H, W]``, differentiable."""
    cache = FeatureCache()
    bounds = [(0, 1)] + [(s, s + 4) for s in range(1, pixels.shape[2], 4)]
    chunks = []
    for start, stop in bounds:
        cache.start_chunk()
        h = vae.encoder(pixels[:, :, start:stop], cache)
        chunks.append(vae.conv1(h)[:, :vae.z_dim])
    return torch.cat(chunks, dim=2)


def decode_with_grad(vae: WanVAE21, z: torch.Tensor) -> torch.Tensor:
    """Pixels ``[B, 3, 4(T-1)+1, H, W]`` (unclamped) of raw latents ``z``, differentiable."""
    cache = FeatureCache()
    chunks = []
    for t in range(z.shape[2]):
        cache.start_chunk()
        chunks.append(vae.decoder(vae.conv2(z[:, :, t:t + 1]), cache, first_chunk=(t == 0)))
    return torch.cat(chunks, dim=2)


def moment_penalty(normalised: torch.Tensor) -> torch.Tensor:
    """Squared distance of each channel's mean from 0 and variance from 1."""
    dims = [0] + list(range(2, normalised.ndim))
    mean = normalised.mean(dim=dims)
    var = normalised.var(dim=dims)
    return (mean.pow(2) + (var - 1).pow(2)).mean()


def pixel_weights(pixels: torch.Tensor, object_weight: float) -> torch.Tensor:
    """``[B, 1, F, H, W]`` loss weights, mean 1: ``1 + object_weight`` where a pixel differs from
    its clip's median colour, 1 elsewhere."""
    background = pixels.flatten(2).median(dim=2).values[:, :, None, None, None]
    differs = ((pixels - background).abs().sum(dim=1, keepdim=True) > 0.1).float()
    weight = 1 + object_weight * differs
    return weight / weight.mean(dim=(1, 2, 3, 4), keepdim=True)


def reconstruction_terms(recon: torch.Tensor, pixels: torch.Tensor,
                         weights: VAELossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Object-weighted L1 and MSE of a reconstruction."""
    weight = pixel_weights(pixels, weights.object_weight)
    return (weight * (recon - pixels).abs()).mean(), (weight * (recon - pixels).pow(2)).mean()


@torch.no_grad()
def background_latents(vae: WanVAE21, backgrounds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Normalised latents of plain clips shaped like ``like`` ``[B, 3, F, H, W]``, each filled
    with its row of ``backgrounds`` ``[B, 3]`` (model pixels, [-1, 1])."""
    plain = backgrounds[:, :, None, None, None].expand_as(like).contiguous()
    return WAN21.normalize(encode_with_grad(vae, plain))


def rescaled_about(normalised: torch.Tensor, anchor: torch.Tensor, latent_scale: float,
                   generator: torch.Generator) -> torch.Tensor:
    """``anchor + k * (normalised - anchor)``, one ``k`` per sample, log-uniform in
    ``[1 / latent_scale, latent_scale]`` (see :attr:`VAELossWeights.latent_scale`)."""
    spread = math.log(latent_scale)
    k = torch.exp((torch.rand(normalised.shape[0], generator=generator) * 2 - 1) * spread)
    return anchor + k.view(-1, *[1] * (normalised.ndim - 1)) * (normalised - anchor)


class BackgroundLatentCache:
    """:func:`background_latents` for a *frozen* encoder: each (colour, clip shape) is encoded once
    (a decoder-only pass on whole clips otherwise spends a third of each step on it)."""

    def __init__(self, vae: WanVAE21):
        self.vae = vae
        self._latents: dict[tuple, torch.Tensor] = {}

    def __call__(self, backgrounds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        rows = []
        for colour in backgrounds:
            key = (tuple(colour.tolist()), tuple(like.shape[1:]))
            if key not in self._latents:
                self._latents[key] = background_latents(self.vae, colour[None], like[:1])
            rows.append(self._latents[key])
        return torch.cat(rows)


def _decoder_input(vae: WanVAE21, normalised: torch.Tensor, pixels: torch.Tensor, weights: VAELossWeights,
                   generator: torch.Generator, backgrounds: Optional[torch.Tensor],
                   anchors: Optional[BackgroundLatentCache] = None) -> torch.Tensor:
    """The raw latent the decoder learns from: ``normalised``, rescaled about the background's
    latent when ``weights.latent_scale`` asks for it, plus ``weights.latent_noise``."""
    if weights.latent_scale != 1.0:
        if backgrounds is None:
            raise ValueError("VAE loss: latent_scale needs each clip's background colour (backgrounds=[B, 3])")
        anchor = anchors(backgrounds, pixels) if anchors is not None else background_latents(vae, backgrounds, pixels)
        normalised = rescaled_about(normalised, anchor, weights.latent_scale, generator)
    noise = torch.randn(normalised.shape, generator=generator) * weights.latent_noise
    return WAN21.denormalize(normalised + noise)


def autoencoder_loss(vae: WanVAE21, pixels: torch.Tensor, weights: VAELossWeights, generator: torch.Generator,
                     backgrounds: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction + latent-moment loss of one batch; returns the loss and its parts.
    ``backgrounds`` ``[B, 3]``: each clip's background colour (needed for ``latent_scale``)."""
    mu = encode_with_grad(vae, pixels)
    normalised = WAN21.normalize(mu)
    recon = decode_with_grad(vae, _decoder_input(vae, normalised, pixels, weights, generator, backgrounds))
    l1, mse = reconstruction_terms(recon, pixels, weights)
    moments = moment_penalty(normalised)
    loss = weights.l1 * l1 + weights.mse * mse + weights.moments * moments
    return loss, {"l1": l1.item(), "mse": mse.item(), "moments": moments.item()}


def decoder_loss(vae: WanVAE21, pixels: torch.Tensor, weights: VAELossWeights, generator: torch.Generator,
                 backgrounds: Optional[torch.Tensor] = None,
                 anchors: Optional[BackgroundLatentCache] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction loss through the decoder only: the encoder runs without gradients, so its
    latents (the ones the diffusion models learn) stay exactly as they are. ``anchors``: a cache of
    the background latents (optional; the encoder is frozen here, so it may)."""
    with torch.no_grad():
        normalised = WAN21.normalize(encode_with_grad(vae, pixels))
    recon = decode_with_grad(vae, _decoder_input(vae, normalised, pixels, weights, generator, backgrounds, anchors))
    l1, mse = reconstruction_terms(recon, pixels, weights)
    return weights.l1 * l1 + weights.mse * mse, {"l1": l1.item(), "mse": mse.item()}
