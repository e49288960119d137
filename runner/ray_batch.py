"""``wanflow batch --ray``: the jobs of a jobs file as tasks on a Ray cluster.

Each worker is a Ray actor that needs one GPU (or one CPU with ``--device cpu``, e.g. for the
WanNano models). It keeps the models it loaded in a :class:`~.loader_cache.LoaderCache`, so the
next job with the same files starts sampling at once. The driver keeps one job in flight per
worker and loops over ``ray.wait``; a job whose worker failed or died is run once more (on a fresh
worker when its own died), then reported as failed. Results and the manifest are written by the
jobs as they finish, so a crashed worker loses only the job it was running. Ctrl-C cancels the
jobs in flight, kills the workers and records the unfinished jobs as ``cancelled``.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable, Optional, Sequence

from . import errors
from .batch_jobs import Job, Manifest, Settings, run_job
from .loader_cache import LoaderCache

log = logging.getLogger("wanflow")
INSTALL_HINT = "pip install 'comfyui-wanflow[ray]'  (or: pip install ray)"
ATTEMPTS = 2
"""A job runs at most twice: once, and once more after a failure or a lost worker."""


def import_ray() -> Any:
    """The ``ray`` module, or a UsageError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise errors.UsageError(f"--ray needs Ray, which is not installed here ({exc}); install it with: "
                                f"{INSTALL_HINT}") from None
    return ray


class BatchWorker:
    """The body of a worker actor: runs jobs in this process, models kept between jobs."""

    def __init__(self, settings: Settings, quiet: bool = True) -> None:
        from ..nodes import comfy_adapter

        logging.basicConfig(level=logging.WARNING, format="wanflow: %(message)s")
        comfy_adapter.set_headless_progress(not quiet)
        self.settings = settings
        self.cache = LoaderCache()

    def pid(self) -> int:
        return os.getpid()

    def render(self, job: Job) -> dict:
        return run_job(job, self.settings, self.cache)

    def stats(self) -> dict:
        """Models loaded and models reused by this worker so far."""
        return {"loads": self.cache.loads, "hits": self.cache.hits, "pid": os.getpid()}


def worker_options(ray: Any, settings: Settings) -> dict:
    """One GPU per worker, or one CPU when the jobs run on the CPU (``--device cpu``, or a cluster
    without GPUs)."""
    on_cpu = (settings.device or "").startswith("cpu") or not ray.cluster_resources().get("GPU", 0)
    return {"num_cpus": 1, "num_gpus": 0} if on_cpu else {"num_cpus": 1, "num_gpus": 1}


def default_workers(ray: Any, settings: Settings, jobs: int) -> int:
    """As many workers as GPUs (or CPUs on a CPU-only cluster), at most one per job."""
    on_gpu = worker_options(ray, settings)["num_gpus"] > 0
    count = int(ray.cluster_resources().get("GPU" if on_gpu else "CPU", 1))
    return max(1, min(jobs, count))


class RayBatch:
    """Run ``jobs`` on ``workers`` actors of the Ray instance this process is connected to."""

    def __init__(self, jobs: Sequence[Job], settings: Settings, manifest: Manifest, workers: int,
                 quiet: bool = True, on_record: Optional[Callable[["RayBatch", dict], None]] = None) -> None:
        self.ray = import_ray()
        self.jobs, self.settings, self.manifest, self.quiet = list(jobs), settings, manifest, quiet
        self.on_record = on_record  # called after each finished job (the command prints a line)
        self.actor_class = self.ray.remote(**worker_options(self.ray, settings))(BatchWorker)
        self.actors = [self._start() for _ in range(workers)]
        self.in_flight: dict[Any, tuple[Job, int, Any]] = {}
        self.replaced = 0

    def _start(self) -> Any:
        return self.actor_class.remote(self.settings, self.quiet)

    def pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def stats(self) -> list[dict]:
        return self.ray.get([actor.stats.remote() for actor in self.actors])

    def run(self) -> None:
        """Run every job (each at most twice); Ctrl-C cancels and records the rest as cancelled."""
        pending: deque[tuple[Job, int]] = deque((job, 1) for job in self.jobs)
        free = list(self.actors)
        try:
            while pending or self.in_flight:
                while pending and free:
                    job, attempt = pending.popleft()
                    actor = free.pop(0)
                    self.in_flight[actor.render.remote(job)] = (job, attempt, actor)
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
                job, attempt, actor = self.in_flight.pop(ready[0])
                record, actor = self._outcome(ready[0], job, actor)
                free.append(actor)
                record["attempts"] = attempt
                if record["status"] != "ok" and attempt < ATTEMPTS:
                    log.warning("job %s (line %d) failed on its try %d, retrying: %s", job.name, job.line, attempt,
                                record.get("error"))
                    pending.appendleft((job, attempt + 1))
                    continue
                self.manifest.add(record)
                if self.on_record is not None:
                    self.on_record(self, record)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def _outcome(self, ref: Any, job: Job, actor: Any) -> tuple[dict, Any]:
        """The job's record, and the worker to use next (a fresh one when this one died)."""
        try:
            return self.ray.get(ref), actor
        except self.ray.exceptions.RayActorError as exc:
            self.ray.kill(actor, no_restart=True)
            replacement = self._start()
            self.actors[self.actors.index(actor)] = replacement
            self.replaced += 1
            reason = f"the worker died ({type(exc).__name__})"
            return self._failed(job, reason), replacement
        except self.ray.exceptions.RayError as exc:  # an error outside run_job's RunnerErrors (a bug)
            return self._failed(job, f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"), actor

    @staticmethod
    def _failed(job: Job, reason: str) -> dict:
        return {"job": job.name, "line": job.line, "workflow": job.workflow, "files": [], "seed": None,
                "status": "failed", "error": reason, "exit_code": errors.EXIT_INTERNAL}

    def cancel(self) -> None:
        """Cancel the jobs in flight, end the workers and record the unfinished jobs."""
        for ref in self.in_flight:
            self.ray.cancel(ref)
        self.in_flight.clear()
        self.shutdown()
        self.manifest.finish("cancelled", "interrupted (Ctrl-C) before it finished")

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
