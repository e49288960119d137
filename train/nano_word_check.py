"""Which caption words the nano T2V experts use (a check for the ``t2v`` stage).

Rendering twelve videos says *that* shapes come out wrong; this says *why* in seconds. Training
clips are scored with the flow-matching loss once with their true captions and once with one word
swapped for another of its kind (same noise, same σ). A word the model reads costs it when it is
wrong; a word it ignores costs nothing.

For generation 3 (32 clips, σ 0.95 to 0.1): a wrong direction costs 0.03-0.17, a wrong colour
0.04-0.08, a wrong background far more, but a wrong shape only 0.005-0.022, although the VAE puts
a square and a circle at the same place further apart in the latent (11.4) than two close colours
(8.2; ``python -m wanflow.train.nano_checks``). Reading the word is needed, not enough: two trial
experts that paid 2-3 times more for a wrong shape drew the same round squares (docs/nano_findings.md).

``python -m wanflow.train.nano_word_check [--clips N]`` prints one line per expert and σ.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from ..nano.vocabulary import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, Scene, training_scenes
from ..wan.dit import WanDiT
from .flow_matching import velocity_error
from .nano_latents import LatentSet, TextTable, scoring_clips
from .nano_shape_check import load_t2v_parts

SIGMAS = (0.95, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1)
WORDS = {"colour": tuple(COLOURS), "shape": SHAPES, "direction": tuple(DIRECTIONS),
         "background": tuple(BACKGROUNDS)}
"""Each caption slot and the words that may fill it."""


@dataclass(frozen=True)
class WordUse:
    """Mean flow-matching loss of one expert at one σ, and what one wrong word adds to it."""

    expert: str
    sigma: float
    loss: float                 # true captions
    cost: dict[str, float]      # slot -> loss with that slot's word swapped, minus ``loss``


def swapped_caption(scene: Scene, slot: str, rng: random.Random) -> str:
    """``scene``'s caption with the word in ``slot`` replaced by another of its kind."""
    word = rng.choice([w for w in WORDS[slot] if w != getattr(scene, slot)])
    return dataclasses.replace(scene, **{slot: word}).caption


def word_use(experts: dict[str, WanDiT], data: LatentSet, table: TextTable, scenes: Sequence[Scene],
             sigmas: Sequence[float] = SIGMAS, seed: int = 0) -> list[WordUse]:
    """Score the clips of ``data`` (one per scene) with true and one-word-wrong captions."""
    rng = random.Random(seed)
    contexts = {"true": table.contexts[[table.index(s.caption) for s in scenes]]}
    for slot in WORDS:
        contexts[slot] = table.contexts[[table.index(swapped_caption(s, slot, rng)) for s in scenes]]
    rows = []
    for name, model in experts.items():
        model.collapse_text_padding = True      # same maths, half the time (wan/text_padding.py)
        for sigma in sigmas:
            generator = torch.Generator().manual_seed(int(sigma * 1000) + seed)
            noise = torch.randn(data.latents.shape, generator=generator)
            batch_sigma = torch.full((len(scenes),), sigma)
            with torch.no_grad():
                losses = {k: float(velocity_error(model, data.latents, c, batch_sigma, noise).mean())
                          for k, c in contexts.items()}
            rows.append(WordUse(name, sigma, losses["true"], {s: losses[s] - losses["true"] for s in WORDS}))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="which caption words the nano T2V experts use")
    parser.add_argument("--clips", type=int, default=32, help="training clips to score (default 32)")
    args = parser.parse_args(argv)
    scenes = len(training_scenes())
    if not 1 <= args.clips <= scenes:
        parser.error(f"--clips: got {args.clips}, expected 1 to {scenes} (one clip per training scene)")
    experts, vae, table = load_t2v_parts()
    scenes, data = scoring_clips(vae, table, args.clips)
    for row in word_use(experts, data, table, scenes):
        costs = "  ".join(f"wrong {slot} {cost:+.4f}" for slot, cost in row.cost.items())
        print(f"{row.expert:4s} expert, sigma {row.sigma:.2f}: loss {row.loss:.4f}  {costs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
