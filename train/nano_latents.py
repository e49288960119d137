"""Encode a fixed clip set once with the nano VAE and text encoder, for the diffusion stages.

Everything the DiT stages read per step is cached here, computed through the same functions the
nodes use at inference (``WAN21.normalize`` after ``vae.encode``, ``encode_prompts`` padded to
512 tokens, ``encode_i2v_condition``), so training sees exactly what sampling will feed the model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from ..nano.vocabulary import FRAMES, Scene, all_scenes, training_scenes
from ..samplers.conditioning import encode_i2v_condition
from ..samplers.guidance import OFFICIAL_NEGATIVE_PROMPT
from ..wan.latent_stats import WAN21
from ..wan.tokenizer import UMT5Tokenizer
from ..wan.umt5 import UMT5Encoder, encode_prompts
from ..wan.vae2_1 import WanVAE21
from .nano_data import ClipSet, clip_set

UNCOND_PROMPTS = ("", OFFICIAL_NEGATIVE_PROMPT)
"""What classifier-free-guidance dropout replaces a caption with: the empty prompt and the
official negative prompt (the negative default of every template)."""


def normalised_encoder(vae: WanVAE21):
    """``pixels -> normalised latent`` as the sampler nodes encode."""
    return lambda pixels: WAN21.normalize(vae.encode(pixels))


@dataclass
class TextTable:
    """DiT contexts ``[N, 512, text_dim]`` for every caption of the world and the uncond prompts."""

    captions: list[str]
    contexts: torch.Tensor
    uncond: torch.Tensor  # [U, 512, text_dim]

    def index(self, caption: str) -> int:
        return self.captions.index(caption)


@torch.no_grad()
def text_table(encoder: UMT5Encoder, tokenizer: UMT5Tokenizer) -> TextTable:
    captions = [scene.caption for scene in all_scenes()]
    contexts = torch.cat([encode_prompts(encoder, tokenizer, captions[i:i + 32])
                          for i in range(0, len(captions), 32)])
    uncond = encode_prompts(encoder, tokenizer, list(UNCOND_PROMPTS))
    return TextTable(captions, contexts, uncond)


@dataclass
class LatentSet:
    """Normalised clip latents ``[N, 16, 5, 8, 8]`` with the caption index of each clip, and (for
    the I2V stage, see :func:`add_i2v_condition`) the I2V condition ``y`` ``[N, 20, 5, 8, 8]`` of
    its first frame."""

    latents: torch.Tensor
    caption_index: torch.Tensor
    i2v_y: Optional[torch.Tensor]
    scenes: list[Scene]

    def save(self, path: Path) -> None:
        torch.save({"latents": self.latents, "caption_index": self.caption_index, "i2v_y": self.i2v_y,
                    "scenes": [s.__dict__ for s in self.scenes]}, path)

    @classmethod
    def load(cls, path: Path) -> "LatentSet":
        state = torch.load(path, weights_only=True)
        return cls(state["latents"], state["caption_index"], state["i2v_y"],
                   [Scene(**s) for s in state["scenes"]])


@torch.no_grad()
def encode_clip_set(vae: WanVAE21, clips: ClipSet, table: TextTable, batch: int = 16,
                    quiet: bool = False) -> LatentSet:
    encode = normalised_encoder(vae)
    latents = [encode(clips.pixels(index)) for index in _batches(len(clips.scenes), batch, "encode clips", quiet)]
    caption_index = torch.tensor([table.index(s.caption) for s in clips.scenes])
    return LatentSet(torch.cat(latents), caption_index, None, clips.scenes)


def scoring_clips(vae: WanVAE21, table: TextTable, clips: int, seed: int = 0,
                  rng: Optional[random.Random] = None) -> tuple[list[Scene], LatentSet]:
    """``clips`` training scenes drawn with ``rng`` (default: seeded with ``seed``), one fresh clip
    each (a clip seed the training set does not use), encoded: what the stage checks score on."""
    scenes = (rng or random.Random(seed)).sample(training_scenes(), clips)
    return scenes, encode_clip_set(vae, clip_set(seed + 999, 1, scenes), table, quiet=True)


@torch.no_grad()
def add_i2v_condition(data: LatentSet, vae: WanVAE21, clips: ClipSet, batch: int = 16, quiet: bool = False) -> None:
    """Encode each clip's first frame as the I2V nodes do (``encode_i2v_condition``) into ``data.i2v_y``."""
    encode = normalised_encoder(vae)
    ys = [encode_i2v_condition(encode, clips.pixels(index)[:, :, 0], FRAMES)
          for index in _batches(len(clips.scenes), batch, "encode first frames", quiet)]
    data.i2v_y = torch.cat(ys)


def _batches(count: int, batch: int, desc: str, quiet: bool):
    for start in tqdm(range(0, count, batch), desc=desc, disable=quiet):
        yield np.arange(start, min(start + batch, count))
