"""One resumable optimisation loop shared by every training stage.

A stage supplies ``loss_fn(step) -> (loss, parts)``; the loop owns the optimiser, the learning
rate schedule (linear warm-up, cosine decay), gradient clipping, the progress bar, the loss log
(CSV: step, seconds, loss and its parts) and checkpoints (model, optimiser, RNG state) written
every ``checkpoint_every`` steps, so a stopped stage resumes where it was.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

LossFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 10


def learning_rate(cfg: LoopConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` through a temporary file: a stopped run never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(name: str, module: torch.nn.Module, params: Iterable[torch.nn.Parameter], loss_fn: LossFn,
          cfg: LoopConfig, work: Path, generators: dict[str, torch.Generator],
          quiet: bool = False) -> None:
    """Run ``cfg.steps`` optimisation steps of ``module``, resuming from ``work/checkpoint.pt``.

    ``generators`` are the stage's random streams; their states are checkpointed too, so a resumed
    run draws the same batches as an uninterrupted one.
    """
    work.mkdir(parents=True, exist_ok=True)
    params = [p for p in params if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    checkpoint, log_path = work / "checkpoint.pt", work / "loss.csv"
    start = _resume(checkpoint, module, optimiser, generators)
    if start >= cfg.steps:
        return
    module.train()
    _truncate_log(log_path, start)
    log_file = open(log_path, "a" if start else "w", newline="")
    writer = csv.writer(log_file)
    began = time.time()
    header_written = start > 0
    bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=quiet, dynamic_ncols=True)
    try:
        for step in range(start, cfg.steps):
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(cfg, step)
            loss, parts = loss_fn(step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimiser.step()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                if not header_written:
                    writer.writerow(["step", "seconds", "loss", *parts])
                    header_written = True
                writer.writerow([step, f"{time.time() - began:.1f}", f"{loss.item():.6f}",
                                 *(f"{v:.6f}" for v in parts.values())])
                log_file.flush()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.update(1)
            if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
                _save(checkpoint, step + 1, module, optimiser, generators)
    finally:
        bar.close()
        log_file.close()
    module.eval()


def _truncate_log(path: Path, start: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not start or not path.exists():
        return
    rows = list(csv.reader(path.read_text().splitlines()))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def _save(path: Path, step: int, module: torch.nn.Module, optimiser: torch.optim.Optimizer,
          generators: dict[str, torch.Generator]) -> None:
    atomic_save({"step": step, "model": module.state_dict(), "optimiser": optimiser.state_dict(),
                  "generators": {k: g.get_state() for k, g in generators.items()},
                  "torch_rng": torch.get_rng_state()}, path)


def _resume(path: Path, module: torch.nn.Module, optimiser: torch.optim.Optimizer,
            generators: dict[str, torch.Generator]) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    for key, gen in generators.items():
        gen.set_state(state["generators"][key])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
