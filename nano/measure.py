"""Read a WanNano video back: background, object colour, shape, motion and filled area.

These readings are what the semantic tests and the training reports score. They look only at
the decoded pixels (uint8 ``[F, H, W, 3]``), never at latents or model internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .clips import IDEAL_FILL
from .vocabulary import BACKGROUNDS, COLOURS, NIGHT_BACKGROUND, Scene

BACKGROUND_NAMES = {**BACKGROUNDS, "night": NIGHT_BACKGROUND}
OBJECT_DISTANCE = 70.0
"""RGB distance from the background above which a pixel counts as part of the object."""
MIN_TRAVEL = 4.0
"""Pixels the centroid must travel over the clip to count as moving."""


@dataclass(frozen=True)
class Reading:
    """What a video shows, as far as the nano world goes."""

    background: str
    background_rgb: tuple[float, float, float]
    colour: Optional[str]
    shape: Optional[str]
    fill_ratio: float
    direction: Optional[str]
    travel: tuple[float, float]      # centroid displacement (x, y) over the clip, pixels
    area: float                       # mean object area per frame, pixels (alpha-weighted)

    def matches(self, scene: Scene) -> dict[str, bool]:
        return {"background": self.background == scene.background, "colour": self.colour == scene.colour,
                "direction": self.direction == scene.direction, "shape": self.shape == scene.shape}


def _nearest(value: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    distances = [np.linalg.norm(value - np.asarray(table[n], np.float32)) for n in names]
    return names[int(np.argmin(distances))]


def background_of(video: np.ndarray) -> np.ndarray:
    """Median colour of the border pixels of every frame."""
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3).astype(np.float32), axis=0)


def object_alpha(video: np.ndarray, background: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Per-pixel object coverage ``[F, H, W]`` in [0, 1]: the pixel's position between the
    background and the object colour (anti-aliased edges count fractionally)."""
    span = colour - background
    alpha = ((video.astype(np.float32) - background) @ span) / max(float(span @ span), 1.0)
    return np.clip(alpha, 0.0, 1.0)


def _fill_ratio(alpha: np.ndarray) -> float:
    ratios = []
    for frame in alpha:
        ys, xs = np.nonzero(frame > 0.5)
        if len(xs) < 4:
            continue
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        ratios.append(frame.sum() / box)
    return float(np.median(ratios)) if ratios else 0.0


def _direction(alpha: np.ndarray) -> tuple[Optional[str], tuple[float, float]]:
    weights = alpha.sum(axis=(1, 2))
    ys, xs = np.mgrid[0:alpha.shape[1], 0:alpha.shape[2]]
    valid = weights > 4
    if valid.sum() < 2:
        return None, (0.0, 0.0)
    cx = (alpha * xs).sum(axis=(1, 2))[valid] / weights[valid]
    cy = (alpha * ys).sum(axis=(1, 2))[valid] / weights[valid]
    k = max(1, len(cx) // 4)
    dx, dy = float(cx[-k:].mean() - cx[:k].mean()), float(cy[-k:].mean() - cy[:k].mean())
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None, (dx, dy)
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), (dx, dy)
    return ("down" if dy > 0 else "up"), (dx, dy)


def object_rgb(video: np.ndarray) -> Optional[np.ndarray]:
    """The object's colour as :func:`read_video` reads it: the median of the half of the
    far-from-background pixels furthest from it (None: no object)."""
    bg = background_of(video)
    pixels = video.reshape(-1, 3).astype(np.float32)
    distance = np.linalg.norm(pixels - bg, axis=1)
    far = distance > OBJECT_DISTANCE
    if far.sum() < 8:
        return None
    core, d = pixels[far], distance[far]
    return np.median(core[d >= np.percentile(d, 50)], axis=0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of 8-bit sRGB colours ``[..., 3]``: ΔE (CIE76) is the distance between two."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def read_video(video: np.ndarray) -> Reading:
    """Read a uint8 ``[F, H, W, 3]`` video of the nano world."""
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"read_video: expected uint8 [F, H, W, 3], got shape {video.shape}")
    bg = background_of(video)
    pixels = video.reshape(-1, 3).astype(np.float32)
    far = np.linalg.norm(pixels - bg, axis=1) > OBJECT_DISTANCE
    if far.sum() < 8:
        return Reading(_nearest(bg, BACKGROUND_NAMES), tuple(bg), None, None, 0.0, None, (0.0, 0.0), 0.0)
    core = pixels[far]
    distance = np.linalg.norm(core - bg, axis=1)
    colour_rgb = np.median(core[distance >= np.percentile(distance, 50)], axis=0)
    alpha = object_alpha(video, bg, colour_rgb)
    fill = _fill_ratio(alpha)
    shape = min(IDEAL_FILL, key=lambda s: abs(IDEAL_FILL[s] - fill))
    direction, travel = _direction(alpha)
    return Reading(_nearest(bg, BACKGROUND_NAMES), tuple(float(v) for v in bg), _nearest(colour_rgb, COLOURS),
                   shape, fill, direction, travel, float(alpha.sum(axis=(1, 2)).mean()))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 pictures or videos of the same shape (a perfect match reads 168 dB)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(float(mse), 1e-10)))
