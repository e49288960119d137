"""The GPU bench of issue 12, ready to run on one H100/H200 in under 8 minutes.

With random weights at real sizes (a Wan 2.2 A14B expert; a few blocks timed and the 40-block
step extrapolated, as a roofline is computed) it measures seconds per step at 480p and 720p with
and without CFG, the TFLOP/s achieved against the device's bf16 peak, the speed-ups of the issue's
items 1-4 that exist in this build (step cache, compiled blocks, attention back-ends, fp8
matmuls; the others are reported as not available), the Wan 2.1 VAE decode of 81 frames (time
and peak memory) and a whole expert's step under a 24 GiB block-swap budget. It writes
``bench/results/gpu-<device>-<date>.md``.

    python bench/gpu_suite.py                  # on a CUDA machine
    python bench/gpu_suite.py --dry-run        # anywhere: everything built and run on meta
    python bench/gpu_suite.py --smoke          # on the CPU at toy sizes: the measuring code runs for real

The dry run computes nothing: it checks the plan (shapes through every model, the FLOP formulas
against torch's counter, the block-swap plan, compiled-block tracing) and renders the report
with roofline figures in place of measurements. CI runs it (tests/test_gpu_suite.py).
"""
from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from gpu_bench import sections
from gpu_bench.measure import Clock
from gpu_bench.plan import A14B, DRY_RUN_PEAK, SMOKE, peak_tflops
from gpu_bench.report import device_slug, render

RESULTS = Path(__file__).resolve().parent / "results"
# most wanted first: when the time budget runs out, what is left is reported as skipped
SECTIONS = (sections.flop_check, sections.steps, sections.speedups, sections.vae_decode, sections.block_swap)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="build and run everything on the meta device")
    p.add_argument("--smoke", action="store_true",
                   help="toy sizes on the CPU: every measurement runs for real, in seconds (tests the suite)")
    p.add_argument("--blocks", type=int, default=3, help="14B blocks timed per step estimate (default 3)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per figure, after one warm-up "
                   "(default 3; 1 in the smoke run)")
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="start no new measurement after this many seconds (default 360: the last one, a "
                        "720p VAE decode or a 40-block step, ends well within 8 minutes)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for GPUs not in the table")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the report goes (default bench/results; a dry run only prints it unless given)")
    args = p.parse_args(argv)
    if args.blocks < 1:
        p.error("--blocks must be at least 1")
    if args.dry_run and args.smoke:
        p.error("--dry-run and --smoke exclude each other")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="gpu_suite: %(message)s")
    plan = SMOKE if args.smoke else A14B
    if args.smoke:
        torch.set_num_threads(1)  # toy tensors: one thread is faster, and CI machines are shared
    if args.dry_run or args.smoke:
        device = torch.device("meta" if args.dry_run else "cpu")
        name = "dry run (meta device)" if args.dry_run else "smoke run (CPU, toy sizes)"
        peak = args.peak_tflops or DRY_RUN_PEAK
    else:
        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device; run with --dry-run to check the plan without one", file=sys.stderr)
            return 2
        device, name = torch.device("cuda"), torch.cuda.get_device_name(0)
        peak = args.peak_tflops or peak_tflops(name)
        if peak is None:
            print(f"gpu_suite: no bf16 peak known for {name!r}; give it with --peak-tflops", file=sys.stderr)
            return 2
    start = time.monotonic()
    reps = args.reps or (1 if args.smoke else 3)
    run = sections.Run(device, Clock(device, peak, reps=reps), plan, args.blocks, start + args.budget_s)
    done = []
    for section in SECTIONS:
        print(f"gpu_suite: {section.__name__} ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
        done.append(section(run))
    report = render(done, plan=plan, device_name=name, peak_tflops=peak, dry=args.dry_run, blocks=args.blocks,
                    command="python bench/gpu_suite.py " + shlex.join(argv), seconds=time.monotonic() - start,
                    problems=run.problems)
    print(report)
    out_dir = args.out_dir or (None if args.dry_run or args.smoke else RESULTS)
    if out_dir is not None:
        slug = "dry-run" if args.dry_run else "smoke" if args.smoke else device_slug(name)
        path = out_dir / f"gpu-{slug}-{datetime.date.today():%Y-%m-%d}.md"
        path.write_text(report)
        print(f"gpu_suite: wrote {path}", file=sys.stderr)
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
