"""Batches of WanNano clips for training, deterministic from a torch.Generator.

The VAE sees short random crops of every look the models will produce (plain and outlined
shapes; white, black, night-blue and grey backgrounds), so the style LoRAs and the R2V
reference pictures stay inside what it can reconstruct. The diffusion models train on a fixed,
cached set of whole clips (drawing clips in numpy would cost as much as a training step).
Held-out combinations are never drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..nano.clips import (Placement, centre_at, centred_placement, random_placement, render_clip, render_frame,
                          to_model_pixels)
from ..nano.vocabulary import BACKGROUNDS, FRAMES, NIGHT_BACKGROUND, Scene, training_scenes

VAE_BACKGROUNDS = (*BACKGROUNDS.values(), NIGHT_BACKGROUND, (128, 128, 128))


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


class VAEBatch(NamedTuple):
    """A VAE training batch: ``pixels`` ``[B, 3, F, H, W]`` and each clip's plain background
    colour ``backgrounds`` ``[B, 3]``, both in model pixels ([-1, 1])."""

    pixels: torch.Tensor
    backgrounds: torch.Tensor


def vae_batch(generator: torch.Generator, batch: int, frames: int = 9, crop: int = 32) -> VAEBatch:
    """Pixels ``[B, 3, frames, crop, crop]`` in [-1, 1] and each clip's background colour: random
    scenes and looks; half of the crops around the object (most of a frame is background, learnt
    early), half anywhere (so empty stretches of background, away from any object, decode clean too)."""
    rng = _numpy_rng(generator)
    scenes = training_scenes()
    clips, backgrounds = [], []
    for _ in range(batch):
        scene = scenes[rng.integers(len(scenes))]
        start = random_placement(scene, rng)
        first = int(rng.integers(0, FRAMES - frames + 1))
        style = ("plain", "plain", "outline")[rng.integers(3)]
        bg = VAE_BACKGROUNDS[rng.integers(len(VAE_BACKGROUNDS))]
        clip = np.stack([render_frame(scene, *centre_at(scene, start, first + f), start.size, style, background=bg)
                         for f in range(frames)])
        cx, cy = centre_at(scene, start, first + frames // 2)
        if rng.random() < 0.5:
            top, left = (int(np.clip(c - crop / 2 + rng.uniform(-crop / 3, crop / 3), 0, clip.shape[1] - crop))
                         for c in (cy, cx))
        else:
            top, left = (int(v) for v in rng.integers(0, clip.shape[1] - crop + 1, size=2))
        clips.append(to_model_pixels(clip[:, top:top + crop, left:left + crop]))
        backgrounds.append(bg)
    return VAEBatch(torch.from_numpy(np.stack(clips)), torch.tensor(backgrounds, dtype=torch.float32) / 127.5 - 1.0)


@dataclass
class ClipSet:
    """A fixed set of whole clips ``uint8 [N, F, H, W, 3]`` with the scene of each."""

    clips: np.ndarray
    scenes: list[Scene]

    def pixels(self, index) -> torch.Tensor:
        """Model pixels ``[len(index), 3, F, H, W]`` in [-1, 1]."""
        return torch.from_numpy(np.stack([to_model_pixels(self.clips[i]) for i in np.atleast_1d(index)]))


Placer = Callable[[Scene, np.random.Generator], Placement]


def clip_set(seed: int, per_scene: int, scenes: list[Scene] | None = None, style: str = "plain",
             placement: Placer = centred_placement) -> ClipSet:
    """``per_scene`` clips of each scene (training scenes by default). Paths are centred (what the
    T2V, R2V and LoRA models learn); the I2V stage passes ``random_placement``."""
    rng = np.random.default_rng(seed)
    scenes = training_scenes() if scenes is None else scenes
    listed = [scene for scene in scenes for _ in range(per_scene)]
    clips = np.stack([render_clip(scene, placement(scene, rng), style) for scene in listed])
    return ClipSet(clips, listed)
