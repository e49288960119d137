"""Stage ``vae``: the WanNano VAE, a Wan 2.1 VAE of base width 8 (0.92 M parameters, 4x8x8).

Schedule: single frames first (cheap; the spatial layers learn shapes and colours) with the RMS
norms relaxed and then blended back in, then 9-frame clips (first chunk, a full chunk and a chunk
with full caches) so the temporal layers learn motion, all with the real norms.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..wan.vae2_1 import WanVAE21, WanVAE21Config
from .loop import LoopConfig, train
from .nano_data import vae_batch
from .vae_training import VAELossWeights, autoencoder_loss, relaxed_norms

NANO_VAE = WanVAE21Config(dim=8)
VAE_LOOP = LoopConfig(steps=6000, lr=1e-3, warmup=100, checkpoint_every=100)
VAE_BATCH = 8
RELAXED_UNTIL, REAL_FROM = 300, 800
"""Norms relaxed (alpha 0) before step 300, blended in linearly, real from step 800 on."""
CLIPS_FROM = 3000
"""Single frames before this step, 9-frame clips after."""


def norm_alpha(step: int) -> float:
    return min(1.0, max(0.0, (step - RELAXED_UNTIL) / (REAL_FROM - RELAXED_UNTIL)))


def train_vae(work: Path, seed: int, loop: LoopConfig | None = None, quiet: bool = False) -> WanVAE21:
    """Train (or resume) the nano VAE in ``work``; returns the trained model."""
    torch.manual_seed(seed)
    vae = WanVAE21(NANO_VAE)
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    weights = VAELossWeights()
    cfg = loop or VAE_LOOP

    def loss_fn(step: int):
        frames = 1 if step < CLIPS_FROM else 9
        with relaxed_norms(vae, norm_alpha(step)):
            loss, parts = autoencoder_loss(vae, vae_batch(data_gen, VAE_BATCH, frames=frames), weights, noise_gen)
        return loss, {**parts, "norm_alpha": norm_alpha(step)}

    train("vae", vae, vae.parameters(), loss_fn, cfg, work, {"data": data_gen, "noise": noise_gen}, quiet)
    return vae
