"""From which noise level the nano T2V pair keeps an object's shape (a check for the ``t2v`` stage).

The T2V videos get background, colour and motion right but draw soft objects whose fill ratios
sit too close together to tell the shape. This finds where the shape is lost: each evaluation
scene is drawn, encoded, noised to a partial-denoise start (as a video-to-video run with
``denoise < 1``, the sampler's own ``latent=`` path) and sampled back with the prompt, then read
with :func:`nano.measure.read_video`. ``denoise 0`` is the VAE round trip alone (the ceiling).
For generation 3: 12/12 from σ 0.25, 7/12 from σ 0.56, 4-5/12 from pure noise, so the shape is
lost in the low-noise expert's middle range, not in the VAE.

``python -m wanflow.train.nano_shape_check [DENOISE ...]`` prints one line per level.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..nano.clips import centred_placement, render_clip, to_model_pixels
from ..model_loaders.detect import NANO_DEFAULTS
from ..nano.files import MODELS_DIR, NANO
from ..nano.measure import read_video
from ..nano.vocabulary import EVAL_SCENES, Scene
from ..samplers.conditioning import WanConditioning
from ..samplers.moe import MoESampler
from ..samplers.noise import seeded_noise
from ..samplers.schedules import build_schedule
from ..wan.latent_stats import WAN21
from ..wan.dit import WanDiT
from ..wan.vae2_1 import WanVAE21
from .nano_latents import TextTable, normalised_encoder

T2V = NANO_DEFAULTS[("2.2", "t2v", "nano")]
"""The settings the nano T2V template runs with (steps, shift, guidance per expert)."""


@dataclass(frozen=True)
class ShapeScore:
    denoise: float
    start_sigma: float
    hits: int
    fills: dict[str, list[float]]


def decode_video(vae: WanVAE21, normalised: torch.Tensor) -> np.ndarray:
    """uint8 ``[F, H, W, 3]`` of one normalised latent ``[1, C, T, h, w]``."""
    with torch.no_grad():
        pixels = vae.decode(WAN21.denormalize(normalised))[0]
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def shape_score(sampler: MoESampler, vae: WanVAE21, text: TextTable, scenes: Sequence[Scene],
                denoise: float) -> ShapeScore:
    """Shape readings of ``scenes`` restarted from their own latents at ``denoise`` (0: no sampling)."""
    hits, fills = 0, {}
    encode = normalised_encoder(vae)
    for index, scene in enumerate(scenes):
        _, latent = scene_latent(encode, scene, index)
        if denoise > 0:
            latent = restart(sampler, text, scene, latent, denoise, seed=index)
        reading = read_video(decode_video(vae, latent))
        hits += reading.shape == scene.shape
        fills.setdefault(scene.shape, []).append(round(reading.fill_ratio, 2))
    return ShapeScore(denoise, start_sigma(denoise), hits, fills)


def scene_latent(encode: Callable[[torch.Tensor], torch.Tensor], scene: Scene,
                 index: int) -> tuple[np.ndarray, torch.Tensor]:
    """The drawn clip ``uint8 [F, H, W, 3]`` of evaluation scene number ``index`` and its
    normalised latent, on a centred path as the T2V clips are (seeded by ``index``, so every check
    draws the same clip)."""
    clip = render_clip(scene, centred_placement(scene, np.random.default_rng(index)))
    with torch.no_grad():
        return clip, encode(torch.from_numpy(to_model_pixels(clip))[None])


def start_sigma(denoise: float) -> float:
    """The σ a run with ``denoise`` starts from (0 for no sampling)."""
    return float(build_schedule("unipc", T2V.steps, T2V.shift, denoise).sigmas[0]) if denoise > 0 else 0.0


def restart(sampler: MoESampler, text: TextTable, scene: Scene, latent: torch.Tensor, denoise: float,
            seed: int) -> torch.Tensor:
    """``latent`` noised to the start of a ``denoise`` run and sampled back with the scene's
    caption at the template's settings (``denoise 1``: from pure noise, ``latent`` unused)."""
    schedule = build_schedule("unipc", T2V.steps, T2V.shift, denoise)
    cond = WanConditioning(context=text.contexts[text.index(scene.caption)][None],
                           negative_context=text.uncond[:1])
    return sampler.sample(seeded_noise(latent.shape, seed), schedule, cond,
                          latent=latent if denoise < 1 else None,
                          cfg_high=T2V.guide_scale, cfg_low=T2V.guide_scale_low_noise).latent


def load_t2v_parts(models: Path = MODELS_DIR) -> tuple[dict[str, WanDiT], WanVAE21, TextTable]:
    """The T2V experts (``high``, ``low``), VAE and caption table from a nano models folder."""
    from ..model_loaders.dit_loader import load_dit
    from ..model_loaders.text_encoder_loader import load_text_encoder
    from ..model_loaders.vae_loader import load_vae
    from .nano_latents import text_table

    experts = {name: load_dit(NANO.path(file, models)).model.float().eval()
               for name, file in (("high", NANO.t2v_high), ("low", NANO.t2v_low))}
    encoder = load_text_encoder(NANO.path(NANO.umt5, models))
    vae = load_vae(NANO.path(NANO.vae, models)).model.float().eval()
    return experts, vae, text_table(encoder.model, encoder.tokenizer)


def load_nano_t2v(models: Path) -> tuple[MoESampler, WanVAE21, TextTable]:
    """The T2V pair as a sampler, the VAE and the caption table from a nano models folder."""
    experts, vae, table = load_t2v_parts(models)
    return MoESampler(experts["high"], experts["low"]), vae, table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="from which noise level the nano T2V pair keeps shapes")
    parser.add_argument("denoise", nargs="*", type=float, default=[0.0, 0.1, 0.3, 0.6, 1.0],
                        help="partial-denoise levels in [0, 1] (0: the VAE round trip alone)")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="nano models folder")
    args = parser.parse_args(argv)
    sampler, vae, text = load_nano_t2v(args.models)
    for denoise in args.denoise:
        score = shape_score(sampler, vae, text, EVAL_SCENES, denoise)
        print(f"denoise {denoise:.2f} (from sigma {score.start_sigma:.2f}): shape {score.hits}/{len(EVAL_SCENES)} "
              f"fills {score.fills}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
