"""``LoadImage`` for the headless runner, with ComfyUI's core signature and outputs.

Inside ComfyUI the core node of the same name is used (core ids win over packs), so this class is
registered only in the runner's node table.
"""
from __future__ import annotations

import numpy as np
import torch

from . import comfy_adapter
from .types import IMAGE, MASK


class LoadImage:
    """Loads a picture from the input folder: IMAGE [frames, H, W, 3] and MASK (1 - alpha)."""

    DESCRIPTION = "Load an image from the input folder (headless stand-in for ComfyUI's LoadImage)."
    CATEGORY = "image"
    RETURN_TYPES = (IMAGE, MASK)
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image": (comfy_adapter.list_input_images(), {
            "image_upload": True, "tooltip": "Image file in the input folder (--input DIR for the runner)."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool:
        """Checked before the run: a safe name of a file that exists (raises otherwise)."""
        comfy_adapter.input_path(image, "LoadImage: image")
        return True

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, ImageOps, ImageSequence

        path = comfy_adapter.input_path(image, "LoadImage: image")
        frames, masks = [], []
        with Image.open(path) as picture:
            for frame in ImageSequence.Iterator(picture):
                frame = ImageOps.exif_transpose(frame)
                rgb = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
                if frames and rgb.shape != frames[0].shape:
                    break
                frames.append(rgb)
                if "A" in frame.getbands():
                    masks.append(1.0 - np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0)
                else:
                    masks.append(np.zeros(rgb.shape[:2], dtype=np.float32))
        return torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(masks))
