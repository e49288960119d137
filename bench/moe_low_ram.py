"""Peak RAM of a two-expert run: experts kept in RAM vs "reload from disk" (the idle expert waits in its file).

Two synthetic experts of the Wan 2.1 T2V-1.3B architecture (30 blocks, dim 1536, bf16 ComfyUI
files named as a Wan 2.2 high/low pair) are loaded through the model loader node and sampled
through the MoE sampler node on the CPU: 4 steps on a 1-frame 32x32 latent, experts switching at
half, a real-length 512-token context. Each mode runs in a fresh subprocess with
``MALLOC_MMAP_THRESHOLD_=65536`` (freed weights go back to the system at once, so the peak is what
the run really holds); the peak RSS (VmHWM) is taken against the RSS before the first load.

Target (ComfyUI-citizen issue): in the low-RAM mode the peak stays <= 1.2x one expert's bytes plus
the working set, where the working set is what a one-expert run holds beyond its weights.

    python bench/moe_low_ram.py --out bench/results/moe_low_ram.md
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

HIGH, LOW = "wan2.2_t2v_high_noise_1.3B_synthetic.safetensors", "wan2.2_t2v_low_noise_1.3B_synthetic.safetensors"
MODES = {"keep in RAM, two experts": ("keep", True), "reload from disk, two experts": ("reload from disk", True),
         "one expert (working set)": ("keep", False)}


def write_experts(folder: Path) -> None:
    from safetensors.torch import save_file

    from wanflow.wan.dit import WanDiT
    from wanflow.wan.dit_config import WAN21_T2V_1_3B

    for seed, name in enumerate((HIGH, LOW)):
        torch.manual_seed(seed)
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in WanDiT(dataclasses.replace(WAN21_T2V_1_3B)).state_dict().items()}
        save_file({"model.diffusion_model." + k: (torch.randn(shape) * 0.02).to(torch.bfloat16)
                   for k, shape in shapes.items()}, str(folder / name))


def run_case(models: Path, mode: str, two: bool) -> dict:
    from wanflow.nodes import comfy_adapter as ca
    from wanflow.nodes.loader_nodes import WanFlowModelLoader
    from wanflow.nodes.sampler_nodes import WanFlowMoESampler
    from wanflow.samplers.conditioning import WanConditioning

    ca.configure_headless(models.parent, models.parent, models.parent / "out")
    ca.set_headless_progress(False)
    baseline = _rss_kib("VmRSS")
    began = time.perf_counter()
    loader = WanFlowModelLoader()
    high = loader.load(HIGH, "default", "sdpa", mode)["result"][0]
    low = loader.load(LOW, "default", "sdpa", mode)["result"][0] if two else None
    expert_bytes = sum(t.numel() * t.element_size() for t in high.model.state_dict().values())
    loaded = _rss_kib("VmRSS")
    context = torch.cat([torch.randn(1, 48, 4096) * 0.1, torch.zeros(1, 464, 4096)], dim=1)
    cond = WanConditioning(context=context, negative_context=torch.zeros(1, 512, 4096))
    WanFlowMoESampler().sample(high, cond, {"samples": torch.zeros(1, 16, 1, 4, 4)}, seed=0, steps=4, shift=5.0,
                               solver="euler", scheduler="simple", cfg_high=4.0, cfg_low=3.0, boundary=0.875,
                               denoise=1.0, model_low=low)
    return {"expert_bytes": expert_bytes, "baseline_kib": baseline, "after_load_kib": loaded,
            "peak_kib": _rss_kib("VmHWM"), "seconds": time.perf_counter() - began}


def report(results: dict, args_line: str) -> str:
    gb = 1e9
    one = results["one expert (working set)"]
    expert = one["expert_bytes"]
    working = (one["peak_kib"] - one["baseline_kib"]) * 1024 - expert
    lines = [
        "# Peak RAM of a two-expert run: kept in RAM vs reload from disk", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        f"- command: `{args_line}`",
        "- experts: two synthetic Wan 2.1 T2V-1.3B-architecture files (bf16, ComfyUI layout), loaded by the model "
        "loader node, sampled by the MoE sampler node on the CPU (4 Euler steps, switch at half, CFG, "
        "latent [1, 16, 1, 4, 4], 512-token context); each case in a fresh subprocess with "
        "MALLOC_MMAP_THRESHOLD_=65536",
        f"- one expert: {expert / gb:.2f} GB; working set (one-expert run's peak beyond its weights): "
        f"{working / gb:.2f} GB", "",
        "| mode | RSS after loading GB | peak - baseline GB | peak / (one expert + working set) | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        peak = (r["peak_kib"] - r["baseline_kib"]) * 1024
        loaded = (r["after_load_kib"] - r["baseline_kib"]) * 1024
        lines.append(f"| {name} | {loaded / gb:.2f} | {peak / gb:.2f} | **{peak / (expert + working):.2f}** | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        mode, two = MODES[args.case]
        print(json.dumps(run_case(args.models, mode, two)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "diffusion_models"
        models.mkdir()
        write_experts(models)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for case in MODES:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--models", str(models)],
                                 capture_output=True, text=True, check=True, env=env)
            results[case] = json.loads(out.stdout.strip().splitlines()[-1])
            print(case, results[case], file=sys.stderr)
    text = report(results, "python bench/moe_low_ram.py" + (f" --out {args.out}" if args.out else ""))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
