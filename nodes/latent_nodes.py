"""Empty video latent for text-to-video, sized for the VAE (and so for the model) it goes with."""
from __future__ import annotations

import torch

from . import comfy_adapter
from .sizes import fit_video_size
from .types import CONDITIONING_MENU, LATENT, VAE


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
                       "Frames, 4n+1 (81 = 5 s at 16 fps; TI2V-5B: 121 at 24 fps); other values are rounded down."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos generated at once."}),
        }}

    def create(self, vae, width: int, height: int, length: int, batch_size: int) -> dict:
        size = fit_video_size(width, height, length, vae, "empty video latent")
        shape = vae.latent_shape((batch_size, 3, size.length, size.height, size.width))
        samples = torch.zeros(shape, device=comfy_adapter.offload_device())
        return {"ui": {"text": [size.note]}, "result": ({"samples": samples}, size.width, size.height, size.length)}
