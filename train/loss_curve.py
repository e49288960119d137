"""A loss-curve picture drawn with Pillow (the *Train LoRA* node's IMAGE output; no matplotlib)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def read_loss_log(path: Path) -> tuple[list[int], list[float]]:
    """``(steps, losses)`` of a training loop's ``loss.csv`` (empty lists if it does not exist)."""
    if not Path(path).is_file():
        return [], []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]


def smooth(values: Sequence[float], window: int = 25) -> list[float]:
    """Trailing moving average (the first values average what came before them)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve_picture(series: Mapping[str, tuple[Sequence[int], Sequence[float]]], width: int = 640,
                       height: int = 320) -> np.ndarray:
    """``uint8 [height, width, 3]``: each series' smoothed loss against step, log-scaled loss axis,
    with a legend and the axis ranges written on the picture."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 10, 10, height - 30
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    curves = {name: (steps, smooth(losses)) for name, (steps, losses) in series.items() if steps}
    if not curves:
        draw.text((left + 10, top + 10), "no loss logged yet", fill=(0, 0, 0))
        return np.asarray(image)
    max_step = max(max(steps) for steps, _ in curves.values()) or 1
    values = [max(v, 1e-8) for _, losses in curves.values() for v in losses]
    low, high = math.log10(min(values)), math.log10(max(values))
    high = high if high > low else low + 1

    def point(step: int, loss: float) -> tuple[float, float]:
        x = left + (right - left) * step / max_step
        y = bottom - (bottom - top) * (math.log10(max(loss, 1e-8)) - low) / (high - low)
        return x, y

    for index, (name, (steps, losses)) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        draw.line([point(s, v) for s, v in zip(steps, losses)], fill=colour, width=2)
        draw.text((right - 120, top + 6 + 14 * index), name, fill=colour)
    draw.text((4, top), f"{10 ** high:.3g}", fill=(0, 0, 0))
    draw.text((4, bottom - 12), f"{10 ** low:.3g}", fill=(0, 0, 0))
    draw.text((left, bottom + 8), "step 0", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 8), f"{max_step}", fill=(0, 0, 0))
    return np.asarray(image)
