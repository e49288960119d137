"""Stage ``vae``: the WanNano VAE, a Wan 2.1 VAE of base width 8 (0.92 M parameters, 4x8x8).

Schedule: single frames first (cheap; the spatial layers learn shapes and colours) with the RMS
norms relaxed and then blended back in, then 9-frame and finally whole 17-frame clips so the
temporal layers and the decoder's frame-to-frame caches learn, all with the real norms. A short
decoder-only pass on whole single frames then sharpens the first frame (I2V shows it next to the
input picture) without moving a single latent. Then :func:`fit_latent` folds a whitening of the
latent into the VAE's 1x1 convs (see :mod:`.latent_fit`), so the DiT learns colours and shapes in
directions as large as the others. Then :func:`harden_decoder` teaches the decoder to forgive
latents a little off, as the DiTs produce them, and last :func:`rescale_decoder` to forgive
latents too short or too long about their background.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..nano.clips import random_placement, render_clip, to_model_pixels
from ..nano.vocabulary import training_scenes
from ..wan.latent_stats import WAN21
from ..wan.vae2_1 import WanVAE21, WanVAE21Config
from .latent_fit import fold_into_vae, whitening
from .loop import LoopConfig, train
from .nano_data import vae_batch
from .vae_training import BackgroundLatentCache, VAELossWeights, autoencoder_loss, decoder_loss, relaxed_norms

NANO_VAE = WanVAE21Config(dim=8)
VAE_LOOP = LoopConfig(steps=7000, lr=1e-3, warmup=100, checkpoint_every=100)
VAE_WEIGHTS = VAELossWeights()
RELAXED_UNTIL, REAL_FROM = 300, 800
"""Norms relaxed (alpha 0) before step 300, blended in linearly, real from step 800 on."""
CLIP_PHASES = ((0, 1, 8), (3000, 9, 8), (4000, 17, 4))
"""(first step, frames, batch): single frames, then 9-frame clips, then whole 17-frame clips (the
decoder's caches feed back over time, so it must see as many chunks as it will decode)."""
DECODER_LOOP = LoopConfig(steps=400, lr=3e-4, warmup=20, weight_decay=0.0, checkpoint_every=100)
DECODER_WEIGHTS = VAELossWeights(latent_noise=0.02)
"""The decoder pass: whole 64x64 single frames, batch 8, less latent noise than before (about
+5 dB PSNR on first frames, and whole clips gain too)."""
HARDENED_WEIGHTS = VAELossWeights(latent_noise=0.12)
"""The decoder pass after the latent fit: noise about the size of the latent error the I2V
experts leave on a first frame (RMS 0.12-0.21), so a near-miss latent still decodes to the picture.
A yellow square on white decoded with a hole from a latent 0.014 MSE off (22 dB); after this pass
the same run reads 29.8 dB, and round trips gain 0.2-1.4 dB too."""
RESCALED_WEIGHTS = VAELossWeights(latent_noise=0.12, latent_scale=1.25)
"""The last two decoder passes: each latent moved about its background's latent by 0.8-1.25x before
decoding (see ``VAELossWeights.latent_scale``). Guided and VACE samples land 10-20 % short or long
of their object, and in the nano latent red, yellow and green lie along one line from the
background, so before these passes a red object could decode yellow at 1.25x: over 24 centred
clips the colour read right 14/21/24/24/20/14 times at 0.8/0.9/1/1.1/1.2/1.3x, after them
19/24/24/24/22/19 (round trip median 26.2 -> 27.1 dB)."""
RESCALED_LOOP = LoopConfig(steps=600, lr=3e-4, warmup=20, weight_decay=0.0, checkpoint_every=100)
RESCALED_CLIPS = (17, 4)
"""(frames, batch) of the first rescaling pass: whole clips, so every chunk of the decoder's cache learns it."""
FIT_CLIPS = 256
"""Whole clips encoded to measure the latent's covariance for :func:`fit_latent` (~20 s)."""


def clip_phase(step: int) -> tuple[int, int]:
    """Frames and batch size of ``step``."""
    frames, batch = CLIP_PHASES[0][1:]
    for start, phase_frames, phase_batch in CLIP_PHASES:
        if step >= start:
            frames, batch = phase_frames, phase_batch
    return frames, batch


def norm_alpha(step: int) -> float:
    return min(1.0, max(0.0, (step - RELAXED_UNTIL) / (REAL_FROM - RELAXED_UNTIL)))


def train_vae(work: Path, seed: int, loop: LoopConfig | None = None, quiet: bool = False) -> WanVAE21:
    """Train (or resume) the nano VAE in ``work``; returns the trained model."""
    torch.manual_seed(seed)
    vae = WanVAE21(NANO_VAE)
    data_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator().manual_seed(seed + 2)
    weights = VAE_WEIGHTS
    cfg = loop or VAE_LOOP

    def loss_fn(step: int):
        frames, batch = clip_phase(step)
        with relaxed_norms(vae, norm_alpha(step)):
            pixels, backgrounds = vae_batch(data_gen, batch, frames=frames)
            loss, parts = autoencoder_loss(vae, pixels, weights, noise_gen, backgrounds)
        return loss, {**parts, "norm_alpha": norm_alpha(step)}

    train("vae", vae, vae.parameters(), loss_fn, cfg, work, {"data": data_gen, "noise": noise_gen}, quiet)
    return vae


def polish_decoder(vae: WanVAE21, work: Path, seed: int, loop: LoopConfig | None = None,
                   quiet: bool = False) -> WanVAE21:
    """Train (or resume) the decoder-only pass in ``work``; the encoder is left untouched."""
    return _decoder_pass("vae decoder", vae, DECODER_WEIGHTS, work, seed, loop, quiet)


def harden_decoder(vae: WanVAE21, work: Path, seed: int, loop: LoopConfig | None = None,
                   quiet: bool = False) -> WanVAE21:
    """A decoder-only pass with :data:`HARDENED_WEIGHTS` (run after :func:`fit_latent`, so the
    noise is in the latent the DiTs see); like :func:`polish_decoder`, no latent moves."""
    return _decoder_pass("vae decoder hardened", vae, HARDENED_WEIGHTS, work, seed, loop, quiet)


def rescale_decoder(vae: WanVAE21, work: Path, seed: int, loop: LoopConfig | None = None,
                    quiet: bool = False) -> WanVAE21:
    """The last decoder-only passes, with :data:`RESCALED_WEIGHTS`: on whole clips (``work/clips``),
    then on whole single frames as before (``work/frames``: the clips alone cost the I2V first
    frames 0.3-1.8 dB; this gives back all but 0.3-0.7). No latent moves."""
    frames, batch = RESCALED_CLIPS
    _decoder_pass("vae decoder rescaled (clips)", vae, RESCALED_WEIGHTS, work / "clips", seed, loop or RESCALED_LOOP,
                  quiet, frames=frames, batch=batch)
    return _decoder_pass("vae decoder rescaled (frames)", vae, RESCALED_WEIGHTS, work / "frames", seed, loop, quiet)


def _decoder_pass(name: str, vae: WanVAE21, weights: VAELossWeights, work: Path, seed: int,
                  loop: LoopConfig | None, quiet: bool, frames: int = 1, batch: int = 8) -> WanVAE21:
    """Whole 64x64 frames (single ones by default, batch 8) through the decoder only (resumable
    in ``work``). The encoder is frozen, so each background's latent is encoded once."""
    data_gen = torch.Generator().manual_seed(seed + 3)
    noise_gen = torch.Generator().manual_seed(seed + 4)
    decoder = [*vae.conv2.parameters(), *vae.decoder.parameters()]
    anchors = BackgroundLatentCache(vae)

    def loss_fn(step: int):
        pixels, backgrounds = vae_batch(data_gen, batch, frames=frames, crop=64)
        return decoder_loss(vae, pixels, weights, noise_gen, backgrounds, anchors)

    train(name, vae, decoder, loss_fn, loop or DECODER_LOOP, work, {"data": data_gen, "noise": noise_gen}, quiet)
    return vae


@torch.no_grad()
def fit_latent(vae: WanVAE21, seed: int, clips: int = FIT_CLIPS, quiet: bool = False) -> WanVAE21:
    """Whiten the VAE's normalised latent over ``clips`` random training clips and fold the map
    into its 1x1 convs (decode of encode is unchanged)."""
    rng = np.random.default_rng(seed + 5)
    scenes = training_scenes()
    latents = []
    for start in tqdm(range(0, clips, 16), desc="fit latent", disable=quiet):
        batch = [scenes[i] for i in rng.choice(len(scenes), min(16, clips - start))]
        pixels = np.stack([to_model_pixels(render_clip(s, random_placement(s, rng))) for s in batch])
        latents.append(WAN21.normalize(vae.encode(torch.from_numpy(pixels))))
    fold_into_vae(vae, whitening(torch.cat(latents)))
    return vae
