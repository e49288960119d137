"""VAE encode / decode nodes: ComfyUI's IMAGE and LATENT on one side, our Wan VAEs on the other.

LATENT holds *raw* VAE latents (ComfyUI's convention), so these nodes interoperate with core
``VAEDecode`` / ``VAEEncode``. Decoding streams one latent frame at a time straight into the
output IMAGE on the offload device, so video memory does not grow with the clip length.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..wan.compute_dtype import module_compute_dtype
from . import comfy_adapter
from .types import IMAGE, LATENT, VAE, VIDEO


def image_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[F, H, W, 3]`` in 0..1 → VAE pixels ``[1, 3, F, H, W]`` in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"expected an IMAGE [frames, height, width, 3], found shape {tuple(images.shape)}")
    return images[..., :3].permute(3, 0, 1, 2).unsqueeze(0) * 2.0 - 1.0


def image_pictures(images: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """Each frame of each connected IMAGE (None = not connected) as one picture ``[1, 3, h, w]`` in
    [-1, 1]; pictures from different inputs may differ in size."""
    return [frame[..., :3].permute(2, 0, 1).unsqueeze(0).float() * 2.0 - 1.0
            for image in images if image is not None for frame in image]


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """VAE pixels ``[B, 3, F, H, W]`` in [-1, 1] → IMAGE ``[B·F, H, W, 3]`` in 0..1."""
    return ((pixels.float().clamp(-1, 1) + 1.0) * 0.5).permute(0, 2, 3, 4, 1).flatten(0, 1)


def check_video_size(vae, frames: int, height: int, width: int, what: str) -> None:
    """Clear error for a frame count or size this VAE cannot encode."""
    step = vae.spatial_factor
    if (frames - 1) % vae.temporal_factor:
        raise ValueError(f"{what}: {frames} frames given; Wan needs 4n+1 frames (1, 5, 9, ..., 81)")
    if height % step or width % step:
        raise ValueError(f"{what}: image is {width}x{height}; this VAE needs width and height that are "
                         f"multiples of {step} (e.g. {width - width % step or step}x{height - height % step or step})")


class WanFlowVAEDecode:
    DESCRIPTION = "Decode raw Wan latents to frames, streaming one latent frame at a time."
    CATEGORY = VIDEO
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("images",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "samples": (LATENT, {"tooltip": "Raw Wan latents, e.g. from the MoE sampler or core VAEEncode."}),
            "vae": (VAE, {"tooltip": "The VAE that matches the model (2.1 VAE for 14B/1.3B, 2.2 VAE for TI2V-5B)."}),
            "tiled": ("BOOLEAN", {"default": False, "tooltip":
                      "Decode in overlapping spatial tiles to save memory at large sizes (slightly slower)."}),
            "tile_size": ("INT", {"default": 32, "min": 8, "max": 256, "step": 8, "tooltip":
                          "Tile size in latent pixels when tiled (x8 or x16 in pixels)."}),
            "tile_overlap": ("INT", {"default": 8, "min": 0, "max": 64, "step": 2, "tooltip":
                             "Overlap between tiles in latent pixels; blended to avoid seams."}),
        }}

    def decode(self, samples: dict, vae, tiled: bool, tile_size: int, tile_overlap: int) -> tuple[torch.Tensor]:
        z = samples["samples"]
        if z.ndim != 5 or z.shape[1] != vae.z_dim:
            raise ValueError(f"VAE decode: latent has shape {tuple(z.shape)}; this VAE decodes "
                             f"[batch, {vae.z_dim}, frames, h, w] (wrong VAE for the model?)")
        with comfy_adapter.model_on_compute_device(vae, "vae") as device:
            z = z.to(device, module_compute_dtype(vae, device))
            if tiled:
                pixels = vae.decode_tiled(z, tile=tile_size, overlap=min(tile_overlap, tile_size - 1))
                return (pixels_to_image(pixels).to(comfy_adapter.offload_device()),)
            return (self._decode_streaming(vae, z),)

    @staticmethod
    def _decode_streaming(vae, z: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = vae.pixel_shape(tuple(z.shape))
        images = torch.empty(batch * frames, height, width, 3, dtype=torch.float32,
                             device=comfy_adapter.offload_device())
        with comfy_adapter.Progress(z.shape[0] * z.shape[2], "decode") as bar:
            for b in range(z.shape[0]):
                start = b * frames
                for chunk in vae.decode_chunks(z[b:b + 1]):
                    comfy_adapter.check_interrupted()
                    part = pixels_to_image(chunk).to(images.device)
                    images[start:start + part.shape[0]] = part
                    start += part.shape[0]
                    bar.update(1)
        return images


class WanFlowVAEEncode:
    DESCRIPTION = "Encode frames to raw Wan latents (ComfyUI LATENT)."
    CATEGORY = VIDEO
    RETURN_TYPES = (LATENT,)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "images": (IMAGE, {"tooltip": "Frames [frames, height, width, 3]; 4n+1 frames, sizes a multiple of "
                                          "8 (2.1 VAE) or 16 (2.2 VAE)."}),
            "vae": (VAE, {"tooltip": "The Wan VAE to encode with."}),
        }}

    def encode(self, images: torch.Tensor, vae) -> tuple[dict]:
        frames, height, width = images.shape[0], images.shape[1], images.shape[2]
        check_video_size(vae, frames, height, width, "VAE encode")
        with comfy_adapter.model_on_compute_device(vae, "vae") as device:
            z = vae.encode(image_to_pixels(images).to(device, module_compute_dtype(vae, device)))
        return ({"samples": z.float().to(comfy_adapter.offload_device())},)
