"""What a wider WanNano VAE would cost to train: one training step of each phase of the ``vae``
stage (single frames at batch 8, 9-frame clips at batch 8, 17-frame clips at batch 4, 32x32 crops;
``train/nano_vae.py``) for several base widths, side by side with the shipped width 8, and the
stage time that follows from the recipe's step counts.

The shipped width-8 VAE cannot draw a 2 px outline of a 26-30 px triangle (docs/nano_findings.md), so the
next VAE may have to be wider; this says how much of the 3-hour budget that takes.

    python bench/nano_vae_width.py --out bench/results/nano_vae_width.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from bench_info import commit, cpu_model
from wanflow.train.nano_data import vae_batch
from wanflow.train.nano_vae import CLIP_PHASES, VAE_LOOP
from wanflow.train.vae_training import VAELossWeights, autoencoder_loss
from wanflow.wan.vae2_1 import WanVAE21, WanVAE21Config


def step_seconds(dim: int, frames: int, batch: int, repeats: int) -> float:
    """Median wall time of one optimiser step after a warm-up step."""
    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=dim))
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    data, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    times = []
    for _ in range(repeats + 1):
        pixels = vae_batch(data, batch, frames=frames).pixels
        start = time.perf_counter()
        loss, _ = autoencoder_loss(vae, pixels, VAELossWeights(), noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def phase_steps() -> list[tuple[int, int, int]]:
    """(frames, batch, steps) of each phase of the recipe's main VAE loop."""
    bounds = [start for start, _, _ in CLIP_PHASES[1:]] + [VAE_LOOP.steps]
    return [(frames, batch, stop - start) for (start, frames, batch), stop in zip(CLIP_PHASES, bounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", help="write the markdown report here")
    args = parser.parse_args()
    phases = phase_steps()
    rows, totals = [], {}
    for dim in args.widths:
        params = sum(p.numel() for p in WanVAE21(WanVAE21Config(dim=dim)).parameters()) / 1e6
        seconds = [step_seconds(dim, frames, batch, args.repeats) for frames, batch, _ in phases]
        totals[dim] = sum(s * steps for s, (_, _, steps) in zip(seconds, phases)) / 60
        rows.append((dim, params, seconds))
    base = dict((dim, seconds) for dim, _, seconds in rows).get(8)
    head = " | ".join(f"{frames} frame{'s' * (frames > 1)} × {batch} ({steps} steps)" for frames, batch, steps in phases)
    lines = [
        "# Training cost of a wider nano VAE",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; commit {commit()}; "
        f"{datetime.date.today().isoformat()}. `python bench/nano_vae_width.py`: seconds per training step "
        f"(median of {args.repeats}, after a warm-up), the ratio to width 8 in brackets, and the main loop's "
        "minutes at the recipe's step counts (the decoder passes and the latent fit come on top).",
        "",
        f"| width | parameters | {head} | main loop |",
        "|---|---|" + "---|" * len(phases) + "---|",
    ]
    for dim, params, seconds in rows:
        cells = [f"{s:.2f} s" + (f" ({s / b:.1f}x)" if base and dim != 8 else "") for s, b in zip(seconds, base or seconds)]
        lines.append(f"| {dim} | {params:.2f} M | " + " | ".join(cells) + f" | {totals[dim]:.0f} min |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
