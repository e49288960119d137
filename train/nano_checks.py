"""How far apart a VAE puts the nano colours, and shapes, in its latent (a check for the ``vae`` stage).

The diffusion models learn in the latent, so two colours the encoder maps close together cost
them almost nothing to swap, even when the decoder still tells them apart (generation 1 put
green/blue 0.26 apart on black, red/yellow 0.19 on white, against a spread of 3-4 within one
colour, and its T2V models swapped exactly those). This reads frame 0 of random training scenes,
takes the latent cell that differs most from the frame's median (the object) and compares the
mean vector of each colour per background.

Shapes get the same question the other way round (:func:`shape_separation`): the same object drawn
as a circle, a square and a triangle at one place, against the circle moved 2 px and the circle in
its close colour (red/yellow, green/blue). Generation 3's VAE puts square and circle 11.4 apart,
triangle and circle 16.7, the moved circle 6.8 and the swapped colour 8.2: the latent tells shapes
apart better than the colours the T2V models get right, so it is not why they miss shapes.

``python -m wanflow.train.nano_checks VAE_FILE`` prints both tables.
"""
from __future__ import annotations

import argparse
import itertools
from typing import Callable, Sequence

import numpy as np
import torch

from ..nano.clips import random_placement, render_clip, render_frame, to_model_pixels
from ..nano.vocabulary import BACKGROUNDS, COLOURS, Scene, training_scenes

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


CLOSE_COLOUR = {"red": "yellow", "yellow": "red", "green": "blue", "blue": "green"}
"""Each colour's nearest in the latent (the pairs generation 1 swapped)."""


def shape_separation(encode: Encoder, places: int = 3, seed: int = 0) -> dict[str, float]:
    """Median whole-frame latent distance, over every colour, background and ``places`` random
    centres, between the circle and: the square and the triangle at the same place, the circle 2 px
    to the right, and the circle in its close colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for background in BACKGROUNDS:
        for colour in COLOURS:
            for _ in range(places):
                cx, cy = rng.uniform(20, 44, 2)
                variants = (("circle", colour, 0.0), ("square", colour, 0.0), ("triangle", colour, 0.0),
                            ("circle", colour, 2.0), ("circle", CLOSE_COLOUR[colour], 0.0))
                frames = [render_frame(Scene(paint, shape, "left", background), cx + dx, cy, 28.0)
                          for shape, paint, dx in variants]
                with torch.no_grad():
                    z = encode(torch.from_numpy(np.stack([to_model_pixels(f[None]) for f in frames])))[:, :, 0].float()
                rows.append([float((z[i] - z[0]).norm()) for i in range(1, 5)])
    medians = np.median(np.asarray(rows), axis=0)
    return dict(zip(("square", "triangle", "moved 2 px", "close colour"), (float(m) for m in medians)))


def main(argv: Sequence[str] | None = None) -> int:
    from ..model_loaders.vae_loader import load_vae
    from ..wan.latent_stats import WAN21

    parser = argparse.ArgumentParser(description="colour and shape separation in a nano VAE's latent")
    parser.add_argument("vae", help="a VAE file (e.g. nano/models/vae/wan2.1_nano_vae.safetensors)")
    args = parser.parse_args(argv)
    vae = load_vae(args.vae).model.float()
    for background, row in colour_separation(lambda px: WAN21.normalize(vae.encode(px))).items():
        print(background, {k: round(v, 2) for k, v in row.items()})
    distances = shape_separation(lambda px: WAN21.normalize(vae.encode(px)))
    print("distance from the circle:", {k: round(v, 2) for k, v in distances.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
