"""Writing frames to mp4 / animated webp / PNG with the workflow embedded the way ComfyUI does.

ComfyUI puts the API prompt under ``prompt`` and each ``extra_pnginfo`` entry (normally
``workflow``, the UI graph) under its own key, JSON-encoded:
- mp4: container metadata tags (written with ``movflags=use_metadata_tags``), as core SaveVideo;
- webp: EXIF tags, ``0x0110 = "prompt:<json>"`` and ``0x010F, 0x010E, … = "<key>:<json>"``,
  as core SaveAnimatedWEBP;
- png: text chunks ``prompt`` and ``<key>``, as core SaveImage.
Dragging such a file onto ComfyUI restores the graph.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

EXIF_PROMPT_TAG = 0x0110  # "Model"
EXIF_FIRST_EXTRA_TAG = 0x010F  # "Make", then counting down


def frames_to_uint8(images: torch.Tensor) -> np.ndarray:
    """IMAGE ``[F, H, W, 3]`` float 0..1 to uint8 ``[F, H, W, 3]``."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"images: expected an IMAGE tensor [frames, height, width, 3], found shape {tuple(images.shape)}")
    frames = images[..., :3].detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.numpy()


def metadata_entries(prompt: Optional[dict], extra_pnginfo: Optional[dict]) -> dict[str, str]:
    """Key → JSON text, in ComfyUI's order: ``prompt`` first, then the extra entries."""
    entries: dict[str, str] = {}
    if prompt is not None:
        entries["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        entries[key] = json.dumps(value)
    return entries


def write_mp4(path: Path, frames: np.ndarray, fps: float, metadata: dict[str, str], crf: int = 19) -> None:
    """H.264 in yuv420p; odd sizes are padded by one edge pixel because yuv420p needs even sizes."""
    import av

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
        for key, value in metadata.items():
            container.metadata[key] = value
        stream = container.add_stream("libx264", rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_webp(path: Path, frames: np.ndarray, fps: float, metadata: dict[str, str],
               quality: int = 90, lossless: bool = False) -> None:
    """Animated webp through Pillow with the metadata in EXIF."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    exif = images[0].getexif()
    tag = EXIF_FIRST_EXTRA_TAG
    for key, value in metadata.items():
        if key == "prompt":
            exif[EXIF_PROMPT_TAG] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:],
                   duration=max(1, int(round(1000.0 / fps))), loop=0, exif=exif,
                   quality=quality, lossless=lossless, method=4)


def write_png(path: Path, frame: np.ndarray, metadata: dict[str, str]) -> None:
    """One PNG frame with the metadata as text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)
    Image.fromarray(frame).save(path, format="PNG", pnginfo=info, compress_level=4)


def read_video_metadata(path: Path) -> dict[str, Any]:
    """The embedded entries of a file written here, decoded from JSON (for tests and tools)."""
    path = Path(path)
    suffix = path.suffix.lower()
    raw: dict[str, str] = {}
    if suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            raw = dict(container.metadata)
    elif suffix == ".webp":
        from PIL import Image

        with Image.open(path) as image:
            for value in image.getexif().values():
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                if isinstance(value, str) and ":" in value:
                    key, text = value.split(":", 1)
                    raw[key] = text
    elif suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            raw = dict(image.text)
    decoded = {}
    for key, text in raw.items():
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(value, (dict, list)):  # container tags such as minor_version are not ours
            decoded[key] = value
    return decoded
