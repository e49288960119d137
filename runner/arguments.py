"""The ``wanflow`` command line's arguments, kept free of torch and the nodes.

``wanflow --help``, ``--version`` and usage errors are answered from here by the entry point
(:mod:`.launch`) before anything heavy is imported, so they take a fraction of a second.
"""
from __future__ import annotations

import argparse
import re
from importlib import metadata
from pathlib import Path

from . import batch_cli, train_lora_cli

DISTRIBUTION = "comfyui-wanflow"


def package_version() -> str:
    """The installed distribution's version (a checkout used only as a ComfyUI folder has none)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(not installed)"


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str) -> int:
    """``12GB``, ``11.5G``, ``12000MB``, ``12GiB`` or plain bytes -> bytes. K/M/G/T are binary
    (1024-based, as nvidia-smi and ComfyUI count VRAM), with or without ``B`` / ``iB``."""
    match = _SIZE.fullmatch(text)
    number, unit, suffix = match.groups() if match else ("", "", "")
    if not match or suffix.lower() == "i" or (suffix.lower() == "ib" and not unit):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a size; expected e.g. 12GB, 12000MB or a number of bytes")
    value = int(float(number) * _UNITS[unit.lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: the size must be more than 0 bytes")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a whole number such as 2") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanflow", description="Run WanFlow / ComfyUI workflows headless.",
                                     epilog="exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid workflow, "
                                            "4 missing file, 5 a node failed, 130 interrupted")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
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
    run.add_argument("--max-vram", type=parse_size, metavar="SIZE",
                     help="device memory a diffusion model's weights may use, e.g. 12GB (binary units); "
                          "blocks that do not fit stream from pinned RAM during each step (block swap). "
                          "Default: block swap only when the model does not fit the free GPU memory")
    run.add_argument("--cache", metavar="LEVEL",
                     help="step cache on every WanFlow MoE sampler of the workflow: off, quality, balanced or fast "
                          "(same as each sampler's cache input; --set NODE.cache=... still wins for one node). "
                          "It skips model forwards the last computed steps predict: fewer forwards, small "
                          "differences from the exact video")
    run.add_argument("--gpus", type=_positive_int, default=1, metavar="N",
                     help="split each diffusion model's video tokens across N processes (sequence parallel, "
                          "one GPU each over NCCL; gloo on the CPU); rank 0 writes the outputs. The model's "
                          "head count must divide by N. Under torchrun the ranks come from torchrun")
    run.add_argument("--cfg-parallel", action="store_true",
                     help="with --gpus N (even): half the ranks run the conditional pass, half the "
                          "unconditional one, each half splitting tokens N/2 ways (no gain at CFG 1)")
    run.add_argument("--no-fsdp", dest="fsdp", action="store_false",
                     help="with --gpus N: every rank keeps a whole copy of each diffusion model. By default "
                          "each model is sharded across the ranks as it loads (FSDP2), so a rank holds 1/N of "
                          "every expert and gathers one block at a time while it runs")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--check-weights", action="store_true",
                     help="after each model loads, warn about tensors holding NaN or Inf (same as "
                          "WANFLOW_CHECK_WEIGHTS=1; costs one more pass over the weights)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the transformer blocks of every loaded diffusion model (same as the "
                          "model loader's compile=blocks or WANFLOW_COMPILE=1); the first step at each size "
                          "compiles, LoRA and expert changes do not recompile")
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
    batch_cli.add_parser(sub)
    train_lora_cli.add_parser(sub)
    return parser
