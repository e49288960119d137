"""Subject-to-video (Phantom-Wan): 1-4 subject pictures, the picture guidance scale, an empty latent.

The pictures become clean latent frames joined after the video in every model call
(samplers/subject_conditioning.py); the MoE sampler then runs Phantom's three-pass guidance with
its cfg as the text scale and ``image_cfg`` as the picture scale, and cuts the subject frames off
each model output, so the LATENT it returns (and VAE Decode) holds the video frames only.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..samplers.conditioning import WanConditioning
from ..samplers.subject_conditioning import FIT_MODES, MAX_SUBJECTS, encode_subjects
from . import comfy_adapter
from .image_to_video import latent_encoder
from .sizes import fit_video_size
from .types import CONDITIONING, CONDITIONING_MENU, IMAGE, LATENT, VAE
from .vae_nodes import image_pictures

WHAT = "subject-to-video"


def subject_pictures(images: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """Each frame of each connected IMAGE as ``[1, 3, h, w]`` in [-1, 1] (a batch of pictures counts
    as that many subjects, like ComfyUI's ``images`` input)."""
    pictures = image_pictures(images)
    if len(pictures) > MAX_SUBJECTS:
        raise ValueError(f"{WHAT}: {len(pictures)} subject pictures given; Phantom takes at most {MAX_SUBJECTS}")
    return pictures


class WanFlowSubjectToVideo:
    DESCRIPTION = ("Phantom-Wan conditioning: 1-4 subject pictures (people, objects) to put in the video. Use with a "
                   "Phantom-Wan 1.3B or 14B model; the sampler's cfg is the text guidance (official 7.5) and "
                   "image_cfg here the picture guidance (official 5.0), three model passes per step.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CONDITIONING, LATENT)
    RETURN_NAMES = ("conditioning", "latent")
    FUNCTION = "build"
    CONDITIONING_KIND = "subject"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        optional = {f"subject_{i}": (IMAGE, {"tooltip": f"Subject picture {i} (optional)."})
                    for i in range(2, MAX_SUBJECTS + 1)}
        return {
            "required": {
                "conditioning": (CONDITIONING, {"tooltip": "Text conditioning from WanFlow Text Encode (its negative "
                                                           "prompt drives the picture-only and unguided passes)."}),
                "vae": (VAE, {"tooltip": "The Wan 2.1 VAE (Phantom-Wan uses it)."}),
                "subject_1": (IMAGE, {"tooltip": "Picture of a subject to put in the video; a batch of pictures "
                                                 "counts as that many subjects."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip":
                          "Video width, a multiple of 16 (official Phantom-Wan: 832x480; 14B also 1280x720)."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip":
                           "Video height, a multiple of 16."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1601, "step": 4,
                                   "tooltip": "Frames, 4n+1; other values are rounded down."}),
                "image_cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                              "Guidance toward the subject pictures (official guide_scale_img: 5.0); 1.0 skips the "
                              "pass without text or pictures. The sampler's cfg is the text guidance."}),
                "fit": (list(FIT_MODES), {"default": "pad", "tooltip":
                        "pad: scale each picture into the frame and fill the rest with white (official Phantom). "
                        "crop: cover the frame and centre-crop (ComfyUI's WanPhantomSubjectToVideo)."}),
            },
            "optional": optional,
        }

    def build(self, conditioning: WanConditioning, vae, subject_1: torch.Tensor, width: int, height: int,
              length: int, image_cfg: float, fit: str, subject_2: Optional[torch.Tensor] = None,
              subject_3: Optional[torch.Tensor] = None, subject_4: Optional[torch.Tensor] = None) -> dict:
        if vae.z_dim != 16:
            raise ValueError(f"{WHAT}: Phantom-Wan uses the Wan 2.1 VAE (16 channels); this VAE has {vae.z_dim}")
        if fit not in FIT_MODES:
            raise ValueError(f"{WHAT}: fit is {fit!r}; expected one of {', '.join(FIT_MODES)}")
        size = fit_video_size(width, height, length, vae, WHAT)
        pictures = subject_pictures([subject_1, subject_2, subject_3, subject_4])
        with comfy_adapter.model_on_compute_device(vae, "vae"):
            subjects = encode_subjects(latent_encoder(vae), pictures, size.height, size.width, fit)
        cond = dataclasses.replace(conditioning, subjects=subjects, subject_cfg=float(image_cfg))
        latent = torch.zeros(vae.latent_shape((1, 3, size.length, size.height, size.width)),
                             device=comfy_adapter.offload_device())
        return {"ui": {"text": [size.note]}, "result": (cond, {"samples": latent})}
