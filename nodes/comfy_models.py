"""Our models inside ComfyUI's model management (only used when running inside ComfyUI).

Each WanFlow model (a DiT expert, the VAE, the umT5 encoder, the CLIP tower) gets one
``comfy.model_patcher.ModelPatcher`` around the very same ``nn.Module``, created on first use and
kept on the module. Loading goes through ``comfy.model_management.load_models_gpu``, so:

- our models sit in ComfyUI's list of loaded models, and another node's ``free_memory`` (an
  upscaler, core VAE decode, a second workflow) unloads them like core models;
- ``--lowvram`` / ``--novram`` / ``--highvram`` / ``--cpu`` decide where they load, and a DiT that
  does not fit is loaded partially: its layers (``wan/ops.py``) cast the weights left in RAM to the
  compute device per call, exactly as core's layers do;
- nothing is moved back by us: the model stays loaded until ComfyUI needs the room.

The VAE, the text encoder and the CLIP tower load whole (``force_full_load``), as their layers do
not all take a weight from another device; the DiT experts, which hold nearly all the bytes, may
load partially.
"""
from __future__ import annotations

import sys
from typing import Literal

import torch
import torch.nn as nn

Kind = Literal["diffusion", "text_encoder", "vae", "clip_vision"]

# ComfyUI's own choice of devices for each kind of model (comfy.model_management functions).
DEVICE_FUNCTIONS: dict[str, tuple[str, str]] = {
    "diffusion": ("get_torch_device", "unet_offload_device"),
    "text_encoder": ("text_encoder_device", "text_encoder_offload_device"),
    "vae": ("vae_device", "vae_offload_device"),
    "clip_vision": ("text_encoder_device", "text_encoder_offload_device"),
}
PARTIAL_LOAD: set[str] = {"diffusion"}
PATCHER_ATTRIBUTE = "_wanflow_patcher"


def _model_management():
    return sys.modules["comfy.model_management"]


def patcher_for(module: nn.Module, kind: Kind):
    """The ModelPatcher that registers ``module`` with ComfyUI (made once, kept on the module).

    The patcher holds the module itself, not a copy: registering costs no memory."""
    patcher = module.__dict__.get(PATCHER_ATTRIBUTE)
    if patcher is None:
        mm = _model_management()
        model_patcher = sys.modules.get("comfy.model_patcher")
        if model_patcher is None:
            import comfy.model_patcher as model_patcher  # inside ComfyUI: already imported by core
        load, offload = (getattr(mm, name)() for name in DEVICE_FUNCTIONS[kind])
        patcher = model_patcher.ModelPatcher(module, load_device=load, offload_device=offload)
        module.__dict__[PATCHER_ATTRIBUTE] = patcher  # a plain attribute: not a submodule, not saved
    return patcher


def load(module: nn.Module, kind: Kind, whole: bool = False) -> torch.device:
    """Load ``module`` where ComfyUI wants it (unloading other models when short) and return the
    device it computes on; ``whole`` forbids a partial load."""
    patcher = patcher_for(module, kind)
    _model_management().load_models_gpu([patcher], force_full_load=whole or kind not in PARTIAL_LOAD)
    return patcher.load_device


def is_loaded(module: nn.Module) -> bool:
    """True while ComfyUI lists ``module`` among its loaded models."""
    patcher = module.__dict__.get(PATCHER_ATTRIBUTE)
    return patcher is not None and any(entry.model is patcher
                                       for entry in _model_management().current_loaded_models)


class ComfyPlacement:
    """Where a DiT expert lives during sampling, decided by ComfyUI (the sampler's ``Parking``).

    ``restore`` loads it through ComfyUI (which makes room, partially when it must, and applies a
    core MODEL's weight patches); ``park`` leaves it where it is: when the other expert needs the
    room, loading that one unloads this one, and otherwise both stay loaded for the next run, as
    core models do.
    """

    def __init__(self, patcher) -> None:
        self.patcher = patcher

    @classmethod
    def for_module(cls, module: nn.Module) -> "ComfyPlacement":
        return cls(patcher_for(module, "diffusion"))

    def restore(self, device: torch.device):
        _model_management().load_models_gpu([self.patcher])
        return self.patcher.model

    def park(self) -> None:
        return None
