"""Empty video latent for text-to-video, sized for the VAE (and so for the model) it goes with."""
from __future__ import annotations

import logging

import torch

from . import comfy_adapter
from .types import CONDITIONING_MENU, LATENT, VAE

log = logging.getLogger("wanflow")

DIT_PATCH = 2  # the DiT packs 2x2 latent pixels per token, so sizes are multiples of 2 latent pixels


def round_size(value: int, multiple: int) -> int:
    """Nearest multiple (at least one multiple)."""
    return max(multiple, int(round(value / multiple)) * multiple)


class WanFlowEmptyVideoLatent:
    DESCRIPTION = ("Start latent for text-to-video: zeros of [batch, channels, (frames-1)/4+1, height/s, width/s] "
                   "for the given VAE. Sizes are rounded to what the model needs, and the node says so (on the node and in "
                   "the log).")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (LATENT, "INT", "INT", "INT")
    RETURN_NAMES = ("latent", "width", "height", "length")
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "vae": (VAE, {"tooltip": "Decides the latent layout: 2.1 VAE (16 channels, /8) or 2.2 VAE (48, /16)."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip":
                      "Video width in pixels; rounded to a multiple of 16 (2.1 VAE) or 32 (2.2 VAE)."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip":
                       "Video height in pixels; rounded like the width."}),
            "length": ("INT", {"default": 81, "min": 1, "max": 1601, "step": 4, "tooltip":
                       "Frames; must be 4n+1 (81 = 5 s at 16 fps; TI2V-5B: 121 at 24 fps)."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos generated at once."}),
        }}

    def create(self, vae, width: int, height: int, length: int, batch_size: int) -> dict:
        if (length - 1) % vae.temporal_factor:
            below = length - (length - 1) % vae.temporal_factor
            raise ValueError(f"empty video latent: length {length} is not 4n+1; use {below} or {below + 4}")
        multiple = vae.spatial_factor * DIT_PATCH
        new_width, new_height = round_size(width, multiple), round_size(height, multiple)
        text = f"{new_width}x{new_height}, {length} frames"
        if (new_width, new_height) != (width, height):
            text += f" ({width}x{height} rounded: the model needs multiples of {multiple})"
            log.warning("empty video latent: %dx%d rounded to %dx%d (the model needs multiples of %d)",
                        width, height, new_width, new_height, multiple)
        shape = vae.latent_shape((batch_size, 3, length, new_height, new_width))
        samples = torch.zeros(shape, device=comfy_adapter.offload_device())
        return {"ui": {"text": [text]}, "result": ({"samples": samples}, new_width, new_height, length)}
