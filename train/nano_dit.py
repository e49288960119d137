"""Stages ``t2v`` and ``i2v``: the WanNano expert pairs (Wan 2.2 A14B-style, tiny width).

Recipe, the same for both tasks:

1. T2V: a *base* model learns the whole noise range; the *high-noise expert* is the base trained
   further on ``sigma >= boundary`` only, the *low-noise expert* on ``sigma < boundary`` only;
2. I2V: each expert starts from the T2V expert of its range, with its 20 new input channels
   zero-initialised (so it begins as the T2V model and learns to read ``y``), and trains on its
   range with the first-frame condition.

The boundary is the sampler's (``samplers.moe.DEFAULT_BOUNDARY``: 0.875 T2V, 0.900 I2V), sigmas
are spaced with the nano models' default shift, and 10% of captions are replaced by an
unconditional prompt so classifier-free guidance works;
3. T2V, last: each expert trains on with 40% of its captions dropped
   (:func:`sharpen_unconditional`), so the unconditional prediction that guidance pushes away from
   is a good one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..samplers.moe import DEFAULT_BOUNDARY
from ..wan.dit import WanDiT
from ..wan.dit_config import WanDiTConfig
from .flow_matching import SigmaRange, expert_sigmas, first_frame_weighted_loss, flow_matching_loss
from .loop import LoopConfig, train
from .nano_latents import LatentSet, TextTable
from .nano_text import TEXT_DIM

NANO_DIT = WanDiTConfig(dim=128, ffn_dim=512, num_heads=1, num_layers=4, text_dim=TEXT_DIM, model_type="t2v")
NANO_I2V = dataclasses.replace(NANO_DIT, in_dim=36, model_type="i2v")
NANO_SHIFT = 3.0
"""Default shift of the nano models (64x64, 80 tokens: far fewer than the 720p models' shift 12)."""
BATCH = 32
"""Clips per step. A step of 32 costs about 1.35x one of 16 on 2 cores (80 tokens leave the
threads idle at 16), so the larger batch sees far more clips per minute."""
CFG_DROPOUT = 0.1
UNCOND_LOOP = LoopConfig(steps=1500, lr=1e-4, warmup=50, weight_decay=0.01)
UNCOND_DROPOUT = 0.4
"""The T2V experts' last pass. With 10% dropout the unconditional prediction stayed poor (a red
triangle noised to sigma 0.6 came back blue), and guidance from it overshot: the candidate pair's
samples sat 1.10-1.18x as far from the background's latent as encoded clips, and in the nano
VAE's latent a red object scaled 1.3x is yellow. After this pass the pair samples at least as well
as the high expert alone again (the MoE test) and the long-video colour drift is back under its
bound."""

BASE_LOOP = LoopConfig(steps=7000, lr=6e-4, warmup=300, weight_decay=0.01)
EXPERT_LOOP = LoopConfig(steps=3000, lr=3e-4, warmup=100, weight_decay=0.01)
I2V_LOOP = dataclasses.replace(EXPERT_LOOP, steps=2000)
"""The I2V experts start from the T2V ones and learn to read the first frame (generation 2 took
3 000 steps of 16 clips; 2 000 of 32 see a third more)."""
FIRST_FRAME_LOOP = LoopConfig(steps=2000, lr=1e-4, warmup=50, weight_decay=0.01)
FIRST_FRAME_WEIGHT = 10.0
"""Then each I2V expert trains on with the first latent frame's error weighted up: its latent error
there was as small on white backgrounds as on black, but the decoded picture lost 7 dB more on
white (generation 3: 19.5-21.3 dB against 27.5-28.7)."""


@dataclass(frozen=True)
class Expert:
    name: str
    sigmas: SigmaRange


def experts(task: str) -> tuple[Expert, Expert]:
    boundary = DEFAULT_BOUNDARY[task]
    return tuple(Expert(name, expert_sigmas(name, NANO_SHIFT, boundary)) for name in ("high", "low"))


class Batches:
    """Random training batches from the cached latents, with CFG dropout on the captions."""

    def __init__(self, data: LatentSet, text: TextTable, generator: torch.Generator, with_y: bool,
                 dropout: float = CFG_DROPOUT) -> None:
        self.data, self.text, self.generator, self.with_y = data, text, generator, with_y
        self.dropout = dropout

    def __call__(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        g = self.generator
        index = torch.randint(0, len(self.data.latents), (batch,), generator=g)
        context = self.text.contexts[self.data.caption_index[index]].clone()
        drop = torch.rand(batch, generator=g) < self.dropout
        uncond = torch.randint(0, len(self.text.uncond), (batch,), generator=g)
        context[drop] = self.text.uncond[uncond[drop]]
        y = self.data.i2v_y[index] if self.with_y else None
        return self.data.latents[index], context, y


def fit(name: str, model: WanDiT, batches: Batches, sigmas: SigmaRange, loop: LoopConfig, work: Path,
        seed: int, quiet: bool) -> WanDiT:
    """Flow-matching training of ``model`` on ``sigmas`` (resumable in ``work``)."""
    model.collapse_text_padding = True      # same maths, half the step time (wan/text_padding.py)
    noise_gen = torch.Generator().manual_seed(seed)

    def loss_fn(step: int):
        x0, context, y = batches(BATCH)
        sigma = sigmas.sample(x0.shape[0], noise_gen)
        noise = torch.randn(x0.shape, generator=noise_gen)
        loss = flow_matching_loss(model, x0, context, sigma, noise, y=y)
        return loss, {}

    train(name, model, model.parameters(), loss_fn, loop, work,
          {"data": batches.generator, "noise": noise_gen}, quiet)
    return model


def t2v_base(work: Path, data: LatentSet, text: TextTable, seed: int, loop: Optional[LoopConfig] = None,
             quiet: bool = False) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(NANO_DIT)
    batches = Batches(data, text, torch.Generator().manual_seed(seed + 1), with_y=False)
    return fit("t2v base", model, batches, SigmaRange(NANO_SHIFT), loop or BASE_LOOP, work / "t2v_base", seed + 2,
               quiet)


def i2v_from_t2v(base: WanDiT) -> WanDiT:
    """The I2V model initialised from a T2V model: the condition channels start at zero weight."""
    model = WanDiT(NANO_I2V)
    state = dict(base.state_dict())
    weight = state["patch_embedding.weight"]
    extra = weight.new_zeros(weight.shape[0], NANO_I2V.in_dim - weight.shape[1], *weight.shape[2:])
    state["patch_embedding.weight"] = torch.cat([weight, extra], dim=1)
    model.load_state_dict(state)
    return model


def _expert_pair(task: str, start_from: Callable[[str], WanDiT], work: Path, data: LatentSet, text: TextTable,
                 seed: int, loop: Optional[LoopConfig], quiet: bool) -> dict[str, WanDiT]:
    out = {}
    for offset, expert in enumerate(experts(task)):
        batches = Batches(data, text, torch.Generator().manual_seed(seed + 10 * offset), with_y=task == "i2v")
        out[expert.name] = fit(f"{task} {expert.name}", start_from(expert.name), batches, expert.sigmas,
                               loop or EXPERT_LOOP,
                               work / f"{task}_{expert.name}", seed + 10 * offset + 1, quiet)
    return out


def train_t2v_experts(base: WanDiT, work: Path, data: LatentSet, text: TextTable, seed: int,
                      loop: Optional[LoopConfig] = None, quiet: bool = False) -> dict[str, WanDiT]:
    """The T2V high- and low-noise experts, each trained further from ``base``."""
    def start_from(name: str) -> WanDiT:
        model = WanDiT(NANO_DIT)
        model.load_state_dict(base.state_dict())
        return model

    return _expert_pair("t2v", start_from, work, data, text, seed, loop, quiet)


def sharpen_unconditional(pair: dict[str, WanDiT], work: Path, data: LatentSet, text: TextTable, seed: int,
                          loop: Optional[LoopConfig] = None, quiet: bool = False) -> dict[str, WanDiT]:
    """Each T2V expert of ``pair`` trained on its range with :data:`UNCOND_DROPOUT` of the
    captions dropped (resumable in ``work``); returns the pair."""
    for expert in experts("t2v"):
        data_seed = seed + ("low", "high").index(expert.name)
        batches = Batches(data, text, torch.Generator().manual_seed(data_seed), with_y=False, dropout=UNCOND_DROPOUT)
        model = pair[expert.name].train().requires_grad_(True)
        pair[expert.name] = fit(f"t2v {expert.name} unconditional", model, batches, expert.sigmas, loop or UNCOND_LOOP,
                                work / f"t2v_{expert.name}_uncond", data_seed + 1, quiet)
    return pair


def polish_first_frame(model: WanDiT, expert: Expert, work: Path, data: LatentSet, text: TextTable, seed: int,
                       loop: Optional[LoopConfig] = None, quiet: bool = False) -> WanDiT:
    """An I2V expert trained further with :func:`first_frame_weighted_loss` (resumable in ``work``)."""
    model.train().requires_grad_(True)
    model.collapse_text_padding = True
    batches = Batches(data, text, torch.Generator().manual_seed(seed), with_y=True)
    noise_gen = torch.Generator().manual_seed(seed + 1)

    def loss_fn(step: int):
        x0, context, y = batches(BATCH)
        sigma = expert.sigmas.sample(x0.shape[0], noise_gen)
        noise = torch.randn(x0.shape, generator=noise_gen)
        return first_frame_weighted_loss(model, x0, context, sigma, noise, FIRST_FRAME_WEIGHT, y=y), {}

    train(f"i2v {expert.name} first frame", model, model.parameters(), loss_fn, loop or FIRST_FRAME_LOOP,
          work / f"i2v_{expert.name}_first_frame", {"data": batches.generator, "noise": noise_gen}, quiet)
    return model


def train_i2v_experts(t2v: dict[str, WanDiT], work: Path, data: LatentSet, text: TextTable, seed: int,
                      loop: Optional[LoopConfig] = None, quiet: bool = False) -> dict[str, WanDiT]:
    """The I2V experts, each started from the T2V expert of the same noise range."""
    return _expert_pair("i2v", lambda name: i2v_from_t2v(t2v[name]), work, data, text, seed, loop or I2V_LOOP,
                        quiet)
