"""Save video node: mp4 (H.264), animated webp or PNG frames, workflow embedded, never overwriting."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import comfy_adapter, video_files
from .types import IMAGE, VIDEO

FORMATS = ("mp4", "webp", "png")


class WanFlowSaveVideo:
    """Writes ``prefix_00001_.mp4`` (or .webp, or one PNG per frame) in the output folder."""

    DESCRIPTION = "Save frames as an mp4 (H.264), an animated webp or PNG frames, with the workflow embedded."
    CATEGORY = VIDEO
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "images": (IMAGE, {"tooltip": "Frames to save, [frames, height, width, 3] in 0..1."}),
                "filename_prefix": ("STRING", {"default": "WanFlow/video", "tooltip":
                                    "Name inside the output folder; a counter is appended (prefix_00001_.mp4). "
                                    "Sub-folders are allowed, '..' and absolute paths are not."}),
                "format": (list(FORMATS), {"default": "mp4", "tooltip":
                           "mp4: H.264 video; webp: animated webp; png: one PNG per frame."}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0, "tooltip":
                        "Frames per second (Wan: 16; TI2V-5B: 24)."}),
                "quality": ("INT", {"default": 90, "min": 1, "max": 100, "tooltip":
                            "Higher is better and larger. mp4 maps it to H.264 CRF (90 -> 19); webp uses it directly; "
                            "png is lossless."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str) -> Union[bool, str]:
        """Checked before the run: the prefix stays inside the output folder."""
        return comfy_adapter.output_prefix_verdict(filename_prefix, "save video: filename_prefix")

    def save(self, images: torch.Tensor, filename_prefix: str, format: str, fps: float, quality: int,
             prompt: Optional[dict] = None, extra_pnginfo: Optional[dict] = None) -> dict:
        if format not in FORMATS:
            raise ValueError(f"save video: format {format!r} is not one of {FORMATS}")
        frames = video_files.frames_to_uint8(images)
        metadata = video_files.metadata_entries(prompt, extra_pnginfo)
        count = len(frames) if format == "png" else 1
        files = comfy_adapter.reserve_output_file(filename_prefix, format, "save video: filename_prefix", count)
        paths = files.paths
        if format == "mp4":
            video_files.write_mp4(paths[0], frames, fps, metadata, crf=quality_to_crf(quality))
        elif format == "webp":
            video_files.write_webp(paths[0], frames, fps, metadata, quality=quality)
        else:
            for path, frame in zip(paths, frames):
                video_files.write_png(path, frame, metadata)
        results = [{"filename": name, "subfolder": files.subfolder, "type": "output"} for name in files.names]
        return {"ui": {"images": results, "animated": (format != "png",)}}


def quality_to_crf(quality: int) -> int:
    """Quality 1..100 to x264 CRF: 100 -> 0, 90 -> 19 (near visually lossless), 1 -> 51."""
    quality = max(1, min(100, int(quality)))
    if quality >= 90:
        return round((100 - quality) * 1.9)
    return round(19 + (90 - quality) * 32 / 89)
