"""``wanflow``: run ComfyUI workflows (UI or API format) from a shell, without the server.

    wanflow run WORKFLOW.json [--models DIR] [--input DIR] [--output DIR] [--set NODE.INPUT=VALUE ...]
    wanflow demo [--prompt TEXT] [--seed N] [--output DIR] [--i2v IMAGE] [--r2v IMAGE ...]
                 [--lora NAME[:STRENGTH] ...] [--quiet]
    wanflow batch JOBS.jsonl [--ray [ADDRESS]] [--workers N] [--models DIR] [--input DIR] [--output DIR]
    wanflow train-nano [--stage NAME ...] [--work DIR] [--out DIR] [--seed N]
    wanflow train-lora DATA_DIR --model FILE [--model-low FILE] --vae FILE --text-encoder FILE --output FILE

Exit codes are listed in :mod:`runner.errors` (0 ok, 2 usage, 3 invalid workflow, 4 missing
file, 5 a node failed, 130 interrupted, 1 internal error).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..model_loaders import finite_check
from ..nodes import comfy_adapter
from ..samplers.step_cache import cache_level
from ..wan.compiled_blocks import COMPILE_ENV
from . import errors, execute, parallel_run, registry, train_lora_cli, workflow
from .arguments import build_parser

log = logging.getLogger("wanflow")
CACHED_SAMPLER = "WanFlowMoESampler"


def train_nano(args: argparse.Namespace) -> int:
    """Run the nano training stages; prints each stage's time."""
    from ..train import nano_recipe

    ctx = nano_recipe.StageContext(work=args.work, seed=args.seed, quiet=args.quiet)
    if args.out is not None:
        ctx.out = args.out
    stages = args.stages or list(nano_recipe.STAGES)
    try:
        timings = nano_recipe.run(stages, ctx)
    except (ValueError, FileNotFoundError) as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return errors.EXIT_USAGE
    for name, seconds in timings.items():
        print(f"{name}: {seconds / 60:.1f} min")
    print(f"wanflow: models written to {ctx.out}", file=sys.stderr)
    return errors.EXIT_OK


def run_workflow(path: Path, models: Optional[Path], input_dir: Path, output_dir: Path,
                 overrides: Sequence[str] = (), device: Optional[str] = None,
                 max_vram: Optional[int] = None, cache: Optional[str] = None) -> execute.RunResult:
    """Load, check and run one workflow file; raises a RunnerError subclass on failure."""
    if cache is not None:
        try:
            cache_level(cache, "--cache")
        except ValueError as exc:
            raise errors.UsageError(str(exc)) from exc
    try:
        comfy_adapter.configure_headless(models, input_dir, output_dir, device, max_vram=max_vram)
    except (comfy_adapter.MissingFile, comfy_adapter.BadSetting) as exc:
        raise errors.UsageError(str(exc)) from exc
    classes = registry.node_classes()
    flow = workflow.load_workflow(workflow.read_json(path), classes, str(path))
    if cache is not None:
        set_cache(flow.prompt, cache)
    workflow.apply_overrides(flow.prompt, list(overrides), classes)
    return execute.run(flow, classes)


def set_cache(prompt: dict[str, dict], level: str) -> int:
    """``--cache``: the step-cache level on every WanFlow MoE sampler; returns how many."""
    samplers = [entry for entry in prompt.values() if entry["class_type"] == CACHED_SAMPLER]
    for entry in samplers:
        entry["inputs"]["cache"] = level
    if not samplers:
        log.warning("--cache %s: the workflow has no WanFlow MoE sampler, so nothing is cached", level)
    return len(samplers)


def _report_parallel(report: dict) -> int:
    """Print a ``--gpus`` run's outcome as a single run's (rank 0 prints the files)."""
    if report["code"] != errors.EXIT_OK:
        print(f"wanflow: error (rank {report['rank']}): {report['error']}", file=sys.stderr)
        return report["code"]
    if report["rank"] == 0:
        for path in report["files"]:
            print(path)
        print(f"wanflow: done in {report['seconds']:.1f} s, {len(report['files'])} file(s) written",
              file=sys.stderr)
    return errors.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="wanflow: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command == "train-lora":
        logging.getLogger("wanflow").setLevel(logging.INFO)
        return train_lora_cli.train_lora_command(args)
    if args.command == "batch":
        from .batch_cli import batch_command

        comfy_adapter.set_headless_progress(not args.quiet)
        return batch_command(args)
    if args.command == "train-nano":
        logging.getLogger("wanflow").setLevel(logging.INFO)
        return train_nano(args)
    comfy_adapter.set_headless_progress(not args.quiet)
    try:
        if args.command == "run":
            if args.check_weights:
                os.environ[finite_check.CHECK_ENV] = "1"
            if args.compile:
                os.environ[COMPILE_ENV] = "1"
            if args.cfg_parallel and args.gpus == 1 and not parallel_run.launch.under_torchrun():
                raise errors.UsageError("--cfg-parallel needs --gpus 2 or more (or torchrun)")
            if args.gpus > 1 or parallel_run.launch.under_torchrun():
                return _report_parallel(parallel_run.run_on_ranks(args))
            result = run_workflow(args.workflow, args.models, args.input, args.output, args.overrides, args.device,
                                  args.max_vram, args.cache)
        else:
            from . import demo

            loras = [demo.parse_lora(spec) for spec in args.loras]
            result = demo.run_demo(args.output, args.prompt or demo.DEFAULT_PROMPT, args.seed, args.i2v, args.r2v,
                                   loras)
    except errors.RunnerError as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except comfy_adapter.BadSetting as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return errors.EXIT_USAGE
    except KeyboardInterrupt:
        print("wanflow: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    for path in result.files:
        print(path)
    print(f"wanflow: done in {result.seconds:.1f} s, {len(result.files)} file(s) written", file=sys.stderr)
    return errors.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
