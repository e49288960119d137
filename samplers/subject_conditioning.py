"""Phantom subject-to-video: 1-4 subject pictures as clean latent frames joined after the video.

Phantom-Wan (ByteDance, on Wan 2.1 T2V 1.3B / 14B; same weights layout as T2V) reads its
subjects through time, not through extra channels:

* each picture is fitted to the video size and VAE-encoded **alone**, one latent frame each;
* those frames are appended **after** the noisy video latent along time in every model call, at
  the same timestep, and the model's output over them is dropped (``with_subjects``);
* guidance takes three passes (``samplers.guidance.subject_guided_velocity``): text + pictures,
  pictures only (negative text) and neither (negative text, zero picture latents).

The official code keeps the subject frames inside its latent (overwritten before each call,
cut off before decoding); ComfyUI's ``WanPhantomSubjectToVideo`` joins them inside the model call
and cuts the output there. The video frames follow the same trajectory either way (the solvers
act element-wise); we do it ComfyUI's way, so the sampler state, the LATENT it returns and what
VAE Decode sees never hold subject frames.

Latents are in the sampler's normalised space; a zero picture latent there is ComfyUI's
``process_out(zeros)`` after ``process_latent_in``, and the official ``zeros_like``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .conditioning import LatentEncoder
from .vace_conditioning import fit_reference

MAX_SUBJECTS = 4
FIT_MODES = ("pad", "crop")


def crop_to_cover(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop ``[B, 3, h, w]`` to the target aspect, then resize bilinearly (ComfyUI's
    ``common_upscale(..., "bilinear", "center")``, which its Phantom node uses)."""
    img_h, img_w = image.shape[-2:]
    old, new = img_w / img_h, width / height
    x = round((img_w - img_w * (new / old)) / 2) if old > new else 0
    y = round((img_h - img_h * (old / new)) / 2) if old < new else 0
    cropped = image[..., y:img_h - y, x:img_w - x]
    return F.interpolate(cropped, size=(height, width), mode="bilinear")


def fit_subject(image: torch.Tensor, height: int, width: int, fit: str = "pad") -> torch.Tensor:
    """One picture ``[B, 3, h, w]`` in [−1, 1] at the video size: ``"pad"`` letterboxes it on white
    keeping its aspect (official Phantom ``load_ref_images``; bilinear here, Lanczos there),
    ``"crop"`` covers the frame and centre-crops (ComfyUI)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"subject picture must be [B, 3, H, W], got {tuple(image.shape)}")
    if fit == "pad":
        return fit_reference(image, height, width)
    if fit == "crop":
        return crop_to_cover(image, height, width)
    raise ValueError(f"subject fit must be one of {FIT_MODES}, got {fit!r}")


def encode_subjects(encode: LatentEncoder, pictures: Sequence[torch.Tensor], height: int, width: int,
                    fit: str = "pad") -> torch.Tensor:
    """The subject latent ``[B, C, N, height/8, width/8]``: picture i is latent frame i.

    ``encode(pixels [B, 3, F, H, W]) -> normalised latent``; each picture is encoded on its own as a
    one-frame clip, so no picture leaks into another through the VAE's temporal context.
    """
    if not 1 <= len(pictures) <= MAX_SUBJECTS:
        raise ValueError(f"subject-to-video takes 1 to {MAX_SUBJECTS} subject pictures, got {len(pictures)}")
    frames = []
    for index, picture in enumerate(pictures):
        latent = encode(fit_subject(picture, height, width, fit).unsqueeze(2))
        if latent.shape[2] != 1:
            raise ValueError(f"subject picture {index + 1}: one picture should give one latent frame, "
                             f"got {latent.shape[2]}")
        frames.append(latent)
    return torch.cat(frames, dim=2)


def with_subjects(x: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
    """The model input: the video latent ``[B, C, F, h, w]`` followed in time by the subject frames."""
    if subjects.shape[0] != x.shape[0] or subjects.shape[1] != x.shape[1] or subjects.shape[3:] != x.shape[3:]:
        raise ValueError(f"subject latent {tuple(subjects.shape)} does not fit the video latent "
                         f"{tuple(x.shape)} (same batch, channels, height and width)")
    return torch.cat([x, subjects.to(x)], dim=2)


def video_part(output: torch.Tensor, frames: int) -> torch.Tensor:
    """The model's output over the video frames only: the subject frames are cut off."""
    return output[:, :, :frames]
