"""The VACE context: control video, its mask and reference images as the 96 channels VACE reads.

Official Wan 2.1 VACE (``wan/vace.py``), in the sampler's normalised latent space:

* the pixel mask is binarised at 0.5 (1 = generate, 0 = keep);
* ``inactive = video·(1−m)`` and ``reactive = video·m`` are VAE-encoded separately: 2 × 16 ch;
* the mask is folded 8×8 → 64 channels per latent pixel and resized (nearest-exact) to the
  latent frame count;
* each reference image is encoded alone (one latent frame), paired with 16 zero channels, and
  **prepended** in time; the mask gets a zero frame per reference. Those frames are trimmed
  from the result (``WanConditioning.vace_trim_frames``).

The noise for a VACE run therefore has ``N_refs + T_lat`` latent frames.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .conditioning import LatentEncoder

VAE_SPATIAL_STRIDE = 8
VAE_TEMPORAL_STRIDE = 4


def fit_reference(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale ``[B, 3, h, w]`` (in [−1, 1]) to fit ``height × width`` keeping its aspect, centred on
    a white canvas (VACE's letterbox for reference images)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"fit_reference: image must be [B, 3, H, W], got {tuple(image.shape)}")
    img_h, img_w = image.shape[-2:]
    if (img_h, img_w) == (height, width):
        return image
    scale = min(height / img_h, width / img_w)
    new_h, new_w = int(img_h * scale), int(img_w * scale)
    resized = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False)
    canvas = image.new_ones(image.shape[0], 3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, :, top:top + new_h, left:left + new_w] = resized
    return canvas


def vace_mask_channels(mask: torch.Tensor, latent_frames: int) -> torch.Tensor:
    """Binary pixel mask ``[B, 1, F, H, W]`` → ``[B, 64, T_lat, H/8, W/8]`` (8×8 pixels per channel)."""
    batch, _, frames, height, width = mask.shape
    s = VAE_SPATIAL_STRIDE
    if height % s or width % s:
        raise ValueError(f"vace_mask_channels: mask size {height}x{width} must be a multiple of {s}")
    folded = mask[:, 0].reshape(batch, frames, height // s, s, width // s, s)
    folded = folded.permute(0, 3, 5, 1, 2, 4).reshape(batch, s * s, frames, height // s, width // s)
    return F.interpolate(folded, size=(latent_frames, height // s, width // s), mode="nearest-exact")


def build_vace_context(encode: LatentEncoder, *, num_frames: int, height: int, width: int,
                       batch: int = 1, video: Optional[torch.Tensor] = None,
                       mask: Optional[torch.Tensor] = None,
                       references: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, int]:
    """The 96-channel VACE context and the number of reference frames to trim afterwards.

    ``encode(pixels) -> normalised latent``. ``video``: control clip ``[B, 3, F, H, W]`` in
    [−1, 1] (default: mid-grey zeros); ``mask``: ``[B, 1, F, H, W]`` in [0, 1] (default: ones =
    generate everything); ``references``: images ``[B, 3, h, w]`` in [−1, 1], letterboxed to the
    output size. Reference-to-video is ``references`` alone.
    """
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"build_vace_context: num_frames must be 4n+1, got {num_frames}")
    shape = (batch, 3, num_frames, height, width)
    if video is None:
        video = torch.zeros(shape)
    if mask is None:
        mask = torch.ones(batch, 1, num_frames, height, width, dtype=video.dtype, device=video.device)
    if tuple(video.shape) != shape:
        raise ValueError(f"build_vace_context: video must be {shape}, got {tuple(video.shape)}")
    if tuple(mask.shape) != (batch, 1, num_frames, height, width):
        raise ValueError(f"build_vace_context: mask must be {(batch, 1, num_frames, height, width)}, "
                         f"got {tuple(mask.shape)}")
    mask = (mask > 0.5).to(video.dtype)
    latent = torch.cat([encode(video * (1 - mask)), encode(video * mask)], dim=1)
    mask_channels = vace_mask_channels(mask, latent.shape[2]).to(latent)

    ref_latents = []
    for i, image in enumerate(references):
        if image.ndim != 4 or image.shape[0] != batch:
            raise ValueError(f"build_vace_context: references[{i}] must be [{batch}, 3, h, w], got "
                             f"{tuple(image.shape)}")
        ref = encode(fit_reference(image, height, width).unsqueeze(2))
        ref_latents.append(torch.cat([ref, torch.zeros_like(ref)], dim=1))
    if ref_latents:
        latent = torch.cat([*ref_latents, latent], dim=2)
        pad = mask_channels.new_zeros(batch, mask_channels.shape[1], len(ref_latents),
                                      *mask_channels.shape[3:])
        mask_channels = torch.cat([pad, mask_channels], dim=2)
    return torch.cat([latent, mask_channels], dim=1), len(ref_latents)
