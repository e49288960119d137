"""Train LoRA: train a style LoRA on a folder of captioned clips, inside the graph.

The node takes the graph's own loaded model(s), VAE and text encoder, so the LoRA is trained on
exactly what will sample with it. The work lives in ``train/lora_job.py``; this class only turns
widgets into options, shows progress, and reports the result. Pressing Cancel stops at the next
step; queueing the same node again resumes from its last checkpoint.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..distributed.fsdp import is_sharded
from ..train.clip_folder import ClipOptions
from ..train.lora_job import (BaseModel, Encoders, LoraJob, check_outputs, module_fingerprint, read_clips,
                              resolve_expert, train_and_save, train_config)
from ..train.loss_curve import loss_curve_picture, read_loss_log
from . import comfy_adapter
from .handles import ModelHandle, TextEncoderHandle
from .types import CATEGORY, IMAGE, MODEL, TEXT_ENCODER, VAE

EXPERTS = ("auto", "full", "high", "low")
CHECKPOINT_EVERY = 50
"""Steps between checkpoints: at most this much work is lost to Cancel."""


class WanFlowTrainLora:
    DESCRIPTION = ("Train a LoRA on a folder of clips (name.mp4 / name.webm / a folder of PNG frames, each with a "
                   "name.txt caption) and save it in models/loras. Connect model_low too for a Wan 2.2 high/low pair. "
                   "Cancel stops it; queue it again to resume. An existing LoRA file is never overwritten.")
    CATEGORY = f"{CATEGORY}/training"
    RETURN_TYPES = ("STRING", IMAGE)
    RETURN_NAMES = ("lora_name", "loss_curve")
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The model to adapt (the high-noise expert for a Wan 2.2 pair)."}),
                "vae": (VAE, {"tooltip": "The model's VAE: encodes the clips once (cached beside them)."}),
                "text_encoder": (TEXT_ENCODER, {"tooltip": "Encodes the captions once (cached)."}),
                "data_folder": ("STRING", {"default": "lora_clips", "tooltip":
                                "Folder of clips with .txt captions: absolute, or inside ComfyUI's input folder."}),
                "lora_name": ("STRING", {"default": "my_style", "tooltip":
                              "File name in models/loras (a pair adds _high_noise / _low_noise)."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 100000, "tooltip":
                          "Optimiser steps (per expert for a pair)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-5,
                                            "round": False, "tooltip": "AdamW learning rate (cosine decay)."}),
                "rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip":
                         "LoRA rank: larger learns more and makes a bigger file."}),
                "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                          "LoRA alpha; 0 = the rank (scale 1)."}),
                "expert": (list(EXPERTS), {"default": "auto", "tooltip":
                           "Noise range: auto = the loaded expert's own (full for single models)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip":
                          "Size bucket: clips are scaled and centre-cropped to width x height."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip":
                           "Size bucket height."}),
                "max_frames": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4, "tooltip":
                               "Longest clip kept (first frames); all clips share one 4k+1 length."}),
                "batch": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Clips per step."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip":
                         "Seed of the LoRA init, batches and noise: the same seed trains the same LoRA."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip":
                                           "Recompute each block in the backward pass: far less memory, ~30% slower."}),
            },
            "optional": {
                "model_low": (MODEL, {"tooltip": "Wan 2.2 low-noise expert: train a high/low pair."}),
            },
        }

    def train(self, model: ModelHandle, vae: torch.nn.Module, text_encoder: TextEncoderHandle, data_folder: str,
              lora_name: str, steps: int, learning_rate: float, rank: int, alpha: float, expert: str, width: int,
              height: int, max_frames: int, batch: int, seed: int, gradient_checkpointing: bool,
              model_low: Optional[ModelHandle] = None) -> dict:
        pair = model_low is not None
        for name, handle in (("model", model), ("model_low", model_low)):
            if handle is not None and is_sharded(handle.model):
                raise ValueError(f"Train LoRA: {name} is sharded across the ranks of `wanflow run --gpus N` "
                                 "(FSDP); training runs in one process: run this workflow without --gpus")
        job = make_job(model, data_folder, lora_name, steps, learning_rate, rank, alpha, expert, width, height,
                       max_frames, batch, seed, gradient_checkpointing, pair)
        check_outputs(job, pair)   # before any slow work
        with contextlib.ExitStack() as on_device:
            on_device.enter_context(comfy_adapter.model_on_compute_device(vae, "vae"))
            if not text_encoder.on_cpu:
                on_device.enter_context(comfy_adapter.model_on_compute_device(text_encoder.encoder, "text_encoder"))
            data = read_clips(job, Encoders(vae, text_encoder.encoder, text_encoder.tokenizer,
                                            module_fingerprint(vae) + module_fingerprint(text_encoder.encoder)))
        experts = [model, *([model_low] if pair else [])]
        with comfy_adapter.Progress(steps * len(experts), desc=f"train LoRA {lora_name}") as bar, \
                contextlib.ExitStack() as on_device:
            for handle in experts:  # weights waiting on disk are read back for the training
                on_device.enter_context(handle.weights_loaded(comfy_adapter.offload_device()))
                on_device.enter_context(comfy_adapter.model_on_compute_device(handle.model, "diffusion", whole=True))

            def on_step(which: str, step: int, loss: float) -> None:
                comfy_adapter.check_interrupted()
                bar.update(1)

            bases = [BaseModel(h.model, Path(h.path).name) for h in experts]
            written = train_and_save(job, data, bases[0], bases[1] if pair else None, on_step=on_step)
        names = ", ".join(path.name for path in written.values())
        curve = loss_picture(job, list(written))
        return {"ui": {"text": [f"saved {names}"]}, "result": (names, curve)}


def make_job(model: ModelHandle, data_folder: str, lora_name: str, steps: int, learning_rate: float, rank: int,
             alpha: float, expert: str, width: int, height: int, max_frames: int, batch: int, seed: int,
             gradient_checkpointing: bool, pair: bool) -> LoraJob:
    """The widgets as a job; every bad value fails here, naming the widget."""
    name = comfy_adapter.check_file_name(lora_name.strip(), "Train LoRA: lora_name")
    if not name or Path(name).name != name:
        raise ValueError(f"Train LoRA: lora_name must be a plain file name, got {lora_name!r}")
    folder = Path(data_folder).expanduser()
    if not folder.is_absolute():
        folder = Path(comfy_adapter.input_directory()) / folder
    if not folder.is_dir():
        raise FileNotFoundError(f"Train LoRA: data_folder {folder} does not exist (give an absolute folder or "
                                "one inside ComfyUI's input folder)")
    chosen = resolve_expert(expert, pair, model.variant.expert)
    cfg = train_config(shift=model.variant.defaults.shift, steps=steps, lr=learning_rate, rank=rank,
                       alpha=alpha or None, expert=chosen, batch=batch, seed=seed,
                       gradient_checkpointing=gradient_checkpointing, checkpoint_every=CHECKPOINT_EVERY)
    output = comfy_adapter.lora_output_folder() / (name if name.endswith(".safetensors") else f"{name}.safetensors")
    return LoraJob(folder, output, cfg, ClipOptions(width=width, height=height, max_frames=max_frames))


def loss_picture(job: LoraJob, experts: list[str]) -> torch.Tensor:
    """IMAGE ``[1, H, W, 3]`` of the run's loss curve(s)."""
    work = job.work_dir()
    logs = {e: read_loss_log((work / e if len(experts) > 1 else work) / "loss.csv") for e in experts}
    return torch.from_numpy(loss_curve_picture(logs).astype(np.float32) / 255.0)[None]
