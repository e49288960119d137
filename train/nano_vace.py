"""Stage ``vace``: the WanNano reference-to-video model (Wan 2.1 VACE layout, tiny width).

Start: the main blocks are the T2V low-noise expert; each VACE block is a copy of the main block
it feeds, with ``after_proj`` zeroed (so training starts from the T2V model's behaviour) and
``before_proj`` the identity. Training: every parameter, the whole noise range, with 1-3
reference pictures of the clip's object (sizes 24-32 px on grey or white) prepended in time as
the official VACE code and ``samplers.vace_conditioning`` do. Most captions (:data:`MISLABELLED`)
name a random colour and shape, so the model learns to take the object from the references, not
the words. Last, :func:`polish_vace_first_frame` weights the first video frame's error up.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..nano.clips import reference_picture
from ..nano.vocabulary import COLOURS, SHAPES, Scene, all_scenes
from ..samplers.vace_conditioning import vace_mask_channels
from ..wan.dit import WanDiT
from .flow_matching import SigmaRange, first_frame_weighted_loss, flow_matching_loss
from .loop import LoopConfig, train
from .nano_dit import CFG_DROPOUT, NANO_DIT, NANO_SHIFT
from .nano_latents import LatentSet, TextTable, normalised_encoder

NANO_VACE = dataclasses.replace(NANO_DIT, model_type="vace", vace_layers=(0, 2), vace_in_dim=96)
VACE_LOOP = LoopConfig(steps=2500, lr=3e-4, warmup=200, weight_decay=0.01)
BATCH = 16
MISLABELLED = 0.8
"""Share of captions whose colour and shape words are replaced by random ones, so the object has
to come from the references. At one half (generation 2) the model followed the words: the
reference's colour won in 2 of 4 test cases, its shape in 1."""
REFERENCE_SIZES = (24.0, 28.0, 32.0)
REFERENCE_BACKGROUNDS = ((128, 128, 128), (255, 255, 255))
MAX_REFERENCES = 3
FIRST_FRAME_LOOP = LoopConfig(steps=1000, lr=1e-4, warmup=50, weight_decay=0.01, checkpoint_every=200)
FIRST_FRAME_WEIGHT = 10.0
"""The last pass of the stage (``vace_first_frame``), from the file the main run wrote: the first
video frame's error weighted 10x more, as the I2V experts' first-frame pass does. Read per latent
frame, the main run's videos took the reference's colour least often in frame 0 (9 of 16 cases,
later frames 52 of 64) and flickered between colours over the clip; after 1 000 such steps
(3.4 min) 72 of the 80 chunks are right, and the R2V grid reads colour 32 of 32 (from 28)."""


def vace_from_t2v(t2v: WanDiT) -> WanDiT:
    model = WanDiT(NANO_VACE)
    state = dict(model.state_dict())
    state.update(t2v.state_dict())
    for j, layer in enumerate(NANO_VACE.vace_layers):
        for key, value in t2v.blocks[layer].state_dict().items():
            state[f"vace_blocks.{j}.{key}"] = value.clone()
        state[f"vace_blocks.{j}.after_proj.weight"] = torch.zeros_like(state[f"vace_blocks.{j}.after_proj.weight"])
        state[f"vace_blocks.{j}.after_proj.bias"] = torch.zeros_like(state[f"vace_blocks.{j}.after_proj.bias"])
    dim = NANO_VACE.dim
    state["vace_blocks.0.before_proj.weight"] = torch.eye(dim)
    state["vace_blocks.0.before_proj.bias"] = torch.zeros(dim)
    model.load_state_dict(state)
    return model


@torch.no_grad()
def reference_bank(vae) -> dict[str, torch.Tensor]:
    """Normalised latents ``[V, 16, 1, 8, 8]`` of every reference variant of each (colour, shape)."""
    encode = normalised_encoder(vae)
    bank = {}
    for scene in all_scenes():
        key = f"{scene.colour} {scene.shape}"
        if key in bank:
            continue
        pictures = [reference_picture(scene, size, bg) for size in REFERENCE_SIZES for bg in REFERENCE_BACKGROUNDS]
        pixels = torch.from_numpy(np.stack(pictures)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        bank[key] = encode(pixels.unsqueeze(2))
    return bank


@torch.no_grad()
def video_part(vae, frames: int, height: int, width: int) -> torch.Tensor:
    """The 96 channels of a reference-only VACE context for the video frames: the encoded
    mid-grey clip twice (inactive, reactive) and the all-ones mask, ``[1, 96, T, h, w]``."""
    latent = normalised_encoder(vae)(torch.zeros(1, 3, frames, height, width))
    mask = vace_mask_channels(torch.ones(1, 1, frames, height, width), latent.shape[2])
    return torch.cat([latent, latent, mask], dim=1)


def vace_context(references: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """``[B, 96, N + T, h, w]`` from reference latents ``[B, N, 16, 1, h, w]`` and :func:`video_part`,
    in the order of ``samplers.vace_conditioning.build_vace_context``."""
    batch, count = references.shape[:2]
    refs = [torch.cat([references[:, i], torch.zeros_like(references[:, i]),
                       torch.zeros(batch, 64, *references.shape[3:])], dim=1) for i in range(count)]
    return torch.cat([*refs, video.expand(batch, -1, -1, -1, -1)], dim=2)


def mislabelled_caption(caption: str, rng: random.Random) -> str:
    """``caption`` with its colour and shape words replaced by random ones (may draw the same)."""
    scene_words = caption.split()
    scene_words[1] = rng.choice(list(COLOURS))
    scene_words[2] = rng.choice(SHAPES)
    return " ".join(scene_words)


ReferenceBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]
"""``(x0 [B, 16, N + T, h, w], text contexts, VACE context, N)``: N reference frames, then the clip."""


def reference_batches(vae, data: LatentSet, text: TextTable,
                      generator: torch.Generator) -> Callable[[], ReferenceBatch]:
    """Training batches of :data:`BATCH` clips, each with 1-3 references of its object (as many for
    the whole batch) prepended in time, mislabelled or dropped captions as :data:`MISLABELLED` and
    ``CFG_DROPOUT`` say."""
    bank = reference_bank(vae)
    video = video_part(vae, 17, 64, 64)
    captions = {caption: i for i, caption in enumerate(text.captions)}

    def batch() -> ReferenceBatch:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        count = rng.randint(1, MAX_REFERENCES)
        index = torch.randint(0, len(data.latents), (BATCH,), generator=generator).tolist()
        scenes: list[Scene] = [data.scenes[i] for i in index]
        refs = torch.stack([torch.stack([bank[f"{s.colour} {s.shape}"][rng.randrange(len(REFERENCE_SIZES) * 2)]
                                         for _ in range(count)]) for s in scenes])
        x0 = torch.cat([refs[:, :, :, 0].transpose(1, 2), data.latents[index]], dim=2)
        prompts = [mislabelled_caption(s.caption, rng) if rng.random() < MISLABELLED else s.caption for s in scenes]
        context = text.contexts[[captions[p] for p in prompts]].clone()
        drop = torch.rand(BATCH, generator=generator) < CFG_DROPOUT
        context[drop] = text.uncond[0]
        return x0, context, vace_context(refs, video), count

    return batch


def train_vace(t2v_low: WanDiT, vae, work: Path, data: LatentSet, text: TextTable, seed: int,
               loop: Optional[LoopConfig] = None, quiet: bool = False) -> WanDiT:
    """The VACE model, started from the T2V low-noise expert (resumable in ``work / "vace"``)."""
    return _train_on_references("vace", vace_from_t2v(t2v_low), vae, work / "vace", data, text, seed,
                                loop or VACE_LOOP, quiet)


def polish_vace_first_frame(model: WanDiT, vae, work: Path, data: LatentSet, text: TextTable, seed: int,
                            loop: Optional[LoopConfig] = None, quiet: bool = False) -> WanDiT:
    """The VACE model trained further with the first video frame's error weighted
    :data:`FIRST_FRAME_WEIGHT` times more (resumable in ``work / "vace_first_frame"``)."""
    model.train().requires_grad_(True)
    return _train_on_references("vace first frame", model, vae, work / "vace_first_frame", data, text, seed,
                                loop or FIRST_FRAME_LOOP, quiet, first_frame_weight=FIRST_FRAME_WEIGHT)


def _train_on_references(name: str, model: WanDiT, vae, work: Path, data: LatentSet, text: TextTable, seed: int,
                         loop: LoopConfig, quiet: bool, first_frame_weight: float = 0.0) -> WanDiT:
    """Train every parameter of ``model`` on :func:`reference_batches` over the whole noise range;
    ``first_frame_weight`` > 0 weights the first video frame's error up."""
    model.collapse_text_padding = True      # same maths, half the step time (wan/text_padding.py)
    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    batch = reference_batches(vae, data, text, data_gen)
    sigmas = SigmaRange(NANO_SHIFT)

    def loss_fn(step: int):
        x0, context, vace, count = batch()
        sigma = sigmas.sample(BATCH, noise_gen)
        noise = torch.randn(x0.shape, generator=noise_gen)
        if first_frame_weight:
            return first_frame_weighted_loss(model, x0, context, sigma, noise, first_frame_weight, first=count,
                                             vace_context=vace), {}
        return flow_matching_loss(model, x0, context, sigma, noise, vace_context=vace), {}

    train(name, model, model.parameters(), loss_fn, loop, work, {"data": data_gen, "noise": noise_gen}, quiet)
    return model
