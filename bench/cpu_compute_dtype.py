"""DiT forward on the CPU in bf16 against float32 compute, weights stored in bf16 and in scaled fp8.

Our layers cast the stored weight to the activation dtype per call, so the same model computes in
either dtype; this times both side by side (round-robin, this process's CPU time) and shows what
``wan.compute_dtype.compute_dtype_for`` picks on this CPU. It then runs itself again with the CPU
capped at AVX2 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``: no bf16 instructions),
the closest this machine gets to an AVX2-only CPU, and reports both.

    python bench/cpu_compute_dtype.py --out bench/results/cpu_compute_dtype.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from typing import Callable

import torch

from lora_overhead import CLOCKS, git_commit, machine_description, randomize, timed_rounds
from wanflow.model_loaders.storage import quantize_fp8
from wanflow.wan import ops
from wanflow.wan.compute_dtype import compute_dtype_for, cpu_has_native_bf16
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1536, help="DiT width (1536 = Wan 2.1 1.3B)")
    p.add_argument("--ffn-dim", type=int, default=8960)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=4, help="latent frames")
    p.add_argument("--size", type=int, default=24, help="latent height = width")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-avx2-run", action="store_true", help="skip the run capped at AVX2")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON (the AVX2 child)")
    p.add_argument("--out", default=None, help="write a markdown report here")
    return p.parse_args()


def to_scaled_fp8(model: torch.nn.Module) -> None:
    """Every ops layer's weight in scaled float8_e4m3fn, as ComfyUI's fp8_scaled files hold them."""
    for module in model.modules():
        if isinstance(module, (ops.Linear, ops.Conv3d)):
            weight, scale = quantize_fp8(module.weight.float(), torch.float8_e4m3fn, scaled=True)
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            module.set_scale_weight(scale)


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    cfg = WanDiTConfig(dim=args.dim, ffn_dim=args.ffn_dim, num_heads=args.heads, num_layers=args.layers,
                       model_type="t2v")
    models = {}
    for storage in ("bf16", "fp8_scaled"):
        model = WanDiT(cfg).eval()
        randomize(model, seed=0)
        model = model.to(torch.bfloat16)
        if storage == "fp8_scaled":
            to_scaled_fp8(model)
        models[storage] = model
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, args.frames, args.size, args.size, generator=gen)
    t = torch.tensor([500.0])
    context = torch.zeros(1, 512, cfg.text_dim)
    context[:, :64] = torch.randn(1, 64, cfg.text_dim, generator=gen)

    def forward(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(x.to(dtype), t, context)
        return run

    variants = {f"{storage}/{name}": forward(model, dtype)
                for storage, model in models.items()
                for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    times = timed_rounds(variants, args.rounds, lambda: None, CLOCKS["cpu"])
    outputs = {name: fn().float() for name, fn in variants.items()}
    diffs = {storage: (outputs[f"{storage}/bf16"] - outputs[f"{storage}/fp32"]).abs().max().item()
             for storage in models}
    return {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
            "picks": {s: str(compute_dtype_for(m.blocks[0].ffn[0].weight.dtype)).replace("torch.", "")
                      for s, m in models.items()},
            "median_s": {n: statistics.median(v) for n, v in times.items()},
            "min_s": {n: min(v) for n, v in times.items()},
            "max_abs_diff": diffs, "out_scale": outputs["bf16/fp32"].abs().max().item(),
            "tokens": args.frames * (args.size // 2) ** 2}


def run_capped(argv: list[str]) -> dict:
    env = {**os.environ, **AVX2_ENV}
    child = subprocess.run([sys.executable, __file__, *argv, "--json", "--no-avx2-run"], env=env,
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def table(title: str, result: dict) -> list[str]:
    lines = [f"### {title}", "",
             f"torch CPU capability `{result['capability']}`; native bf16 detected: {result['native_bf16']}", "",
             "| weights | compute | median ms | min ms | bf16 / fp32 (median) | compute_dtype_for picks |",
             "|---|---|---:|---:|---:|---|"]
    for storage in ("bf16", "fp8_scaled"):
        fp32 = result["median_s"][f"{storage}/fp32"]
        for name in ("fp32", "bf16"):
            key = f"{storage}/{name}"
            ratio = f"{result['median_s'][key] / fp32:.2f}x" if name == "bf16" else "1.00x"
            lines.append(f"| {storage} | {name} | {result['median_s'][key] * 1e3:.0f} | "
                         f"{result['min_s'][key] * 1e3:.0f} | {ratio} | {result['picks'][storage]} |")
    lines += ["", "Max abs difference bf16 vs fp32 compute (output scale "
              f"{result['out_scale']:.2f}): " + ", ".join(f"{s} {d:.3g}" for s, d in result["max_abs_diff"].items()), ""]
    return lines


def main() -> None:
    args = parse_args()
    argv = [a for a in sys.argv[1:] if a not in ("--out",) and not a.endswith(".md")]
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    results = [("This CPU as it is", result)]
    if not args.no_avx2_run:
        results.append(("The same CPU capped at AVX2 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2)",
                        run_capped(argv)))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# CPU compute dtype: bf16 against float32 compute of a DiT forward", "",
             f"- Date: {now}; commit `{git_commit()}`",
             f"- Machine: {machine_description('cpu')}; torch {torch.__version__}, {args.threads} threads",
             f"- Model: WanDiT dim {args.dim}, ffn {args.ffn_dim}, {args.heads} heads, {args.layers} blocks, random "
             f"weights; {result['tokens']} video tokens, 512 text tokens (64 non-zero)",
             f"- {args.rounds} timed forwards per variant (this process's CPU time) after one warm-up, round-robin; "
             f"command: `python bench/cpu_compute_dtype.py {' '.join(sys.argv[1:])}`", ""]
    for title, res in results:
        lines += table(title, res)
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
