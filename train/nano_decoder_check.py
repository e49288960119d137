"""Whose fault is a broken picture: the VAE decoder's or the diffusion models'? (a T2V check)

The nano T2V videos show an object that comes apart in lobes and holes after the first frames.
A decoder that amplifies small latent errors would do that, and so would diffusion models that
draw a different object. This tells the two apart: each evaluation scene is drawn, encoded,
restarted from a partial-denoise start with its prompt (as :mod:`.nano_shape_check` does), and
decoded, next to the encoder's own latent with random noise *of the same size* added. If the
pair's latent decodes much worse than the noisy one, its error changes what is drawn, and no
decoder training can take it out. For generation 3 from σ 0.57: frame 0 at 21.2 dB against 28.4
(noise everywhere) and 26.7 (noise only where the pair's error is).

``python -m wanflow.train.nano_decoder_check [--denoise D] [--scenes N]`` prints one line per row.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..nano.files import MODELS_DIR
from ..nano.measure import psnr
from ..nano.vocabulary import EVAL_SCENES, Scene
from ..samplers.moe import MoESampler
from ..wan.vae2_1 import WanVAE21
from .nano_latents import TextTable, normalised_encoder
from .nano_shape_check import decode_video, load_nano_t2v, restart, scene_latent

ROWS = ("round trip", "pair", "noise", "noise where the error is")
"""The latents decoded: the encoder's; the pair's restart; the encoder's plus white noise as large
as the pair's error in each latent frame; the same with the noise shaped like the error's size
per latent cell."""
SPANS = ((0, 1), (1, 9), (9, 17))
"""Frame 0, frames 1-8, frames 9-16."""


@dataclass(frozen=True)
class DecoderCheck:
    denoise: float
    psnr: dict[str, tuple[float, ...]]
    """Mean PSNR (dB) against the drawn clips per row of :data:`ROWS`, one value per span."""
    channel_error: tuple[float, ...]
    """RMS of the pair's latent error per channel (normalised space)."""


def frame_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of ``[B, C, T, H, W]`` per latent frame, shaped to broadcast."""
    return x.pow(2).sum(dim=(1, 3, 4), keepdim=True).sqrt()


def noise_like(error: torch.Tensor, generator: torch.Generator, where: bool) -> torch.Tensor:
    """White noise with ``error``'s norm in every latent frame; ``where``: scaled per latent cell
    by the error's own size there first (same place, random direction)."""
    noise = torch.randn(error.shape, generator=generator)
    if where:
        noise = noise * error.pow(2).mean(dim=1, keepdim=True).sqrt()
    return noise / frame_norm(noise).clamp_min(1e-12) * frame_norm(error)


def span_psnr(video: np.ndarray, clip: np.ndarray) -> tuple[float, ...]:
    """PSNR of each span of :data:`SPANS` (mean over its frames; a perfect frame counts as 168 dB)."""
    per_frame = [psnr(v, c) for v, c in zip(video, clip)]
    return tuple(float(np.mean(per_frame[a:b])) for a, b in SPANS)


def decoder_check(sampler: MoESampler, vae: WanVAE21, text: TextTable, scenes: Sequence[Scene],
                  denoise: float, seed: int = 0) -> DecoderCheck:
    """The rows of :data:`ROWS` over ``scenes`` restarted at ``denoise``."""
    encode = normalised_encoder(vae)
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list[tuple[float, ...]]] = {row: [] for row in ROWS}
    errors = []
    for index, scene in enumerate(scenes):
        clip, latent = scene_latent(encode, scene, index)
        error = restart(sampler, text, scene, latent, denoise, seed=index) - latent
        errors.append(error)
        latents = (latent, latent + error, latent + noise_like(error, generator, where=False),
                   latent + noise_like(error, generator, where=True))
        for row, z in zip(ROWS, latents):
            rows[row].append(span_psnr(decode_video(vae, z), clip))
    channel = torch.cat(errors).pow(2).mean(dim=(0, 2, 3, 4)).sqrt()
    return DecoderCheck(denoise, {row: tuple(np.mean(v, axis=0).round(2)) for row, v in rows.items()},
                        tuple(channel.round(decimals=3).tolist()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="is a broken nano T2V picture the decoder's fault or the DiTs'?")
    parser.add_argument("--denoise", type=float, default=0.3, help="partial-denoise level (0.3: from σ 0.57)")
    parser.add_argument("--scenes", type=int, default=8, help="how many evaluation scenes (1-12)")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="nano models folder")
    args = parser.parse_args(argv)
    if not 0 < args.denoise < 1 or not 1 <= args.scenes <= len(EVAL_SCENES):
        parser.error(f"--denoise must be in (0, 1) and --scenes in 1-{len(EVAL_SCENES)}, "
                     f"got {args.denoise} and {args.scenes}")
    sampler, vae, text = load_nano_t2v(args.models)
    check = decoder_check(sampler, vae, text, EVAL_SCENES[:args.scenes], args.denoise)
    print("PSNR (dB) against the drawn clips: frame 0 / frames 1-8 / frames 9-16")
    for row, values in check.psnr.items():
        print(f"  {row:24s} " + " / ".join(f"{v:.1f}" for v in values))
    print("pair's latent error per channel (RMS):", " ".join(f"{v:.2f}" for v in check.channel_error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
