"""``wanflow run --gpus N``: one workflow run on N processes that split each DiT's tokens.

Every rank runs the whole workflow with the same inputs and seeds; the MoE sampler node wraps
the experts in :class:`distributed.sequence_parallel.SequenceParallelDiT` while the process group
is up, so only the DiT's blocks are split and every rank ends with the same latent. Unless
``--no-fsdp``, the model loader shards each DiT across the ranks as it loads
(:mod:`distributed.fsdp`): a rank keeps 1/N of every expert's weights. Rank 0 writes
the outputs; the others write into a scratch folder that is deleted. NCCL with one GPU per rank
(``cuda:RANK``) where CUDA is available, gloo on the CPU otherwise.

Started by ``torchrun --nproc-per-node N -m wanflow.runner.launch run ...`` instead, the ranks
already exist: each joins the group torchrun describes (``--gpus`` is then ignored).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..distributed import launch
from . import errors


def _run_rank(rank: int, world: int, device: torch.device, args: argparse.Namespace,
              results: str) -> None:
    """One rank's run; its outcome goes to ``results/rank<R>.json`` (never raised, so a usage
    error reads as one line, not N tracebacks)."""
    from ..distributed import cfg_parallel, fsdp
    from ..nodes import comfy_adapter
    from .cli import run_workflow

    logging.basicConfig(level=logging.WARNING if rank == 0 else logging.ERROR, format="wanflow: %(message)s")
    comfy_adapter.set_headless_progress(rank == 0 and not args.quiet)  # one progress bar, rank 0's
    scratch = None
    output = args.output
    if rank != 0:
        scratch = tempfile.mkdtemp(prefix=f"wanflow-rank{rank}-")
        output = Path(scratch)
    report: dict = {"rank": rank}
    try:
        cfg_parallel.use_layout(cfg_parallel.parallel_layout(args.cfg_parallel))
        fsdp.use_fsdp(args.fsdp)  # the model loader shards each DiT across the ranks
        result = run_workflow(args.workflow, args.models, args.input, output, args.overrides,
                              str(device) if device.type == "cuda" else args.device,  # NCCL: cuda:RANK
                              args.max_vram, args.cache)
        report.update(code=errors.EXIT_OK, files=[str(f) for f in result.files],
                      seconds=result.seconds)
    except errors.RunnerError as exc:
        report.update(code=exc.exit_code, error=str(exc))
    except ValueError as exc:  # the layout: CFG-parallel on an odd rank count
        report.update(code=errors.EXIT_USAGE, error=str(exc))
    except KeyboardInterrupt:
        report.update(code=errors.EXIT_INTERRUPTED, error="interrupted")
    except Exception as exc:  # noqa: BLE001 - reported by the parent with the traceback
        report.update(code=1, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    Path(results, f"rank{rank}.json").write_text(json.dumps(report))


def backend_for(device: Optional[str]) -> str:
    """gloo for ``--device cpu`` (or no CUDA), else NCCL with one GPU per rank."""
    if (device or "").startswith("cpu") or not torch.cuda.is_available():
        return "gloo"
    return "nccl"


def run_on_ranks(args: argparse.Namespace) -> dict:
    """Run ``args`` (a parsed ``wanflow run``) on ``args.gpus`` local ranks or under torchrun;
    returns rank 0's report (``code``, ``files``, ``seconds`` or ``error``), or the first failed
    rank's when rank 0 succeeded and another did not."""
    with tempfile.TemporaryDirectory(prefix="wanflow-ranks-") as results:
        if launch.under_torchrun():
            device = launch.init_from_env(backend_for(args.device))
            try:
                _run_rank(dist.get_rank(), dist.get_world_size(), device, args, results)
                dist.barrier()
            finally:
                dist.destroy_process_group()
            reports = [json.loads(p.read_text()) for p in sorted(Path(results).glob("rank*.json"))]
        else:
            if args.cfg_parallel and args.gpus % 2:
                raise errors.UsageError(f"--cfg-parallel needs an even --gpus (cond and uncond); got {args.gpus}")
            backend = backend_for(args.device)
            if backend == "nccl" and torch.cuda.device_count() < args.gpus:
                raise errors.UsageError(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA "
                                        "device(s) here (--device cpu runs the ranks on the CPU)")
            launch.spawn(_run_rank, args.gpus, args=(args, results), backend=backend)
            reports = [json.loads(Path(results, f"rank{r}.json").read_text()) for r in range(args.gpus)]
    failed = [r for r in reports if r["code"] != errors.EXIT_OK]
    report = reports[0] if reports[0]["code"] != errors.EXIT_OK or not failed else failed[0]
    if "traceback" in report:
        print(report["traceback"], file=sys.stderr)
    return report
