"""Loader nodes: model files from the ComfyUI folders into WANFLOW_ handles.

All reading, format detection and dtype handling lives in model_loaders/; these nodes pick the
file from the right folder, check the name before the run, and report what was detected.
"""
from __future__ import annotations

import logging

from ..model_loaders.dit_loader import load_dit
from ..model_loaders.storage import STORAGE_DTYPES
from ..wan.attention import available_backends
from . import comfy_adapter
from .handles import ModelHandle
from .types import CATEGORY, MODEL

log = logging.getLogger("wanflow")

STORAGE_CHOICES = ["default"] + list(STORAGE_DTYPES)


class WanFlowModelLoader:
    DESCRIPTION = ("Load a Wan DiT (official, Comfy-Org, kijai or diffusers files; bf16/fp16/fp8/scaled fp8) and "
                   "detect its variant from the weights.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL, "STRING")
    RETURN_NAMES = ("model", "variant")
    OUTPUT_TOOLTIPS = ("The loaded model.", "What was detected, e.g. 'Wan 2.2 T2V-14B (high-noise expert)'.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model_name": (comfy_adapter.list_models("diffusion_models"), {"tooltip":
                           "DiT file in models/diffusion_models (or models/unet). For Wan 2.2 A14B load the "
                           "high-noise and the low-noise file with two loaders."}),
            "storage_dtype": (STORAGE_CHOICES, {"default": "default", "tooltip":
                              "Keep the file's dtypes (default) or convert while loading, e.g. fp8_e4m3fn to halve "
                              "memory of a bf16 file. Compute runs in bf16/fp16 either way."}),
            "attention": (available_backends(), {"default": "sdpa", "tooltip":
                          "Attention kernel used while sampling with this model."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str) -> bool:
        """Checked before the run: a safe name of a file that exists."""
        comfy_adapter.model_path("diffusion_models", model_name, "model loader: model_name")
        return True

    def load(self, model_name: str, storage_dtype: str, attention: str) -> dict:
        path = comfy_adapter.model_path("diffusion_models", model_name, "model loader: model_name")
        loaded = load_dit(path, None if storage_dtype == "default" else storage_dtype)
        loaded.model.to(comfy_adapter.offload_device())
        handle = ModelHandle(loaded.model, loaded.variant, attention, loaded.file_format, loaded.path)
        text = handle.describe()
        for note in loaded.variant.notes:
            log.warning("model loader: %s: %s", model_name, note)
        log.info("model loader: %s -> %s", model_name, text)
        return {"ui": {"text": [text]}, "result": (handle, text)}
