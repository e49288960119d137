"""``wanflow``: run ComfyUI workflows (UI or API format) from a shell, without the server.

    wanflow run WORKFLOW.json [--models DIR] [--input DIR] [--output DIR] [--set NODE.INPUT=VALUE ...]
    wanflow demo [--prompt TEXT] [--seed N] [--output DIR] [--i2v IMAGE] [--r2v IMAGE ...]
                 [--lora NAME[:STRENGTH] ...] [--quiet]
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
from . import errors, execute, registry, train_lora_cli, workflow


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanflow", description="Run WanFlow / ComfyUI workflows headless.",
                                     epilog="exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid workflow, "
                                            "4 missing file, 5 a node failed, 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow JSON (UI or API format)")
    run.add_argument("workflow", type=Path, help="workflow file saved by ComfyUI (UI or API format)")
    run.add_argument("--models", type=Path, help="ComfyUI-style models folder (diffusion_models/, vae/, "
                     "text_encoders/, clip_vision/, loras/)")
    run.add_argument("--input", type=Path, default=Path("input"), help="folder with input images (default ./input)")
    run.add_argument("--output", type=Path, default=Path("output"), help="folder for results (default ./output)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id or unique title, VALUE is JSON or text "
                          "(e.g. --set 3.seed=42 --set 6.text='a cat')")
    run.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--check-weights", action="store_true",
                     help="after each model loads, warn about tensors holding NaN or Inf (same as "
                          f"{finite_check.CHECK_ENV}=1; costs one more pass over the weights)")
    demo = sub.add_parser("demo", help="render a template on the WanNano models shipped with the pack (CPU, seconds)")
    demo.add_argument("--prompt", default=None, help="e.g. 'a red circle moving left on a white background' "
                      "(colours red/green/blue/yellow, shapes circle/square/triangle, directions left/right/up/down, "
                      "backgrounds white/black, optional 'slowly')")
    demo.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    demo.add_argument("--output", type=Path, default=Path("output"), help="folder for the video (default ./output)")
    demo.add_argument("--i2v", type=Path, metavar="IMAGE", help="image-to-video from this start picture")
    demo.add_argument("--r2v", type=Path, nargs="+", default=[], metavar="IMAGE",
                      help="reference-to-video from 1-2 pictures of the object")
    demo.add_argument("--lora", dest="loras", action="append", default=[], metavar="NAME[:STRENGTH]",
                      help="add a nano style LoRA (outline, night) at a strength (default 1); repeatable, "
                           "text-to-video only")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    nano = sub.add_parser("train-nano", help="retrain the WanNano models from scratch (CPU, resumable stages)")
    nano.add_argument("--stage", dest="stages", action="append", default=[], metavar="NAME",
                      help="run only this stage (repeatable); stages in order: vae, text, t2v, i2v, vace, loras")
    nano.add_argument("--work", type=Path, default=Path(".nano-work"),
                      help="folder for checkpoints, loss logs and caches; a stopped run resumes from it")
    nano.add_argument("--out", type=Path, help="models folder to write (default: the pack's nano/models)")
    nano.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    nano.add_argument("--quiet", action="store_true", help="no progress bars")
    train_lora_cli.add_parser(sub)
    return parser


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
                 overrides: Sequence[str] = (), device: Optional[str] = None) -> execute.RunResult:
    """Load, check and run one workflow file; raises a RunnerError subclass on failure."""
    try:
        comfy_adapter.configure_headless(models, input_dir, output_dir, device)
    except (comfy_adapter.MissingFile, comfy_adapter.BadSetting) as exc:
        raise errors.UsageError(str(exc)) from exc
    classes = registry.node_classes()
    flow = workflow.load_workflow(workflow.read_json(path), classes, str(path))
    workflow.apply_overrides(flow.prompt, list(overrides), classes)
    return execute.run(flow, classes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="wanflow: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command == "train-lora":
        logging.getLogger("wanflow").setLevel(logging.INFO)
        return train_lora_cli.train_lora_command(args)
    if args.command == "train-nano":
        logging.getLogger("wanflow").setLevel(logging.INFO)
        return train_nano(args)
    comfy_adapter.set_headless_progress(not args.quiet)
    try:
        if args.command == "run":
            if args.check_weights:
                os.environ[finite_check.CHECK_ENV] = "1"
            result = run_workflow(args.workflow, args.models, args.input, args.output, args.overrides, args.device)
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
