"""``wanflow batch JOBS.jsonl [--ray [ADDRESS]]``: many renders from one jobs file.

Without ``--ray`` the jobs run one after another in this process (models loaded once). With
``--ray`` they run on Ray workers (:mod:`.ray_batch`): a local Ray instance is started, or
``ADDRESS`` (e.g. ``ray://head:10001`` or ``auto``) joins a running cluster whose nodes have
WanFlow installed. Exit code 0 when every job wrote its files, 5 when some failed (the manifest
says which), the runner's codes for a bad jobs file or a missing Ray (2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .batch_jobs import Manifest, Settings

LOCAL = "local"
MANIFEST = "manifest.json"  # batch_jobs.MANIFEST; this module stays free of torch (see arguments.py)


def add_parser(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser("batch", help="run many renders listed in a JSON Lines jobs file (optionally on Ray)")
    batch.add_argument("jobs", type=Path, help='jobs file: one {"workflow": FILE, "set": ["NODE.INPUT=VALUE", ...], '
                       '"name": NAME} per line; relative workflow paths are read from the jobs file\'s folder')
    batch.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                       help="run the jobs as Ray tasks, one GPU per worker (one CPU with --device cpu); a local "
                            "Ray instance is started unless ADDRESS names a running cluster (needs "
                            "pip install 'comfyui-wanflow[ray]')")
    batch.add_argument("--workers", type=int, default=None, metavar="N",
                       help="Ray workers (default: one per GPU of the cluster, or per CPU without GPUs)")
    batch.add_argument("--models", type=Path, help="ComfyUI-style models folder")
    batch.add_argument("--input", type=Path, default=Path("input"), help="folder with input images (default ./input)")
    batch.add_argument("--output", type=Path, default=Path("output"),
                       help=f"folder for results: one subfolder per job and {MANIFEST} (default ./output)")
    batch.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    batch.add_argument("--quiet", action="store_true", help="no progress bars")


def _absolute(path: Path) -> str:
    return str(path.expanduser().resolve())


def _print_record(record: dict) -> None:
    if record["status"] == "ok":
        print(f"{record['job']}: ok, {len(record['files'])} file(s) in {record['seconds']:.1f} s", file=sys.stderr)
    else:
        print(f"{record['job']} (line {record['line']}): {record['status']}: {record.get('error')}", file=sys.stderr)


def batch_command(args: argparse.Namespace) -> int:
    """Check the whole jobs file, then run it; prints one line per job and the manifest's path."""
    from .batch_jobs import Manifest, Settings, check_jobs, read_jobs, run_in_process

    try:
        if args.workers is not None and args.workers < 1:
            raise errors.UsageError(f"--workers {args.workers}: expected 1 or more")
        ray_module = None
        if args.ray is not None:
            from .ray_batch import import_ray

            ray_module = import_ray()  # before the long checks: a missing Ray is said at once
        # absolute paths: Ray workers do not share this process's working folder
        settings = Settings(output=_absolute(args.output), input=_absolute(args.input),
                            models=None if args.models is None else _absolute(args.models), device=args.device)
        jobs = read_jobs(args.jobs)
        check_jobs(jobs, settings)
    except errors.RunnerError as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    manifest = Manifest(Path(settings.output), jobs)
    manifest.write()
    try:
        if ray_module is None:
            run_in_process(jobs, settings, manifest)
            for record in sorted(manifest.records.values(), key=lambda r: r["line"]):
                _print_record(record)
        else:
            _run_on_ray(ray_module, args, jobs, settings, manifest)
    except errors.UsageError as exc:  # Ray could not start or be reached
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, errors.RunInterrupted):
        manifest.finish("cancelled", "interrupted (Ctrl-C) before it finished")
        print(f"wanflow: interrupted; finished jobs are listed in {Path(settings.output) / MANIFEST}", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    failed = manifest.failed()
    print(f"wanflow: {len(jobs) - len(failed)} of {len(jobs)} job(s) done; manifest {Path(settings.output) / MANIFEST}",
          file=sys.stderr)
    return errors.EXIT_NODE_FAILED if failed else errors.EXIT_OK


def _run_on_ray(ray, args: argparse.Namespace, jobs, settings: Settings, manifest: Manifest) -> None:
    from .ray_batch import RayBatch, default_workers

    started_here = not ray.is_initialized()
    if started_here:
        where = "start a local Ray instance" if args.ray == LOCAL else f"join the Ray cluster at {args.ray!r}"
        try:
            ray.init(address=None if args.ray == LOCAL else args.ray, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=not args.quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, OSError, RuntimeError, ...
            raise errors.UsageError(f"--ray: could not {where}: {type(exc).__name__}: "
                                    f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}") from None
    try:
        workers = args.workers or default_workers(ray, settings, len(jobs))
        batch = RayBatch(jobs, settings, manifest, workers, quiet=args.quiet,
                         on_record=lambda _batch, record: _print_record(record))
        try:
            batch.run()
        finally:
            batch.shutdown()
    finally:
        if started_here:
            ray.shutdown()
