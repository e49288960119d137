"""Where the time of one fp8 Linear goes on a CUDA GPU, at the Wan 2.2 A14B sizes of a 480p CFG step.

The GPU suite found the fp8-matmul path (wan/fp8_matmul.py) no faster than upcasting the fp8
weight to bf16 for each call. This splits one call into its parts, side by side in one run:
the bf16 matmul with the weight already in bf16 (the floor), the upcast path, the fp8 path as
ops.Linear runs it (per-tensor and per-row scales; its quantization is compiled where Triton is
installed), the eager activation quantization alone, the _scaled_mm kernel alone, and a compiled
quantization followed by the kernel.

    python bench/fp8_linear_gpu.py --out bench/results/fp8_linear-<gpu>-<date>.md   # CUDA only
    python bench/fp8_linear_gpu.py --smoke   # the CPU, 64 tokens, 1/32 widths, eager quantize: checks the code runs
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from wanflow.wan import fp8_matmul as M
from wanflow.wan import ops
from bench_info import commit

DEVICE = "cuda"
TOKENS = 2 * 21 * 30 * 52  # 480p, 81 frames, CFG batch of 2 (latent 21x60x104 in 2x2 patches)
SHAPES = {"attention q/k/v/o (5120 -> 5120)": (5120, 5120), "ffn up (5120 -> 13824)": (5120, 13824),
          "ffn down (13824 -> 5120)": (13824, 5120)}


def cuda_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """Median milliseconds of ``reps`` calls, timed with CUDA events after 3 warm-ups."""
    for _ in range(3):
        fn()
    if DEVICE == "cpu":  # smoke run: only checks that every variant runs
        return 1.0
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def fp8_layer(k: int, n: int) -> ops.Linear:
    """A ComfyUI-style scaled-fp8 Linear (e4m3 weight, one scale per layer) on the GPU."""
    with torch.device(DEVICE):
        layer = ops.Linear(k, n, bias=True)
    wide = torch.randn(n, k, device=DEVICE) / k ** 0.5
    scale = wide.abs().amax() / M.E4M3_MAX
    layer.weight = torch.nn.Parameter((wide / scale).to(torch.float8_e4m3fn), requires_grad=False)
    layer.set_scale_weight(scale.reshape(()))
    layer.bias.data = layer.bias.data.bfloat16()
    return layer


def rows_for(k: int, n: int) -> list[tuple[str, float, float]]:
    """(variant, ms, TFLOP/s) for one weight shape."""
    layer = fp8_layer(k, n)
    x = torch.randn(TOKENS, k, device=DEVICE, dtype=torch.bfloat16)
    w16 = layer.compute_weight(torch.bfloat16)
    flops = 2.0 * TOKENS * k * n
    fused_quantize = M.quantize_activation if DEVICE == "cpu" else torch.compile(M.quantize_activation, dynamic=False)
    scale_w = {g: M.weight_scale(layer, n, g, x.device) for g in ("tensor", "row")}
    quantized = {g: M.quantize_activation(x, g) for g in ("tensor", "row")}
    wt = layer.weight.t()

    def kernel(g: str) -> Callable[[], object]:
        values, scale_x = quantized[g]
        return lambda: torch._scaled_mm(values, wt, scale_a=scale_x, scale_b=scale_w[g], out_dtype=torch.bfloat16)

    def fused(g: str) -> Callable[[], object]:
        def run() -> torch.Tensor:
            values, scale_x = fused_quantize(x, g)
            return torch._scaled_mm(values, wt, scale_a=scale_x, scale_b=scale_w[g], out_dtype=torch.bfloat16)
        return run

    def layer_in(mode: str) -> Callable[[], object]:
        def run() -> torch.Tensor:
            with M.use_mode(mode):
                return layer(x)
        return run

    variants = {
        "bf16 weight resident (floor)": lambda: F.linear(x, w16, layer.bias),
        "upcast fp8 -> bf16 each call (mode off)": layer_in("off"),
        "fp8 path, per-tensor scales (mode tensor)": layer_in("tensor"),
        "fp8 path, per-row scales (mode row)": layer_in("row"),
        "quantize activation only, per tensor": lambda: M.quantize_activation(x, "tensor"),
        "quantize activation only, per row": lambda: M.quantize_activation(x, "row"),
        "_scaled_mm kernel only, per tensor": kernel("tensor"),
        "_scaled_mm kernel only, per row": kernel("row"),
        "compiled quantize + kernel, per tensor": fused("tensor"),
        "compiled quantize + kernel, per row": fused("row"),
    }
    rows = []
    with torch.no_grad():
        for name, fn in variants.items():
            ms = cuda_ms(fn)
            rows.append((name, ms, flops / (ms * 1e-3) / 1e12))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    parser.add_argument("--smoke", action="store_true", help="run every variant on the CPU at 64 tokens and 1/32 widths")
    args = parser.parse_args(argv)
    global DEVICE, TOKENS
    if args.smoke:
        DEVICE, TOKENS, M.ALLOW_CPU = "cpu", 64, True
    elif not torch.cuda.is_available():
        print("fp8_linear_gpu: needs a CUDA device", file=sys.stderr)
        return 2
    lines = [f"# One fp8 Linear, {TOKENS} tokens (Wan 2.2 A14B, 480p, CFG batch), bf16 activations", "",
             f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit `{commit()}`; "
             f"{torch.cuda.get_device_name(0) if DEVICE == 'cuda' else 'CPU smoke run'}; torch {torch.__version__}, CUDA {torch.version.cuda}",
             "- Median of 20 calls after 3 warm-ups, CUDA events. `python bench/fp8_linear_gpu.py`", ""]
    for label, (k, n) in SHAPES.items():
        rows = rows_for(k // 32, n // 32) if args.smoke else rows_for(k, n)  # CPU _scaled_mm is a slow reference
        floor = rows[0][1]
        lines += [f"## {label}", "", "| variant | ms | TFLOP/s | x floor time |", "|---|---|---|---|"]
        lines += [f"| {name} | {ms:.3f} | {tf:.0f} | {ms / floor:.2f} |" for name, ms, tf in rows]
        lines.append("")
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
