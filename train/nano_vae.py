"""Stage ``vae``: the WanNano VAE, a Wan 2.1 VAE of base width 8 (0.92 M parameters, 4x8x8)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..wan.vae2_1 import WanVAE21, WanVAE21Config
from .loop import LoopConfig, train
from .nano_data import vae_batch
from .vae_training import VAELossWeights, autoencoder_loss

NANO_VAE = WanVAE21Config(dim=8)
VAE_LOOP = LoopConfig(steps=3000, lr=3e-4, warmup=100, checkpoint_every=100)
VAE_BATCH = 8


def train_vae(work: Path, seed: int, steps: int | None = None, quiet: bool = False) -> WanVAE21:
    """Train (or resume) the nano VAE in ``work``; returns the trained model."""
    torch.manual_seed(seed)
    vae = WanVAE21(NANO_VAE)
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    weights = VAELossWeights()
    cfg = VAE_LOOP if steps is None else LoopConfig(**{**VAE_LOOP.__dict__, "steps": steps})

    def loss_fn(step: int):
        return autoencoder_loss(vae, vae_batch(data_gen, VAE_BATCH), weights, noise_gen)

    train("vae", vae, vae.parameters(), loss_fn, cfg, work, {"data": data_gen, "noise": noise_gen}, quiet)
    return vae
