"""Context windows on the WanNano T2V pair: a clip 4x the model's window, with and without drift control.

The nano models were trained on 17-frame clips (5 latent frames). Each prompt is rendered at 65
frames (17 latent frames) through the real template and nodes, with the MoE sampler's
``context_window`` = 17 pixel frames, for each blend and with drift control on and off, plus the
plain 65-frame run (no windows) and the 17-frame run the model was trained for. Read back from
the decoded frames (``nano.measure``):

* colour / direction: the object's colour name and motion direction over the whole clip match
  the prompt (counts over the prompts);
* per-window colour and direction: the same, read on each latent window's pixel frames;
* ΔE: the object's colour (median of the pixels furthest from the background, as
  ``nano.measure`` reads it) in CIELAB in each window against the first window's, CIE76 ΔE,
  mean over the later windows; the same for the background colour.

    python bench/context_windows.py --out bench/results/context_windows.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from wanflow.nano.measure import OBJECT_DISTANCE, background_of, read_video
from wanflow.nano.vocabulary import Scene
from wanflow.runner import nano_eval
from wanflow.samplers.context_windows import window_starts

SCENES = (Scene("red", "square", "right", "black", "slowly"), Scene("blue", "circle", "up", "white", "slowly"),
          Scene("yellow", "triangle", "left", "black", "slowly"), Scene("green", "circle", "down", "white", "slowly"))
FRAMES, WINDOW, OVERLAP = 65, 17, 8


@dataclass(frozen=True)
class Setting:
    label: str
    overrides: tuple[str, ...]
    windowed: bool


def settings(window: int, overlap: int) -> list[Setting]:
    out = [Setting("17 frames, no windows (trained length)", (), False),
           Setting(f"{FRAMES} frames, no windows", (f"7.length={FRAMES}",), False)]
    for blend in ("pyramid", "uniform"):
        for drift in (True, False):
            out.append(Setting(f"{FRAMES} frames, window {window}/{overlap}, {blend}, drift control {'on' if drift else 'off'}",
                               (f"7.length={FRAMES}", f"8.context_window={window}", f"8.context_overlap={overlap}",
                                f"8.context_blend={blend}", f"8.drift_control={str(drift).lower()}"), True))
    return out


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of 8-bit sRGB colours ``[..., 3]``."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def object_rgb(video: np.ndarray) -> Optional[np.ndarray]:
    """The object's colour as ``nano.measure.read_video`` reads it (None: no object found)."""
    bg = background_of(video)
    pixels = video.reshape(-1, 3).astype(np.float32)
    distance = np.linalg.norm(pixels - bg, axis=1)
    far = distance > OBJECT_DISTANCE
    if far.sum() < 8:
        return None
    core, d = pixels[far], distance[far]
    return np.median(core[d >= np.percentile(d, 50)], axis=0)


def pixel_ranges(latent_frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """Pixel frames ``[first, last]`` of each latent window (latent 0 = pixel 0, latent j = 4j-3..4j)."""
    return [(0 if s == 0 else 4 * s - 3, 4 * (s + length - 1)) for s in window_starts(latent_frames, length, overlap)]


def per_window(frames: np.ndarray, ranges: Sequence[tuple[int, int]], scene: Scene) -> dict:
    colours, backgrounds, colour_hits, direction_hits = [], [], 0, 0
    for first, last in ranges:
        part = frames[first:last + 1]
        reading = read_video(part)
        colour_hits += reading.colour == scene.colour
        direction_hits += reading.direction == scene.direction
        rgb = object_rgb(part)
        colours.append(None if rgb is None else srgb_to_lab(rgb))
        backgrounds.append(srgb_to_lab(background_of(part)))
    def drift(labs):
        if labs[0] is None:
            return float("nan")
        return float(np.mean([np.linalg.norm(lab - labs[0]) if lab is not None else np.nan for lab in labs[1:]]))
    return {"colour_hits": colour_hits, "direction_hits": direction_hits, "windows": len(ranges),
            "object_de": drift(colours), "background_de": drift(backgrounds)}


def run(scenes: Sequence[Scene], seed: int, window: int, overlap: int) -> list[tuple[Setting, list[dict]]]:
    from wanflow.samplers.context_windows import latent_overlap, latent_window
    ranges = pixel_ranges((FRAMES - 1) // 4 + 1, latent_window(window), latent_overlap(overlap))
    results = []
    for setting in settings(window, overlap):
        rows = []
        for i, scene in enumerate(scenes):
            frames = nano_eval.render("t2v", scene.caption, seed + i, list(setting.overrides))
            reading = read_video(frames)
            row = {"colour": reading.colour == scene.colour, "direction": reading.direction == scene.direction}
            row.update(per_window(frames, ranges if len(frames) == FRAMES else [(0, len(frames) - 1)], scene))
            rows.append(row)
            print(setting.label, scene.caption, row, flush=True)
        results.append((setting, rows))
    return results


def table(results: list[tuple[Setting, list[dict]]]) -> str:
    lines = ["| setting | colour (clip) | direction (clip) | colour (per window) | direction (per window) | "
             "object ΔE to window 1, mean (max) | background ΔE to window 1, mean |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for setting, rows in results:
        n = len(rows)
        windows = sum(r["windows"] for r in rows)
        de = [r["object_de"] for r in rows]
        bg = [r["background_de"] for r in rows]
        de_text = "-" if windows == n else f"{np.nanmean(de):.1f} ({np.nanmax(de):.1f})"
        bg_text = "-" if windows == n else f"{np.nanmean(bg):.1f}"
        lines.append(f"| {setting.label} | {sum(r['colour'] for r in rows)}/{n} | {sum(r['direction'] for r in rows)}/{n} "
                     f"| {sum(r['colour_hits'] for r in rows)}/{windows} | {sum(r['direction_hits'] for r in rows)}/{windows} "
                     f"| {de_text} | {bg_text} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=len(SCENES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=WINDOW, help="pixel frames")
    parser.add_argument("--overlap", type=int, default=OVERLAP, help="pixel frames")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc)
    results = run(SCENES[:args.prompts], args.seed, args.window, args.overlap)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    report = "\n".join([
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; commit `{commit}`",
        f"- Machine: {machine()}",
        f"- {args.prompts} prompt(s), seeds {args.seed}..{args.seed + args.prompts - 1}; nano T2V pair, 64x64, 20 UniPC steps, "
        f"shift 3, guidance 4/3; {FRAMES} frames = {(FRAMES - 1) // 4 + 1} latent frames",
        f"- Command: `python bench/context_windows.py --prompts {args.prompts} --window {args.window} --overlap {args.overlap}`",
        "", table(results), ""])
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
