"""How far apart a VAE puts the nano colours in its latent (a check for the ``vae`` stage).

The diffusion models learn in the latent, so two colours the encoder maps close together cost
them almost nothing to swap, even when the decoder still tells them apart (generation 1 put
green/blue 0.26 apart on black, red/yellow 0.19 on white, against a spread of 3-4 within one
colour, and its T2V models swapped exactly those). This reads frame 0 of random training scenes,
takes the latent cell that differs most from the frame's median (the object) and compares the
mean vector of each colour per background.

``python -m wanflow.train.nano_checks VAE_FILE`` prints the table.
"""
from __future__ import annotations

import argparse
import itertools
from typing import Callable, Sequence

import numpy as np
import torch

from ..nano.clips import random_placement, render_clip, to_model_pixels
from ..nano.vocabulary import BACKGROUNDS, COLOURS, training_scenes

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""Pixels ``[B, 3, 1, H, W]`` in [-1, 1] -> normalised latent ``[B, C, 1, h, w]``."""


def object_vectors(encode: Encoder, count: int = 96, seed: int = 0) -> tuple[torch.Tensor, list]:
    """The latent vector at the object's cell (minus the frame's median) of ``count`` first frames."""
    rng = np.random.default_rng(seed)
    scenes = training_scenes()
    picked = [scenes[i] for i in rng.choice(len(scenes), count, replace=False)]
    pixels = torch.from_numpy(np.stack([to_model_pixels(render_clip(s, random_placement(s, rng))[:1]) for s in picked]))
    with torch.no_grad():
        z = encode(pixels)[:, :, 0].float()
    offsets = (z - z.flatten(2).median(-1).values[:, :, None, None]).flatten(2)
    cells = offsets.norm(dim=1).argmax(dim=1)
    return offsets[torch.arange(len(picked)), :, cells], picked


def colour_separation(encode: Encoder, count: int = 96, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per background: distance between every two colours' mean vectors, the closest pair
    (``min``) and the mean within-colour spread (``spread``)."""
    vectors, scenes = object_vectors(encode, count, seed)
    out = {}
    for background in BACKGROUNDS:
        groups = {c: vectors[[i for i, s in enumerate(scenes) if s.colour == c and s.background == background]]
                  for c in COLOURS}
        means = {c: g.mean(0) for c, g in groups.items() if len(g)}
        pairs = {f"{a}-{b}": float((means[a] - means[b]).norm()) for a, b in itertools.combinations(means, 2)}
        spread = float(np.mean([g.std(0).norm().item() for g in groups.values() if len(g) > 1]))
        out[background] = {**pairs, "min": min(pairs.values()), "spread": spread}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ..model_loaders.vae_loader import load_vae
    from ..wan.latent_stats import WAN21

    parser = argparse.ArgumentParser(description="colour separation in a nano VAE's latent")
    parser.add_argument("vae", help="a VAE file (e.g. nano/models/vae/wan2.1_nano_vae.safetensors)")
    args = parser.parse_args(argv)
    vae = load_vae(args.vae).model.float()
    for background, row in colour_separation(lambda px: WAN21.normalize(vae.encode(px))).items():
        print(background, {k: round(v, 2) for k, v in row.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
