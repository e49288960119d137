"""Image-to-video node: the conditioning the model needs for a start (and optional end) image.

Which conditioning is built is read from the loaded model:
- Wan 2.1 I2V / FLF2V (CLIP branch): mask + image latent ``y`` and CLIP features of the image(s);
- Wan 2.2 I2V-A14B, Wan2.2-Fun-A14B-InP and Wan2.2-Fun-5B-InP: mask + image latent ``y`` only, for a
  start image, an end image or both (as ComfyUI's WanFirstLastFrameToVideo / WanFunInpaintToVideo);
- Wan 2.2 TI2V-5B: the clean first-frame latent (per-token timesteps in the sampler).
The builders are samplers/conditioning.py's; this node sizes the images and picks the recipe.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from ..model_loaders.detect import WanVariant
from ..samplers.conditioning import WanConditioning, encode_first_frame, encode_i2v_condition
from ..wan.clip_vision import preprocess as clip_preprocess
from ..wan.compute_dtype import module_compute_dtype
from ..wan.latent_stats import stats_for_channels
from . import comfy_adapter
from .core_bridge import as_model_handle, clip_tokens_from_core
from .handles import ClipVisionHandle, ModelHandle
from .model_checks import check_image_model
from .sizes import fit_video_size
from .types import CLIP_VISION, CLIP_VISION_OUTPUT, CONDITIONING, CONDITIONING_MENU, IMAGE, LATENT, MODEL_OR_CORE, VAE


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """An IMAGE batch as ``[N, 3, H, W]`` in [-1, 1]: each frame scaled to cover, centre-cropped.

    Frames already at the target size pass through untouched; resizing is bicubic as in the
    official I2V code.
    """
    x = image[..., :3].permute(0, 3, 1, 2).float() * 2.0 - 1.0
    h, w = x.shape[2:]
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False).clamp(-1, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[:, :, top:top + height, left:left + width]


def as_clip(frames: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` frames as one clip ``[1, 3, N, H, W]`` (one picture stays ``[1, 3, H, W]``)."""
    return frames if frames.shape[0] == 1 else frames.permute(1, 0, 2, 3).unsqueeze(0)


def check_vae(model: ModelHandle, vae, what: str) -> None:
    """The VAE must make the latents the model works on."""
    if vae.z_dim != model.variant.config.out_dim:
        raise ValueError(f"{what}: the VAE makes {vae.z_dim}-channel latents but {model.variant.name} needs "
                         f"{model.variant.config.out_dim} (the 5B models, TI2V and Fun-InP: Wan 2.2 VAE; "
                         "the others: Wan 2.1 VAE)")


def latent_encoder(vae):
    """Pixels ``[B, 3, F, H, W]`` in [-1, 1] → normalised latents, on the VAE's device, in the dtype
    that device computes the VAE's weights fast in."""
    stats = stats_for_channels(vae.z_dim)
    device = next(vae.parameters()).device
    dtype = module_compute_dtype(vae, device)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        raw = vae.encode(pixels.to(device, dtype)).float()
        return stats.normalize(raw).to(comfy_adapter.offload_device())

    return encode


class WanFlowImageToVideo:
    DESCRIPTION = ("Start and/or end image conditioning, chosen from the model: Wan 2.1 I2V/FLF2V "
                   "(CLIP + image latent), Wan 2.2 I2V-A14B and Fun-InP A14B/5B (image latent; start, end or "
                   "both) or TI2V-5B (first-frame latent). Several start frames continue a clip.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CONDITIONING, LATENT)
    RETURN_NAMES = ("conditioning", "latent")
    FUNCTION = "build"
    CONDITIONING_KIND = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (MODEL_OR_CORE, {"tooltip": "The I2V / TI2V model (the high-noise expert for Wan 2.2 A14B; "
                                                     "WanFlow or core MODEL); decides which conditioning is built."}),
                "conditioning": (CONDITIONING, {"tooltip": "Text conditioning from WanFlow Text Encode."}),
                "vae": (VAE, {"tooltip": "Wan 2.1 VAE (14B models) or Wan 2.2 VAE (TI2V-5B, Fun-5B-InP)."}),
                "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip":
                          "Video width; a multiple of 16 (32 for the 5B models), other values are rounded."}),
                "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip":
                           "Video height; rounded like the width."}),
                "length": ("INT", {"default": 81, "min": 1, "max": 1601, "step": 4, "tooltip":
                           "Frames, 4n+1 (81 at 16 fps; TI2V-5B: 121 at 24 fps); other values are rounded down."}),
            },
            "optional": {
                "start_image": (IMAGE, {"tooltip": "First frame of the video (a batch: the first frames, to "
                                                   "continue a clip); scaled to cover the size and centre-cropped. "
                                                   "Required except on Wan 2.2 I2V-A14B / Fun-InP, which also "
                                                   "take an end image alone."}),
                "end_image": (IMAGE, {"tooltip": "Last frame (a batch: the last frames): Wan 2.1 FLF2V (required), "
                                                 "Wan 2.2 I2V-A14B and Fun-InP A14B/5B (first-last-frame, or end "
                                                 "image alone)."}),
                "clip_vision": (CLIP_VISION, {"tooltip": "CLIP vision model; required by Wan 2.1 I2V and FLF2V, "
                                                         "not used by Wan 2.2."}),
                "clip_vision_output": (CLIP_VISION_OUTPUT, {"tooltip": "Instead of clip_vision: core CLIPVisionEncode "
                                       "of the start image (a batch of start and end image for FLF2V)."}),
            },
        }

    @classmethod
    def check_models(cls, models: Mapping[str, WanVariant], conditioning: Mapping[str, str],
                     connected: set[str]) -> None:
        """The headless runner's check before loading (from file headers); see nodes/model_checks.py."""
        if "model" in models:
            check_image_model(models["model"], start_image="start_image" in connected,
                              end_image="end_image" in connected,
                              clip_vision=bool({"clip_vision", "clip_vision_output"} & connected))

    def build(self, model: ModelHandle, conditioning: WanConditioning, vae,
              start_image: Optional[torch.Tensor] = None, width: int = 832, height: int = 480, length: int = 81,
              end_image: Optional[torch.Tensor] = None,
              clip_vision: Optional[ClipVisionHandle] = None, clip_vision_output: Any = None) -> dict:
        what = "image-to-video"
        model = as_model_handle(model, "Image to Video", "model")
        check_image_model(model.variant, start_image=start_image is not None, end_image=end_image is not None,
                          clip_vision=clip_vision is not None or clip_vision_output is not None)
        check_vae(model, vae, what)
        size = fit_video_size(width, height, length, vae, what)
        width, height, length = size.width, size.height, size.length
        config = model.variant.config
        # An IMAGE batch is frames (as in core): several start frames continue a clip; the first
        # `length` start frames and the last `length` end frames are used, as core's nodes do.
        start = fit_image(start_image[:length], width, height) if start_image is not None else None
        end = fit_image(end_image[-length:], width, height) if end_image is not None else None
        latent_shape = vae.latent_shape((1, 3, length, height, width))
        with comfy_adapter.model_on_compute_device(vae, "vae"):
            encode = latent_encoder(vae)
            if config.in_dim == config.out_dim:  # TI2V-5B: the first frame(s) ride in the latent itself
                cond = dataclasses.replace(conditioning, first_frame=encode_first_frame(encode, as_clip(start)))
            else:
                y = encode_i2v_condition(encode, None if start is None else as_clip(start), length,
                                         None if end is None else as_clip(end))
                clip_fea = (clip_tokens_from_core(clip_vision_output, "Image to Video")
                            if clip_vision_output is not None and model.variant.config.has_image_input
                            else self._clip_features(model, clip_vision, start, end))
                cond = dataclasses.replace(conditioning, y=y, clip_fea=clip_fea)
        latent = torch.zeros(latent_shape, device=comfy_adapter.offload_device())
        return {"ui": {"text": [size.note]}, "result": (cond, {"samples": latent})}

    @staticmethod
    def _clip_features(model: ModelHandle, clip_vision: Optional[ClipVisionHandle], start: torch.Tensor,
                       end: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """CLIP tokens for models with the image branch: ``[1, 257, 1280]``, or 514 with an end image.

        With several start (end) frames, the first start and the last end frame are seen."""
        if not model.variant.config.has_image_input or clip_vision is None:  # check_image_model ran first
            return None
        images = start[:1] if end is None else torch.cat([start[:1], end[-1:]])
        tower = clip_vision.tower
        with comfy_adapter.model_on_compute_device(tower, "clip_vision") as device, torch.no_grad():
            pixels = clip_preprocess(images, size=tower.config.image_size)
            features = tower(pixels.to(device, module_compute_dtype(tower, device))).float()
        return features.reshape(1, -1, features.shape[-1]).to(comfy_adapter.offload_device())
