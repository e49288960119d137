"""Draw WanNano clips: one anti-aliased shape moving in a straight line, deterministic from a seed.

Shapes are drawn from signed distance fields (coverage = 0.5 - distance, clipped), so edges are
smooth and the fill ratio of each shape in its bounding box is close to the ideal one:
circle pi/4, square 1, triangle 1/2. Styles are the two looks the style LoRAs learn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .vocabulary import (BACKGROUNDS, COLOURS, DIRECTIONS, FRAMES, HEIGHT, NIGHT_BACKGROUND, SPEEDS,
                         WIDTH, Scene)

STYLES = ("plain", "outline", "night")
SIZE_RANGE = (26.0, 30.0)
"""Side of the shape's bounding box in pixels at 64x64. About 3.5 latent cells (the VAE
compresses 8x8 pixels into one): at 18-22 px (generation 2) a triangle covered two cells and
came back from the VAE alone with a circle's fill ratio in a third of the clips, and the DiTs
drew every shape as the same blob."""
MARGIN = 2.0
OUTLINE_WIDTH = 2.0
IDEAL_FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}


@dataclass(frozen=True)
class Placement:
    """Where the shape starts (centre, pixels) and how big it is."""

    x: float
    y: float
    size: float


def shape_distance(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) from pixel centres to the shape's edge."""
    dx, dy = xs - cx, ys - cy
    half = size / 2
    if shape == "circle":
        return np.hypot(dx, dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    if shape == "triangle":  # apex up, base at the bottom of the bounding box
        norm = np.hypot(2.0, 1.0)
        left = (-2.0 * dx - dy - half) / norm       # edge from bottom-left to apex
        right = (2.0 * dx - dy - half) / norm       # edge from bottom-right to apex
        bottom = dy - half
        return np.maximum(np.maximum(left, right), bottom)
    raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")


def coverage(shape: str, cx: float, cy: float, size: float, style: str = "plain",
             width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Fraction of each pixel covered by the shape ``[H, W]`` in [0, 1]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    d = shape_distance(shape, xs, ys, cx, cy, size)
    filled = np.clip(0.5 - d, 0.0, 1.0)
    if style == "outline":
        return filled - np.clip(0.5 - (d + OUTLINE_WIDTH), 0.0, 1.0)
    return filled


def background_colour(scene: Scene, style: str = "plain") -> tuple[int, int, int]:
    return NIGHT_BACKGROUND if style == "night" else BACKGROUNDS[scene.background]


def render_frame(scene: Scene, cx: float, cy: float, size: float, style: str = "plain",
                 background: Optional[tuple[int, int, int]] = None) -> np.ndarray:
    """One frame ``[H, W, 3]`` uint8 with the shape centred at (cx, cy)."""
    alpha = coverage(scene.shape, cx, cy, size, style)[..., None]
    bg = np.asarray(background if background is not None else background_colour(scene, style), np.float32)
    fg = np.asarray(COLOURS[scene.colour], np.float32)
    return np.rint(bg * (1 - alpha) + fg * alpha).astype(np.uint8)


def centre_at(scene: Scene, start: Placement, frame: int) -> tuple[float, float]:
    ux, uy = DIRECTIONS[scene.direction]
    step = SPEEDS[scene.speed] * frame
    return start.x + ux * step, start.y + uy * step


def render_clip(scene: Scene, start: Placement, style: str = "plain", frames: int = FRAMES) -> np.ndarray:
    """A clip ``[F, H, W, 3]`` uint8 of the scene, the shape starting at ``start``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    return np.stack([render_frame(scene, *centre_at(scene, start, f), start.size, style)
                     for f in range(frames)])


def random_placement(scene: Scene, rng: np.random.Generator, frames: int = FRAMES) -> Placement:
    """A start position and size that keep the whole path inside the frame."""
    size = float(rng.uniform(*SIZE_RANGE))
    travel = SPEEDS[scene.speed] * (frames - 1)
    ux, uy = DIRECTIONS[scene.direction]
    lo, hi = MARGIN + size / 2, WIDTH - MARGIN - size / 2

    def along(u: int) -> float:
        if u > 0:
            return float(rng.uniform(lo, hi - travel))
        if u < 0:
            return float(rng.uniform(lo + travel, hi))
        return float(rng.uniform(lo, hi))

    return Placement(along(ux), along(uy), size)


PATH_JITTER = 2.0
"""Pixels a centred path may be off the centre line, each way (a quarter of a latent cell)."""


def centred_placement(scene: Scene, rng: np.random.Generator, frames: int = FRAMES) -> Placement:
    """A start position whose path is centred in the frame (jittered by ``PATH_JITTER``), and a
    random size: the placement of the T2V, R2V and style-LoRA clips.

    A caption names no place, so with :func:`random_placement` a prompt stands for objects
    anywhere on a 32 px stretch across their path (four latent cells), and the tiny experts
    drew the average of those places: rounded squares that break into lobes. Centred paths leave
    the prompt one place to draw. I2V clips keep :func:`random_placement`: the first frame says
    where the object is."""
    size = float(rng.uniform(*SIZE_RANGE))
    travel = SPEEDS[scene.speed] * (frames - 1)
    ux, uy = DIRECTIONS[scene.direction]
    x = WIDTH / 2 - ux * travel / 2 + rng.uniform(-PATH_JITTER, PATH_JITTER)
    y = HEIGHT / 2 - uy * travel / 2 + rng.uniform(-PATH_JITTER, PATH_JITTER)
    return Placement(float(x), float(y), size)


def reference_picture(scene: Scene, size: float = 28.0, background: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """The object alone, centred on a plain grey picture ``[H, W, 3]`` uint8 (an R2V reference)."""
    return render_frame(scene, WIDTH / 2, HEIGHT / 2, size, background=background)


def to_model_pixels(clip: np.ndarray) -> "np.ndarray":
    """uint8 ``[F, H, W, 3]`` -> float32 ``[3, F, H, W]`` in [-1, 1], the VAE's input."""
    return (clip.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)
