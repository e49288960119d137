"""``wanflow batch``'s jobs file, one render per job, and the manifest of what each job wrote.

A jobs file is JSON Lines: one object per line, ``{"workflow": FILE, "set": ["NODE.INPUT=VALUE",
...], "name": NAME}`` (``set`` and ``name`` optional; blank lines and lines starting with ``#``
are skipped). A relative workflow path is read from the jobs file's folder. Job ``NAME`` (default
``job-<line>``) writes into ``OUTPUT/NAME/``, so jobs on different workers never share a file
counter, and the manifest ``OUTPUT/manifest.json`` is rewritten after every finished job: a
worker that crashes later cannot lose what earlier jobs wrote.

Every line is checked before any job runs (JSON shape, workflow, overrides, model files), and a bad
one is reported with its line number.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..nodes import comfy_adapter
from . import errors, execute, registry, workflow
from .loader_cache import LoaderCache

MANIFEST = "manifest.json"
JOB_KEYS = {"workflow", "set", "name"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SEED_INPUTS = ("seed", "noise_seed")


@dataclass(frozen=True)
class Job:
    """One line of a jobs file: a workflow and its ``--set`` overrides."""

    line: int
    name: str
    workflow: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """What every job of a batch shares (the ``wanflow batch`` options)."""

    output: str
    input: str = "input"
    models: Optional[str] = None
    device: Optional[str] = None


# --------------------------------------------------------------------------- the jobs file

def parse_job(text: str, line: int, base: Path) -> Job:
    """One jobs-file line -> :class:`Job`; raises UsageError naming the line."""
    where = f"jobs file line {line}"
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.UsageError(f"{where}: not JSON ({exc.msg} at column {exc.colno}); expected "
                                '{"workflow": "FILE.json", "set": ["NODE.INPUT=VALUE", ...]}') from None
    if not isinstance(entry, dict):
        raise errors.UsageError(f"{where}: found {type(entry).__name__}; expected a JSON object with 'workflow'")
    unknown = sorted(set(entry) - JOB_KEYS)
    if unknown:
        raise errors.UsageError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                                f"{', '.join(sorted(JOB_KEYS))}")
    path = entry.get("workflow")
    if not isinstance(path, str) or not path:
        raise errors.UsageError(f"{where}: 'workflow' must be a workflow file name, found {path!r:.80}")
    overrides = entry.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise errors.UsageError(f"{where}: 'set' must be a list of \"NODE.INPUT=VALUE\" texts, found {overrides!r:.80}")
    name = entry.get("name", f"job-{line:03d}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise errors.UsageError(f"{where}: 'name' {name!r:.80} must be letters, digits, '.', '_' or '-' "
                                "(it names the job's output folder)")
    return Job(line, name, str((base / Path(path).expanduser()).resolve()), tuple(overrides))


def read_jobs(path: Path) -> list[Job]:
    """All jobs of ``path``; raises UsageError for an unreadable file, a bad line or a repeated name."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.UsageError(f"jobs file {path}: cannot be read ({exc})") from None
    jobs = [parse_job(text, number, Path(path).parent) for number, text in enumerate(lines, 1)
            if text.strip() and not text.lstrip().startswith("#")]
    if not jobs:
        raise errors.UsageError(f"jobs file {path}: no jobs; expected one JSON object per line")
    seen: dict[str, int] = {}
    for job in jobs:
        if job.name in seen:
            raise errors.UsageError(f"jobs file line {job.line}: name {job.name!r} is already used on line "
                                    f"{seen[job.name]}")
        seen[job.name] = job.line
    return jobs


def prepared(job: Job, classes: dict[str, type]) -> workflow.Workflow:
    """The job's workflow with its overrides applied (the adapter must point at the folders)."""
    flow = workflow.load_workflow(workflow.read_json(Path(job.workflow)), classes, job.workflow)
    workflow.apply_overrides(flow.prompt, list(job.overrides), classes)
    return flow


def check_jobs(jobs: Sequence[Job], settings: Settings) -> None:
    """Check every job as ``wanflow run`` would before running (workflow, overrides, files, model
    kinds); the first problem is raised with its line number and the runner's exit code."""
    configure(settings, Path(settings.output))
    classes = registry.node_classes()
    for job in jobs:
        try:
            execute.validate(prepared(job, classes).prompt, classes)
        except errors.RunnerError as exc:
            raise type(exc)(f"jobs file line {job.line} ({job.workflow}): {exc}") from exc


def configure(settings: Settings, output: Path) -> None:
    try:
        comfy_adapter.configure_headless(settings.models, settings.input, output, settings.device)
    except (comfy_adapter.MissingFile, comfy_adapter.BadSetting) as exc:
        raise errors.UsageError(str(exc)) from exc


# --------------------------------------------------------------------------- running one job

def seeds_of(prompt: dict[str, dict]) -> list[int]:
    """The literal seeds of a prompt (inputs named seed or noise_seed), in node order."""
    return [entry["inputs"][name] for entry in prompt.values() for name in SEED_INPUTS
            if isinstance(entry["inputs"].get(name), int)]


def run_job(job: Job, settings: Settings, cache: Optional[LoaderCache] = None) -> dict:
    """Run one job into ``OUTPUT/NAME/`` (emptied first: a retried job starts clean); returns its
    manifest record. A RunnerError becomes a record with status ``failed`` (an interruption is
    raised)."""
    started = time.perf_counter()
    folder = Path(settings.output) / job.name
    record: dict[str, Any] = {"job": job.name, "line": job.line, "workflow": job.workflow, "files": [],
                              "seed": None, "pid": os.getpid()}
    try:
        shutil.rmtree(folder, ignore_errors=True)
        configure(settings, folder)
        classes = registry.node_classes()
        flow = prepared(job, classes)
        seeds = seeds_of(flow.prompt)
        record["seed"] = seeds[0] if len(seeds) == 1 else (seeds or None)
        loads = cache.loads if cache is not None else 0
        if cache is not None:
            cache.begin_run()
        try:
            result = execute.run(flow, classes, loader_cache=cache)
        finally:  # a failed job too leaves only the models it used
            if cache is not None:
                cache.end_run()
        record.update(status="ok", files=[os.path.relpath(f, settings.output) for f in result.files],
                      models_loaded=None if cache is None else cache.loads - loads)  # 0: all were warm
    except errors.RunInterrupted:
        raise  # Ctrl-C stops the batch, it is not this job's failure
    except errors.RunnerError as exc:
        record.update(status="failed", error=str(exc), exit_code=exc.exit_code)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def run_in_process(jobs: Sequence[Job], settings: Settings, manifest: "Manifest") -> None:
    """``wanflow batch`` without ``--ray``: the jobs one after another, models loaded once."""
    cache = LoaderCache()
    for job in jobs:
        record = run_job(job, settings, cache)
        record["attempts"] = 1
        manifest.add(record)


# --------------------------------------------------------------------------- the manifest

@dataclass
class Manifest:
    """``OUTPUT/manifest.json``: one record per job (files, seed, seconds, status), rewritten
    atomically after each job."""

    output: Path
    jobs: Sequence[Job]
    records: dict[str, dict] = field(default_factory=dict)

    def add(self, record: dict) -> None:
        self.records[record["job"]] = record
        self.write()

    def finish(self, status: str, reason: str) -> None:
        """Record the jobs that never finished (e.g. ``cancelled``)."""
        for job in self.jobs:
            if job.name not in self.records:
                self.records[job.name] = {"job": job.name, "line": job.line, "workflow": job.workflow,
                                          "files": [], "seed": None, "status": status, "error": reason}
        self.write()

    def write(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        ordered = sorted(self.records.values(), key=lambda r: r["line"])
        scratch = self.output / (MANIFEST + ".tmp")
        scratch.write_text(json.dumps({"jobs": ordered}, indent=1) + "\n", encoding="utf-8")
        os.replace(scratch, self.output / MANIFEST)

    def failed(self) -> list[dict]:
        return [r for r in self.records.values() if r.get("status") != "ok"]
