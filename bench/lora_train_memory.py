"""Peak memory while training a LoRA on a frozen fp8 base, with and without gradient checkpointing.

The model is a 2-block slice of Wan 2.1 T2V-1.3B (real widths: dim 1536, FFN 8960, 12 heads,
text 4096; real key names), written once as a bf16 ComfyUI-layout file and loaded with
``storage_dtype="fp8_e4m3fn_scaled"`` (block Linears fp8 + scale, the rest bf16), as a user
training on an fp8 checkpoint would. Each case runs in a fresh subprocess:

1. warm up: load the slice, train one step, free it all. The libraries' one-off state (code pages,
   OpenMP and MKL buffers, the same for any model size) then counts in the baseline, not as
   training memory;
2. record RSS (baseline), load the slice, reset the peak-RSS counter (``/proc/self/clear_refs``),
   so the load's own transient does not count;
3. train ``--steps`` LoRA steps (rank 16 on every attention and FFN Linear, AdamW, batch 1) on a
   random latent ``[16, F, H, W]`` and a caption context of CAPTION_TOKENS real rows zero-padded
   to 512, as the umT5 encoder hands every prompt to the DiT;
4. report the peak RSS (VmHWM) minus the baseline, against the bytes of the base weights plus the
   LoRA parameters, their gradients and AdamW's two moments.

The acceptance figure (LoRA-training issue) is that ratio <= 1.3 with checkpointing on.

The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc otherwise serves the per-layer
weight casts (8-17 MB each) from its heap and keeps them after they are freed, so RSS would count
memory that is no longer in use. The report shows the default allocator too.

    python bench/lora_train_memory.py --out bench/results/lora_train_memory.md
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from load_memory import _rss_kib  # the same /proc/self/status reader as the load bench
from bench_info import commit

LATENT = (16, 3, 16, 16)
"""Latent of one training clip: 9 frames at 128x128 (192 tokens), a size whose activations are
small next to the weights, so the figure shows what the trainer itself keeps."""


CAPTION_TOKENS = 48
"""Real rows of the caption context (a typical style caption; the other 464 rows are zeros)."""

ALLOCATORS = {"mmap threshold 64 KiB": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc default": {}}


def slice_config():
    from wanflow.wan.dit_config import WAN21_T2V_1_3B

    return dataclasses.replace(WAN21_T2V_1_3B, num_layers=2)


def write_slice(path: Path) -> None:
    from safetensors.torch import save_file

    from wanflow.wan.dit import WanDiT

    torch.manual_seed(0)
    model = WanDiT(slice_config())
    save_file({"model.diffusion_model." + k: (torch.randn_like(v) * 0.02).to(torch.bfloat16).contiguous()
               for k, v in model.state_dict().items()}, str(path))


def run_case(path: Path, checkpointing: bool, steps: int, latent: tuple[int, ...]) -> dict:
    import gc

    from wanflow.model_loaders.dit_loader import load_dit

    warm = load_dit(path, "fp8_e4m3fn_scaled").model
    data = clip_data(warm.config.text_dim, latent)  # the input clip: data, not training memory
    train_steps(warm, data, checkpointing, 1)       # warm-up, then freed
    del warm
    gc.collect()
    baseline = _rss_kib("VmRSS")
    model = load_dit(path, "fp8_e4m3fn_scaled").model
    base_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the load's transient is not training
    after_load = _rss_kib("VmRSS")
    lora_params, seconds = train_steps(model, data, checkpointing, steps)
    trainer_state = lora_params * 4 * 4  # fp32 parameters, gradients, AdamW exp_avg and exp_avg_sq
    peak = _rss_kib("VmHWM")
    return {"base_bytes": base_bytes, "trainer_state_bytes": trainer_state, "baseline_kib": baseline,
            "after_load_kib": after_load, "peak_kib": peak, "seconds_per_step": seconds,
            "ratio": (peak - baseline) * 1024 / (base_bytes + trainer_state)}


def clip_data(text_dim: int, latent: tuple[int, ...]):
    """One random clip and its caption context (duck-typed ``LatentData`` and ``TextData``)."""
    class Data:
        latents = torch.randn(1, *latent)
        caption_index = torch.zeros(1, dtype=torch.long)
        i2v_y = None
        contexts = torch.cat([torch.randn(1, CAPTION_TOKENS, text_dim) * 0.1,
                              torch.zeros(1, 512 - CAPTION_TOKENS, text_dim)], dim=1)
        uncond = torch.zeros(1, 512, text_dim)

    return Data


def train_steps(model, data, checkpointing: bool, steps: int) -> tuple[int, float]:
    """Train ``steps`` LoRA steps; returns (LoRA parameters, seconds per step)."""
    from wanflow.train.loop import LoopConfig
    from wanflow.train.lora_network import LoraConfig, LoraNetwork
    from wanflow.train.lora_trainer import LoraTrainConfig, train_lora

    lora = LoraConfig(rank=16, alpha=16.0)
    cfg = LoraTrainConfig(shift=5.0, lora=lora, loop=LoopConfig(steps=steps, lr=1e-4, warmup=1,
                                                                checkpoint_every=10 ** 9),
                          gradient_checkpointing=checkpointing)
    lora_params = sum(p.numel() for p in LoraNetwork.for_model(model, lora).parameters())
    with tempfile.TemporaryDirectory() as work:
        began = time.time()
        train_lora(model, data, data, cfg, Path(work), quiet=True)
        seconds = (time.time() - began) / steps
    return lora_params, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--case", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.file, args.case == "on", args.steps, LATENT)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wan2.1_t2v_1.3B_2block_slice_bf16.safetensors"
        write_slice(path)
        for allocator, env in ALLOCATORS.items():
            for case in ("on", "off"):
                out = subprocess.run([sys.executable, __file__, "--case", case, "--file", str(path),
                                      "--steps", str(args.steps)], capture_output=True, text=True, check=True,
                                     env={**os.environ, **env})
                results[(allocator, case)] = json.loads(out.stdout.strip().splitlines()[-1])
    report = render(results, args.steps)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


def render(results: dict, steps: int) -> str:
    gib = 1024 ** 3
    lines = [
        "# Peak memory while training a LoRA on an fp8 base",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit()}",
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "- command: `python bench/lora_train_memory.py --out bench/results/lora_train_memory.md`",
        "- model: 2-block slice of Wan 2.1 T2V-1.3B (dim 1536, FFN 8960, text 4096), loaded from bf16 with "
        "`storage_dtype=fp8_e4m3fn_scaled`",
        f"- LoRA rank 16 on every attention and FFN Linear; AdamW; batch 1; latent {list(LATENT)}; "
        f"{steps} steps; caption context {CAPTION_TOKENS} real tokens zero-padded to 512; each case in a fresh "
        "subprocess",
        "- each child first trains one step on its own copy and frees it (the libraries' one-off state counts in "
        "the baseline); ratio = (peak RSS while training - baseline) / (base weights + LoRA params, grads and "
        "AdamW moments); the peak counter is reset after loading",
        "",
        "| allocator | gradient checkpointing | base weights GB | LoRA + optimiser GB | peak - baseline GB | ratio "
        "| s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for (allocator, case), r in results.items():
        lines.append(f"| {allocator} | {case} | {r['base_bytes'] / gib:.3f} | {r['trainer_state_bytes'] / gib:.3f} | "
                     f"{(r['peak_kib'] - r['baseline_kib']) / 1024 ** 2:.3f} | **{r['ratio']:.2f}** | "
                     f"{r['seconds_per_step']:.2f} |")
    for allocator in ALLOCATORS:
        on, off = results[(allocator, "on")], results[(allocator, "off")]
        lines += ["", f"{allocator}: checkpointing on / off: memory ratio {on['ratio'] / off['ratio']:.2f}, "
                      f"time per step {on['seconds_per_step'] / off['seconds_per_step']:.2f}."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
