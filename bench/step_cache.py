"""Step cache on the WanNano models: forwards saved and time saved against fidelity to the exact run.

For T2V (Wan 2.2 expert pair), I2V (Wan 2.2 I2V pair) and R2V (Wan 2.1 VACE), a few prompts and
seeds, at 40 and 50 UniPC steps, each video is sampled once exactly (cache off) and once per
cache level, through the real nodes (loaders, text encode, Image/Reference to Video, the MoE
sampler's ``cache`` input, VAE decode). Reported per level, side by side with the exact run of
the same prompt and seed in the same process:

* forwards: DiT forwards of the exact run over those of the cached run, counted by forward
  hooks on the models (independent of the cache's own bookkeeping);
* time: the sampler node's CPU time, exact over cached (this process's clock, robust on a
  shared CPU; one thread);
* PSNR and SSIM of the decoded video against the exact run's (frames in [0, 1]; SSIM with an
  11-pixel Gaussian window on each colour channel, averaged over frames).

    python bench/step_cache.py --out bench/results/step_cache.md
    python bench/step_cache.py --tasks t2v --steps 40 --level try=0.1,0.2   # a custom level
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wanflow.nano.clips import random_placement, reference_picture, render_clip
from wanflow.nano.files import NANO
from wanflow.nano.vocabulary import FRAMES, HEIGHT, WIDTH, Scene
from wanflow.model_loaders.detect import NANO_DEFAULTS
from wanflow.nodes import comfy_adapter
from wanflow.nodes.image_to_video import WanFlowImageToVideo
from wanflow.nodes.latent_nodes import WanFlowEmptyVideoLatent
from wanflow.nodes.loader_nodes import WanFlowModelLoader, WanFlowTextEncoderLoader, WanFlowVAELoader
from wanflow.nodes.reference_to_video import WanFlowReferenceToVideo
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.nodes.text_nodes import WanFlowTextEncode
from wanflow.nodes.vae_nodes import WanFlowVAEDecode
from wanflow.samplers import step_cache
from wanflow.samplers.guidance import OFFICIAL_NEGATIVE_PROMPT
from wanflow.samplers.step_cache import CacheLevel
from wanflow.wan.dit import WanDiT
from bench_info import commit, cpu_model

SCENES = (Scene("red", "circle", "left", "white"), Scene("blue", "square", "up", "black"),
          Scene("yellow", "triangle", "right", "black"), Scene("green", "circle", "down", "white"))
DEFAULTS = {"t2v": NANO_DEFAULTS[("2.2", "t2v", "nano")], "i2v": NANO_DEFAULTS[("2.2", "i2v", "nano")],
            "r2v": NANO_DEFAULTS[("2.1", "vace", "nano")]}
MODELS = {"t2v": (NANO.t2v_high, NANO.t2v_low), "i2v": (NANO.i2v_high, NANO.i2v_low), "r2v": (NANO.vace, None)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["t2v", "i2v", "r2v"], choices=list(MODELS))
    p.add_argument("--steps", nargs="+", type=int, default=[40, 50])
    p.add_argument("--prompts", type=int, default=2, help=f"prompts (and seeds) per task, at most {len(SCENES)}")
    p.add_argument("--levels", nargs="*", default=list(step_cache.LEVELS),
                   help="cache levels to measure (default: all)")
    p.add_argument("--level", dest="custom", action="append", default=[], metavar="NAME=HIGH,LOW[,WARMUP,TAIL]",
                   help="also measure a custom level (thresholds per expert)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write a markdown report here")
    return p.parse_args()


def custom_level(text: str) -> tuple[str, CacheLevel]:
    name, _, values = text.partition("=")
    numbers = [float(v) for v in values.split(",")]
    high, low = numbers[:2]
    extra = {"warmup": int(numbers[2]), "tail": int(numbers[3])} if len(numbers) == 4 else {}
    return name, CacheLevel(high, low, **extra)


class ForwardCounter:
    """Counts forwards of the WanDiT modules it is attached to."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        self.count = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in models if isinstance(m, WanDiT)]

    def _hook(self, module, args) -> None:
        self.count += 1


@dataclass
class Case:
    """Everything a sampler call needs for one task, prompt and seed."""

    task: str
    caption: str
    seed: int
    high: object
    low: object
    conditioning: object
    latent: dict


def build_cases(task: str, prompts: int, vae, text) -> list[Case]:
    loader = WanFlowModelLoader()
    names = MODELS[task]
    high = loader.load(names[0], "default", "sdpa")["result"][0]
    low = loader.load(names[1], "default", "sdpa")["result"][0] if names[1] else None
    cases = []
    for index, scene in enumerate(SCENES[:prompts]):
        (cond,) = WanFlowTextEncode().encode(text, scene.caption, OFFICIAL_NEGATIVE_PROMPT)
        if task == "t2v":
            latent = WanFlowEmptyVideoLatent().create(vae, WIDTH, HEIGHT, FRAMES, 1)["result"][0]
        elif task == "i2v":
            start = render_clip(scene, random_placement(scene, np.random.default_rng(index)))[0]
            image = torch.from_numpy(start).float().div(255).unsqueeze(0)
            cond, latent = WanFlowImageToVideo().build(high, cond, vae, image, WIDTH, HEIGHT, FRAMES)["result"]
        else:
            picture = torch.from_numpy(reference_picture(scene)).float().div(255).unsqueeze(0)
            cond, latent = WanFlowReferenceToVideo().build(cond, vae, picture, WIDTH, HEIGHT, FRAMES, 1.0)["result"]
        cases.append(Case(task, scene.caption, index, high, low, cond, latent))
    return cases


@dataclass
class Run:
    frames: torch.Tensor      # [F, H, W, 3] in [0, 1]
    forwards: int
    cpu_s: float
    note: str


def sample(case: Case, steps: int, cache: object, vae) -> Run:
    defaults = DEFAULTS[case.task]
    models = [case.high.model] + ([case.low.model] if case.low is not None else [])
    counter = ForwardCounter(models)
    started = time.process_time()
    out = WanFlowMoESampler().sample(case.high, case.conditioning, case.latent, case.seed, steps, defaults.shift,
                                     "unipc", "unipc", defaults.guide_scale,
                                     defaults.guide_scale_low_noise or defaults.guide_scale, 0.0, 1.0,
                                     model_low=case.low, cache=cache)
    cpu = time.process_time() - started
    for handle in counter.handles:
        handle.remove()
    (frames,) = WanFlowVAEDecode().decode(out["result"][0], vae, False, 32, 8)
    return Run(frames.float().clamp(0, 1), counter.count, cpu, out["ui"]["text"][0])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over frames and colour channels (Gaussian window 11, sigma 1.5, data range 1)."""
    x, y = (v.permute(0, 3, 1, 2).reshape(-1, 1, v.shape[1], v.shape[2]).double() for v in (a, b))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    blur: Callable[[torch.Tensor], torch.Tensor] = lambda t: F.conv2d(t, window)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(value.mean())


@dataclass
class Row:
    task: str
    steps: int
    level: str
    thresholds: str
    forward_ratio: list[float]
    time_ratio: list[float]
    psnr: list[float]
    ssim: list[float]


def measure(args: argparse.Namespace, levels: dict[str, object], log: Callable[[str], None]) -> list[Row]:
    (vae,) = WanFlowVAELoader().load(NANO.vae)
    (text,) = WanFlowTextEncoderLoader().load(NANO.umt5, "default")
    rows: list[Row] = []
    for task in args.tasks:
        cases = build_cases(task, args.prompts, vae, text)
        for steps in args.steps:
            found = {name: Row(task, steps, name, describe(level), [], [], [], []) for name, level in levels.items()}
            for case in cases:
                exact = sample(case, steps, "off", vae)
                for name, level in levels.items():
                    run = sample(case, steps, level, vae)
                    row = found[name]
                    row.forward_ratio.append(exact.forwards / run.forwards)
                    row.time_ratio.append(exact.cpu_s / run.cpu_s)
                    row.psnr.append(psnr(run.frames, exact.frames))
                    row.ssim.append(ssim(run.frames, exact.frames))
                    log(f"{task} {steps} steps seed {case.seed} {name}: forwards {exact.forwards}->{run.forwards}, "
                        f"cpu {exact.cpu_s:.2f}->{run.cpu_s:.2f} s, PSNR {row.psnr[-1]:.2f} dB, "
                        f"SSIM {row.ssim[-1]:.4f} | {run.note}")
            rows.extend(found.values())
    return rows


def describe(level: object) -> str:
    if isinstance(level, CacheLevel):
        return f"{level.high:g} / {level.low:g}, warm-up {level.warmup}, tail {level.tail}"
    return ""


def table(rows: list[Row]) -> str:
    lines = ["| task | steps | level | thresholds high / low | forwards, exact / cached | CPU time, exact / cached "
             "| PSNR dB, mean (min) | SSIM, mean (min) |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.steps} | {r.level} | {r.thresholds} | {statistics.mean(r.forward_ratio):.2f}x "
                     f"| {statistics.mean(r.time_ratio):.2f}x | {statistics.mean(r.psnr):.1f} ({min(r.psnr):.1f}) "
                     f"| {statistics.mean(r.ssim):.3f} ({min(r.ssim):.3f}) |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start; "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32 on CPU")



def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    levels: dict[str, object] = {name: step_cache.cache_level(name) for name in args.levels}
    levels.update(custom_level(text) for text in args.custom)
    header = machine()
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="wanflow-bench-") as scratch:
        comfy_adapter.configure_headless(None, Path(scratch) / "in", Path(scratch) / "out", "cpu")
        comfy_adapter.set_headless_progress(False)
        rows = measure(args, levels, lambda text: print(text, flush=True))
    report = "\n".join([
        "# Step cache on the WanNano models: speed against fidelity to the exact run", "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; commit `{commit()}`",
        f"- Machine: {header}",
        f"- {args.prompts} prompt(s) and seed(s) per task, nano defaults (64x64, 17 frames, UniPC, shift 3, guidance "
        f"4/3 T2V, 3.5 I2V, 4 R2V); each cached run against the exact run of the same prompt and seed",
        f"- Command: `python bench/step_cache.py --tasks {' '.join(args.tasks)} --steps {' '.join(map(str, args.steps))} "
        f"--prompts {args.prompts}{''.join(' --level ' + t for t in args.custom)}`", "",
        table(rows), ""])
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
