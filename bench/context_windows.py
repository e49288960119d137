"""Context windows on the WanNano T2V pair: a clip 4x the model's window, with and without drift control.

The nano models were trained on 17-frame clips (5 latent frames). Each prompt is sampled at 65
frames (17 latent frames) through the real nodes (loaders, text encode, Empty Video Latent, the
MoE sampler with ``context_window`` = 17 pixel frames, overlap 8), anchored windows with each
blend and drift control on and off, plain (unanchored) windows with drift control on and off,
the plain 65-frame run (no windows) and the 17-frame run the models were trained for.

Decoding. The nano VAE itself does not carry past its training length: a real 65-frame nano clip
encoded and decoded whole comes back with the background turning blue after frame 17 (its
causal temporal cache drifts; the Wan VAEs have no such limit), and a piece of latent that starts
mid-clip decodes to noise (its first latent is taken for a picture latent). So the latent is
decoded in pieces the VAE knows, the same way for every setting: latent frame 0 followed by 4
consecutive later latent frames (windows of 4 over latent frames 1-16, overlap 2), 17 pixel
frames each; a piece is read on the 16 frames of its own 4 latents, the whole clip on the
pieces stitched (the first piece's 17 frames, then 4 pixel frames per latent frame each later
piece adds). Read back with ``nano.measure``:

* colour / direction: the object's colour name and motion direction match the prompt, over the
  stitched clip and in each piece (counts);
* ΔE: the object's colour (median of the pixels furthest from the background, as
  ``nano.measure`` reads it) in CIELAB in each piece against piece 1's, CIE76 ΔE, mean over
  the later pieces; the same for the background colour. (The pieces here are the decode pieces,
  4 latent frames each; with the sampler's anchored 17-frame windows they are its windows.)

    python bench/context_windows.py --out bench/results/context_windows.md
"""
from __future__ import annotations

import argparse
import datetime
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from wanflow.model_loaders.detect import NANO_DEFAULTS
from wanflow.nano.files import NANO
from wanflow.nano.measure import background_of, object_rgb, read_video, srgb_to_lab
from wanflow.nano.vocabulary import HEIGHT, WIDTH, Scene
from wanflow.nodes import comfy_adapter
from wanflow.nodes.latent_nodes import WanFlowEmptyVideoLatent
from wanflow.nodes.loader_nodes import WanFlowModelLoader, WanFlowTextEncoderLoader, WanFlowVAELoader
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.nodes.text_nodes import WanFlowTextEncode
from wanflow.nodes.vae_nodes import WanFlowVAEDecode
from wanflow.samplers.context_windows import window_starts
from wanflow.samplers.guidance import OFFICIAL_NEGATIVE_PROMPT

from load_memory import machine  # the bench scripts' one machine line (run from bench/)
from bench_info import commit

SCENES = (Scene("red", "square", "right", "black", "slowly"), Scene("blue", "circle", "up", "white", "slowly"),
          Scene("yellow", "triangle", "left", "black", "slowly"), Scene("green", "circle", "down", "white", "slowly"),
          Scene("red", "triangle", "down", "white", "slowly"), Scene("blue", "square", "left", "black", "slowly"))
FRAMES, WINDOW, OVERLAP = 65, 17, 8
DECODE_PIECE, DECODE_OVERLAP = 4, 2
T2V = NANO_DEFAULTS[("2.2", "t2v", "nano")]


@dataclass(frozen=True)
class Setting:
    label: str
    frames: int
    window: int = 0
    overlap: int = 0
    blend: str = "pyramid"
    drift: bool = True
    anchor: bool = True


def settings(window: int, overlap: int) -> list[Setting]:
    out = [Setting("17 frames, no windows (trained length)", 17), Setting(f"{FRAMES} frames, no windows", FRAMES)]
    for anchor, blends in ((True, ("pyramid", "uniform")), (False, ("pyramid",))):
        for blend in blends:
            for drift in (True, False):
                out.append(Setting(f"window {window}/{overlap}, {'anchor' if anchor else 'no anchor'}, {blend}, drift "
                                   f"control {'on' if drift else 'off'}", FRAMES, window, overlap, blend, drift, anchor))
    return out


def per_window(windows: Sequence[np.ndarray], scene: Scene) -> dict:
    colours, backgrounds, colour_hits, direction_hits = [], [], 0, 0
    for part in windows:
        reading = read_video(part)
        colour_hits += reading.colour == scene.colour
        direction_hits += reading.direction == scene.direction
        rgb = object_rgb(part)
        colours.append(None if rgb is None else srgb_to_lab(rgb))
        backgrounds.append(srgb_to_lab(background_of(part)))

    def drift(labs):
        later = [float(np.linalg.norm(lab - labs[0])) for lab in labs[1:] if lab is not None]
        return float(np.mean(later)) if labs[0] is not None and later else float("nan")

    return {"colour_hits": colour_hits, "direction_hits": direction_hits, "windows": len(windows),
            "object_de": drift(colours), "background_de": drift(backgrounds)}


class Pipeline:
    """The nano T2V pair, text encoder and VAE, loaded once through the loader nodes."""

    def __init__(self) -> None:
        loader = WanFlowModelLoader()
        self.high = loader.load(NANO.t2v_high, "default", "sdpa")["result"][0]
        self.low = loader.load(NANO.t2v_low, "default", "sdpa")["result"][0]
        (self.vae,) = WanFlowVAELoader().load(NANO.vae)
        (self.text,) = WanFlowTextEncoderLoader().load(NANO.umt5, "cpu")

    def sample(self, scene: Scene, seed: int, setting: Setting) -> torch.Tensor:
        (cond,) = WanFlowTextEncode().encode(self.text, scene.caption, OFFICIAL_NEGATIVE_PROMPT)
        latent = WanFlowEmptyVideoLatent().create(self.vae, WIDTH, HEIGHT, setting.frames, 1)["result"][0]
        out = WanFlowMoESampler().sample(self.high, cond, latent, seed, T2V.steps, T2V.shift, "unipc", "unipc",
                                         T2V.guide_scale, T2V.guide_scale_low_noise, 0.0, 1.0, model_low=self.low,
                                         context_window=setting.window, context_overlap=setting.overlap,
                                         context_blend=setting.blend, drift_control=setting.drift,
                                         context_anchor=setting.anchor)
        return out["result"][0]["samples"]

    def decode(self, raw: torch.Tensor) -> np.ndarray:
        (frames,) = WanFlowVAEDecode().decode({"samples": raw}, self.vae, False, 32, 8)
        return (frames.float().clamp(0, 1) * 255).round().byte().numpy()


def decode_windows(pipeline: Pipeline, raw: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """Pieces of the latent the nano VAE decodes, and the stitched clip (see the module docstring)."""
    if raw.shape[2] <= DECODE_PIECE + 1:
        frames = pipeline.decode(raw)
        return [frames], frames
    parts, stitched, end = [], [], 0
    for start in window_starts(raw.shape[2] - 1, DECODE_PIECE, DECODE_OVERLAP):
        frames = pipeline.decode(torch.cat([raw[:, :, :1], raw[:, :, 1 + start:1 + start + DECODE_PIECE]], dim=2))
        parts.append(frames[1:])
        new = start + DECODE_PIECE - end                  # latent frames this piece adds
        stitched.append(frames if start == 0 else frames[len(frames) - 4 * new:])
        end = start + DECODE_PIECE
    return parts, np.concatenate(stitched)


def run(scenes: Sequence[Scene], seed: int, window: int, overlap: int) -> list[tuple[Setting, list[dict]]]:
    pipeline = Pipeline()
    results = []
    for setting in settings(window, overlap):
        rows = []
        for i, scene in enumerate(scenes):
            raw = pipeline.sample(scene, seed + i, setting)
            parts, clip = decode_windows(pipeline, raw)
            reading = read_video(clip)
            row = {"colour": reading.colour == scene.colour, "direction": reading.direction == scene.direction}
            row.update(per_window(parts, scene))
            rows.append(row)
            print(setting.label, "|", scene.caption, "|", row, flush=True)
        results.append((setting, rows))
    return results


def table(results: list[tuple[Setting, list[dict]]]) -> str:
    lines = ["| setting | colour (clip) | direction (clip) | colour (per piece) | direction (per piece) | "
             "object ΔE to piece 1, mean (max) | background ΔE to piece 1, mean |",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help=f"at most {len(SCENES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=WINDOW, help="pixel frames")
    parser.add_argument("--overlap", type=int, default=OVERLAP, help="pixel frames")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="wanflow-bench-") as scratch:
        comfy_adapter.configure_headless(None, Path(scratch) / "in", Path(scratch) / "out", "cpu")
        comfy_adapter.set_headless_progress(False)
        results = run(SCENES[:args.prompts], args.seed, args.window, args.overlap)
    report = "\n".join([
        "# Context windows on the WanNano T2V pair: 65 frames, 4x the 17-frame window", "",
        "Method: `bench/context_windows.py` (decoded in pieces of latent frame 0 + 4 later latents; ΔE: CIELAB "
        "CIE76 of the object's colour in each piece against piece 1, mean over pieces 2-7, the worst prompt in "
        "brackets).", "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; commit `{commit()}`",
        f"- Machine: {machine()}; {torch.get_num_threads()} torch thread(s)",
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
