"""Stage ``loras``: the two WanNano style LoRAs, trained by the pack's LoRA trainer.

* ``outline``: the same captions, but the clips draw every shape hollow (outline only);
* ``night``: the same captions, but the background is dark blue whatever the caption asks.

Each style is a Wan 2.2 high/low pair (``train_lora_pair``) for the nano T2V experts, saved in
the ComfyUI LoRA format as ``wan_nano_<style>_lora_high_noise/_low_noise.safetensors``, the way
users share Wan 2.2 LoRAs. The captions carry no trigger word: a style LoRA changes the look of
every prompt, and at strength 0 it changes nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..nano.files import LORA_STYLES
from ..wan.dit import WanDiT
from ..wan.vae2_1 import WanVAE21
from .loop import LoopConfig
from .lora_network import LoraConfig
from .lora_trainer import LoraTrainConfig, TrainedLora, train_lora_pair
from .nano_data import clip_set
from .nano_dit import NANO_SHIFT
from .nano_latents import TextTable, encode_clip_set

CLIPS_PER_SCENE = 2
"""344 clips per style: each style is one simple change, seen on every training scene."""
STYLE_LOOP = LoopConfig(steps=800, lr=1e-3, warmup=50, weight_decay=0.0, checkpoint_every=100)
STYLE_LORA = LoraConfig(rank=16, alpha=16.0)
BATCH = 8


def style_config(seed: int, loop: Optional[LoopConfig] = None) -> LoraTrainConfig:
    return LoraTrainConfig(shift=NANO_SHIFT, lora=STYLE_LORA, loop=loop or STYLE_LOOP, batch=BATCH, seed=seed,
                           gradient_checkpointing=False)


def train_style(style: str, experts: dict[str, WanDiT], vae: WanVAE21, table: TextTable, work: Path, seed: int,
                loop: Optional[LoopConfig] = None, clips_per_scene: int = CLIPS_PER_SCENE,
                scenes=None, quiet: bool = False) -> dict[str, TrainedLora]:
    """Train (or resume) the ``style`` pair in ``work/lora_<style>/{high,low}``."""
    if style not in LORA_STYLES:
        raise ValueError(f"unknown nano style {style!r}; expected one of {LORA_STYLES}")
    clips = clip_set(seed, clips_per_scene, scenes, style=style)
    data = encode_clip_set(vae, clips, table, quiet=quiet)
    for model in experts.values():
        model.collapse_text_padding = True   # the same maths as the padded path, half the time
    with torch.random.fork_rng():
        return train_lora_pair(experts["high"], experts["low"], data, table, style_config(seed, loop),
                               work / f"lora_{style}", name=f"lora {style}", quiet=quiet)
