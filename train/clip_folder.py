"""A folder of the user's clips with captions, encoded once for LoRA training and cached on disk.

The layout is the one existing Wan trainers read: ``name.mp4`` / ``name.webm`` or a folder
``name/`` of PNG frames, each with ``name.txt`` holding its caption. Every clip is fitted to one
size bucket (keep aspect, centre-crop) and trimmed to one frame count the Wan VAE accepts
(``4k+1``, the first frames), so the latents stack into the ``[N, C, F, H, W]`` tensor the trainer
samples batches from. Bad clips are skipped and reported by name with the reason, never silently.

Encoding is the slow part, so :func:`load_clip_folder` caches the latents and text contexts in one
file keyed by the clip and caption bytes, the size options and the caller's encoder identity; a
second call with the same inputs loads that file without touching the encoders. The result fits
``lora_trainer``'s ``LatentData`` (:class:`ClipLatents`) and ``TextData`` (``nano_latents.TextTable``).
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .loop import atomic_save
from .nano_latents import TextTable

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm")
MIN_FRAMES = 5
"""The shortest clip the Wan VAE encodes to more than its first latent frame (4*1+1)."""
CACHE_VERSION = 1
"""Bumped when the cache layout or the pixel preparation changes, so old caches are not reused."""
Encode = Callable[[torch.Tensor], torch.Tensor]
EncodeText = Callable[[list[str]], torch.Tensor]
Skipped = list[tuple[Path, str]]


@dataclass(frozen=True)
class ClipOptions:
    """The size bucket every clip is fitted to, the longest clip kept, and how far a clip's aspect
    ratio may be from the bucket's before cropping would throw away too much of it."""

    width: int = 832
    height: int = 480
    max_frames: int = 81
    max_aspect_ratio: float = 2.0

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ValueError(f"ClipOptions: {name} must be a positive multiple of 16, got {value}")
        if self.max_frames < MIN_FRAMES:
            raise ValueError(f"ClipOptions: max_frames must be >= {MIN_FRAMES}, got {self.max_frames}")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"ClipOptions: max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


@dataclass(frozen=True)
class ClipSource:
    """One clip found in the folder: a video file or a folder of PNG frames, and its caption file."""

    path: Path
    caption_path: Path

    @property
    def is_frames(self) -> bool:
        return self.path.is_dir()


@dataclass
class ClipLatents:
    """Encoded clips ``[N, C, F, H, W]`` and the caption row of each (``lora_trainer.LatentData``).

    ``names`` are the clip file names in latent order; ``i2v_y`` stays None (T2V training)."""

    latents: torch.Tensor
    caption_index: torch.Tensor
    names: list[str]
    i2v_y: Optional[torch.Tensor] = None


@dataclass
class ClipFolderData:
    """What training reads (``latents``, ``text``), plus what was skipped and why, the common frame
    count and the cache file it came from."""

    latents: ClipLatents
    text: TextTable
    skipped: Skipped
    frames: int
    cache_path: Path


# --------------------------------------------------------------------------------------------
# Finding and checking clips
# --------------------------------------------------------------------------------------------

def find_clips(folder: Path) -> list[ClipSource]:
    """Every video file and sub-folder in ``folder`` (hidden entries, like the cache, excluded)."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES:
            stem = path.name if path.is_dir() else path.stem
            found.append(ClipSource(path, path.with_name(stem + ".txt")))
    return found


def read_caption(source: ClipSource) -> str:
    """The stripped caption; raises ``ValueError`` with the reason when it is missing or empty."""
    if not source.caption_path.is_file():
        raise ValueError(f"no caption file {source.caption_path.name}")
    caption = source.caption_path.read_text(encoding="utf-8", errors="replace").strip()
    if not caption:
        raise ValueError(f"caption file {source.caption_path.name} is empty")
    return caption


def vae_frames(count: int, max_frames: int) -> int:
    """The longest ``4k+1`` frame count <= both ``count`` and ``max_frames``."""
    return (min(count, max_frames) - 1) // 4 * 4 + 1


def probe(source: ClipSource, max_frames: int) -> tuple[int, int, int]:
    """``(frames, width, height)`` of a clip, counting at most ``max_frames`` frames; decoding the
    frames (not trusting the header) is what catches a file that breaks part-way."""
    count, size = 0, (0, 0)
    for frame in iter_frames(source):
        if count == 0:
            size = (frame.shape[1], frame.shape[0])
        count += 1
        if count >= max_frames:
            break
    return count, size[0], size[1]


def aspect_error(width: int, height: int, options: ClipOptions) -> Optional[str]:
    """Why a clip's aspect is too far from the bucket's for a centre-crop, or None."""
    ratio = (width / height) / (options.width / options.height)
    if max(ratio, 1 / ratio) > options.max_aspect_ratio:
        return (f"aspect ratio {width}x{height} ({width / height:.2f}) is more than "
                f"{options.max_aspect_ratio:g}x off the bucket {options.width}x{options.height} "
                f"({options.width / options.height:.2f})")
    return None


def check_clip(source: ClipSource, options: ClipOptions) -> tuple[str, int]:
    """``(caption, usable frames)``, or ``ValueError`` saying why the clip cannot be used."""
    caption = read_caption(source)
    try:
        count, width, height = probe(source, options.max_frames)
    except Exception as error:  # noqa: BLE001 - any decoder failure means the same: unreadable
        raise ValueError(f"unreadable: {type(error).__name__}: {error}") from error
    if count < MIN_FRAMES:
        raise ValueError(f"too short: {count} frame(s), need at least {MIN_FRAMES}")
    problem = aspect_error(width, height, options)
    if problem:
        raise ValueError(problem)
    return caption, vae_frames(count, options.max_frames)


def usable_clips(folder: Path, options: ClipOptions) -> tuple[list[tuple[ClipSource, str]], int, Skipped]:
    """The clips that can be used with their captions, the common frame count, and the skipped
    ones with their reasons (each logged as a warning). Raises when none is usable."""
    sources = find_clips(folder)
    usable, counts, skipped = [], [], []
    for source in sources:
        try:
            caption, frames = check_clip(source, options)
        except ValueError as error:
            skipped.append((source.path, str(error)))
            continue
        usable.append((source, caption))
        counts.append(frames)
    report_skipped(skipped)
    if not usable:
        raise ValueError(no_clips_message(folder, len(sources), skipped, options))
    frames = min(counts)
    if frames < max(counts):
        log.warning("clips in %s are trimmed to %d frames, the shortest usable clip's length", folder, frames)
    return usable, frames, skipped


def report_skipped(skipped: Skipped) -> None:
    for path, reason in skipped:
        log.warning("skipping clip %s: %s", path.name, reason)


def no_clips_message(folder: Path, found: int, skipped: Skipped, options: ClipOptions) -> str:
    """Names the folder, what was in it and what a usable clip looks like."""
    seen = "; ".join(f"{p.name}: {r}" for p, r in skipped) if skipped else "no clip files or frame folders"
    return (f"no usable training clips in {folder}: found {found} candidate(s) ({seen}). Expected "
            f"name.mp4 / name.webm or a folder name/ of PNG frames, each with a non-empty name.txt "
            f"caption beside it, at least {MIN_FRAMES} frames, and an aspect ratio within "
            f"{options.max_aspect_ratio:g}x of the {options.width}x{options.height} bucket")


# --------------------------------------------------------------------------------------------
# Decoding and fitting frames
# --------------------------------------------------------------------------------------------

def iter_frames(source: ClipSource):
    """RGB ``uint8 [H, W, 3]`` frames in order, decoded lazily."""
    return _png_frames(source.path) if source.is_frames else _video_frames(source.path)


def _video_frames(path: Path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def _png_frames(folder: Path):
    from PIL import Image

    for path in sorted(folder.glob("*.png"), key=_natural_key):
        with Image.open(path) as image:
            yield np.asarray(image.convert("RGB"))


def _natural_key(path: Path) -> list:
    """``frame_2`` before ``frame_10``, as frame numbers are meant."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to cover ``width x height`` keeping the aspect, then crop the centre."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(Image.fromarray(frame), (width, height), method=Image.Resampling.BICUBIC,
                          centering=(0.5, 0.5))
    return np.asarray(fitted)


def clip_pixels(source: ClipSource, frames: int, options: ClipOptions) -> torch.Tensor:
    """The first ``frames`` frames fitted to the bucket, as ``[3, F, H, W]`` float in [-1, 1]."""
    fitted = []
    for frame in iter_frames(source):
        fitted.append(fit_frame(frame, options.width, options.height))
        if len(fitted) == frames:
            break
    if len(fitted) < frames:  # the clip changed since it was checked
        raise ValueError(f"{source.path.name}: decoded {len(fitted)} frames, expected {frames}")
    array = torch.from_numpy(np.stack(fitted)).permute(3, 0, 1, 2)
    return array.float() / 127.5 - 1.0


# --------------------------------------------------------------------------------------------
# Cache key, encoding, cache file
# --------------------------------------------------------------------------------------------

def _hash_file(digest, path: Path) -> None:
    digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def cache_key(folder: Path, options: ClipOptions, encoder_id: str, uncond_prompts: Sequence[str]) -> str:
    """A hash of every clip and caption's bytes (a frame folder by its PNGs), the options and the
    encoder identity: anything that changes the encoded tensors changes the key."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{sorted(asdict(options).items())}\0{encoder_id}\0"
                            f"{list(uncond_prompts)}\0".encode())
    for source in find_clips(folder):
        files = sorted(source.path.glob("*.png"), key=_natural_key) if source.is_frames else [source.path]
        digest.update(f"clip {source.path.name}\0".encode())
        for path in files + ([source.caption_path] if source.caption_path.is_file() else []):
            _hash_file(digest, path)
    return digest.hexdigest()[:24]


@torch.no_grad()
def encode_clips(usable: list[tuple[ClipSource, str]], frames: int, options: ClipOptions,
                 encode: Encode, batch: int) -> torch.Tensor:
    """Latents of every usable clip, ``batch`` clips per encoder call (pixels are made per batch,
    so memory holds one batch of frames at a time)."""
    latents = []
    for start in range(0, len(usable), batch):
        pixels = torch.stack([clip_pixels(s, frames, options) for s, _ in usable[start:start + batch]])
        latents.append(encode(pixels).detach().cpu())
    return torch.cat(latents)


@torch.no_grad()
def encode_captions(captions: list[str], encode_text: EncodeText,
                    uncond_prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contexts, uncond)``: each distinct caption and the dropout prompts, in one encoder call."""
    contexts = encode_text(list(captions) + list(uncond_prompts)).detach().cpu()
    return contexts[:len(captions)], contexts[len(captions):]


def save_cache(path: Path, data: ClipFolderData) -> None:
    """Write through a temporary file, so an interrupted write never leaves a cache that loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"version": CACHE_VERSION, "latents": data.latents.latents,
             "caption_index": data.latents.caption_index, "names": data.latents.names,
             "captions": data.text.captions, "contexts": data.text.contexts, "uncond": data.text.uncond,
             "skipped": [[str(p), r] for p, r in data.skipped], "frames": data.frames}
    atomic_save(state, path)


def load_cache(path: Path) -> ClipFolderData:
    state = torch.load(path, weights_only=True)
    latents = ClipLatents(state["latents"], state["caption_index"], list(state["names"]))
    text = TextTable(list(state["captions"]), state["contexts"], state["uncond"])
    skipped = [(Path(p), r) for p, r in state["skipped"]]
    return ClipFolderData(latents, text, skipped, int(state["frames"]), path)


def load_clip_folder(folder: Union[str, Path], options: ClipOptions, encode: Encode, encode_text: EncodeText,
                     encoder_id: str, *, cache_dir: Optional[Union[str, Path]] = None,
                     uncond_prompts: Sequence[str] = ("",), batch: int = 1) -> ClipFolderData:
    """The training data of a clip folder, from its cache when the inputs are unchanged.

    ``encode(pixels [B, 3, F, H, W] in [-1, 1])`` returns the (normalised) latents and
    ``encode_text(prompts)`` the DiT contexts ``[N, L, C]``; ``encoder_id`` names them (model files,
    dtype), since a different encoder must not reuse the cache. ``cache_dir`` defaults to
    ``folder/.wanflow_cache``. Skipped clips are logged on every call, cached or not.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"clip folder {folder} does not exist or is not a folder")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cache_root = Path(cache_dir) if cache_dir is not None else folder / ".wanflow_cache"
    path = cache_root / f"clips-{cache_key(folder, options, encoder_id, uncond_prompts)}.pt"
    if path.is_file():
        data = load_cache(path)
        report_skipped(data.skipped)
        log.info("loaded %d encoded clips of %s from %s", len(data.latents.names), folder, path)
        return data
    usable, frames, skipped = usable_clips(folder, options)
    captions = sorted({caption for _, caption in usable})
    latents = encode_clips(usable, frames, options, encode, batch)
    contexts, uncond = encode_captions(captions, encode_text, uncond_prompts)
    caption_index = torch.tensor([captions.index(caption) for _, caption in usable])
    names = [source.path.name for source, _ in usable]
    data = ClipFolderData(ClipLatents(latents, caption_index, names), TextTable(captions, contexts, uncond),
                          skipped, frames, path)
    save_cache(path, data)
    return data
