"""Draw the loss curves of the shipped nano models (docs/nano_losses.png).

    python -m wanflow.train.plot_losses nano/training_logs docs/nano_losses.png

``train-nano`` copies each finished stage's ``loss.csv`` to ``training_logs/<run>.csv`` next to
the models it wrote.

Needs matplotlib (``pip install -e ".[docs]"``); training itself does not.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .loss_curve import read_loss_log, smooth
from .nano_recipe import STAGE_RUNS

STAGE_LOGS = tuple(run.replace("/", "_") for runs in STAGE_RUNS.values() for run in runs)
"""The logs ``train-nano`` copies next to the models, one per training run, in stage order."""
CONTINUES = {"vae_decoder": "vae", "vae_decoder_hardened": "vae_decoder",
             "vae_decoder_rescaled_clips": "vae_decoder_hardened",
             "vae_decoder_rescaled_frames": "vae_decoder_rescaled_clips",
             "t2v_high_uncond": "t2v_high", "t2v_low_uncond": "t2v_low",
             "i2v_high_first_frame": "i2v_high", "i2v_low_first_frame": "i2v_low",
             "vace_first_frame": "vace"}
"""Runs drawn as the continuation of another (same model, trained on)."""


def plot(folder: Path, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [(name, folder / f"{name}.csv") for name in STAGE_LOGS if (folder / f"{name}.csv").exists()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    ends: dict[str, int] = {}
    for name, path in logs:
        steps, losses = read_loss_log(path)
        if name in CONTINUES:
            steps = [s + ends.get(CONTINUES[name], 0) for s in steps]
        ends[name] = steps[-1] + 1 if steps else 0
        axis = axes[0] if name.startswith("vae") else axes[1]
        axis.plot(steps, smooth(losses), label=name)
    axes[0].set_title("VAE (weighted L1 + MSE [+ latent moments])")
    axes[1].set_title("DiTs (flow-matching MSE, each on its noise range)")
    for axis in axes:
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return [name for name, _ in logs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", type=Path, help="folder of <run>.csv loss logs (nano/training_logs)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print("plotted:", ", ".join(plot(args.logs, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
