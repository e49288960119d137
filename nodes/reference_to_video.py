"""Reference-to-video (VACE): 1-4 reference images, optional control video and mask, a strength.

The VACE context is built by samplers/vace_conditioning.py (references letterboxed on white and
prepended in time, as in the official code); the sampler trims the reference frames before the
latent leaves it, so VAE Decode sees only the video frames.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..samplers.conditioning import WanConditioning
from ..samplers.vace_conditioning import build_vace_context
from . import comfy_adapter
from .image_to_video import latent_encoder
from .sizes import fit_video_size
from .types import CONDITIONING, CONDITIONING_MENU, IMAGE, LATENT, MASK, VAE
from .vae_nodes import image_pictures

MAX_REFERENCES = 4


def reference_frames(images: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """Each frame of each connected IMAGE as ``[1, 3, h, w]`` in [-1, 1]."""
    frames = image_pictures(images)
    if len(frames) > MAX_REFERENCES:
        raise ValueError(f"reference-to-video: {len(frames)} reference frames given; VACE takes at most {MAX_REFERENCES}")
    return frames


class WanFlowReferenceToVideo:
    DESCRIPTION = ("VACE conditioning: 1-4 reference images (letterboxed on white, as in the official code), an "
                   "optional control video and mask, and a strength. Use with a Wan VACE model.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CONDITIONING, LATENT)
    RETURN_NAMES = ("conditioning", "latent")
    FUNCTION = "build"
    CONDITIONING_KIND = "reference"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        optional = {f"reference_{i}": (IMAGE, {"tooltip": f"Reference image {i} (optional)."})
                    for i in range(2, MAX_REFERENCES + 1)}
        optional.update({
            "control_video": (IMAGE, {"tooltip": "Control frames (e.g. depth or pose), exactly `length` frames at "
                                                 "width x height. Default: none (mid-grey)."}),
            "control_mask": (MASK, {"tooltip": "Where to generate (1) or keep the control video (0), one mask per "
                                               "frame. Default: generate everything."}),
        })
        return {
            "required": {
                "conditioning": (CONDITIONING, {"tooltip": "Text conditioning from WanFlow Text Encode."}),
                "vae": (VAE, {"tooltip": "The Wan 2.1 VAE (VACE models use it)."}),
                "reference_1": (IMAGE, {"tooltip": "Reference picture of a subject or object to put in the video."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip":
                          "Video width, a multiple of 16 (official VACE: 832x480 or 1280x720)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip":
                           "Video height, a multiple of 16."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1601, "step": 4, "tooltip": "Frames, 4n+1; other values are rounded down."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05, "tooltip":
                             "Scale of the VACE hints (official context_scale: 1.0)."}),
            },
            "optional": optional,
        }

    def build(self, conditioning: WanConditioning, vae, reference_1: torch.Tensor, width: int, height: int,
              length: int, strength: float, reference_2: Optional[torch.Tensor] = None,
              reference_3: Optional[torch.Tensor] = None, reference_4: Optional[torch.Tensor] = None,
              control_video: Optional[torch.Tensor] = None, control_mask: Optional[torch.Tensor] = None) -> dict:
        what = "reference-to-video"
        if vae.z_dim != 16:
            raise ValueError(f"{what}: VACE models use the Wan 2.1 VAE (16 channels); this VAE has {vae.z_dim}")
        size = fit_video_size(width, height, length, vae, what)
        width, height, length = size.width, size.height, size.length
        references = reference_frames([reference_1, reference_2, reference_3, reference_4])
        video = self._control_video(control_video, length, height, width)
        mask = self._control_mask(control_mask, length, height, width)
        with comfy_adapter.model_on_compute_device(vae, "vae"):
            context, trim = build_vace_context(latent_encoder(vae), num_frames=length, height=height, width=width,
                                               video=video, mask=mask, references=references)
        cond = dataclasses.replace(conditioning, vace_context=context, vace_strength=float(strength),
                                   vace_trim_frames=trim)
        latent = torch.zeros(1, vae.z_dim, context.shape[2], height // vae.spatial_factor, width // vae.spatial_factor,
                             device=comfy_adapter.offload_device())
        return {"ui": {"text": [size.note]}, "result": (cond, {"samples": latent})}

    @staticmethod
    def _control_video(images: Optional[torch.Tensor], length: int, height: int, width: int):
        if images is None:
            return None
        if tuple(images.shape[:3]) != (length, height, width):
            raise ValueError(f"reference-to-video: control_video is {images.shape[0]} frames of "
                             f"{images.shape[2]}x{images.shape[1]}; expected {length} frames of {width}x{height}")
        return images[..., :3].permute(3, 0, 1, 2).unsqueeze(0).float() * 2.0 - 1.0

    @staticmethod
    def _control_mask(mask: Optional[torch.Tensor], length: int, height: int, width: int):
        if mask is None:
            return None
        if mask.ndim == 2:
            mask = mask.unsqueeze(0).expand(length, -1, -1)
        if tuple(mask.shape) != (length, height, width):
            raise ValueError(f"reference-to-video: control_mask has shape {tuple(mask.shape)}; expected "
                             f"[{length}, {height}, {width}] (one mask per frame)")
        return mask.float().reshape(1, 1, length, height, width)
