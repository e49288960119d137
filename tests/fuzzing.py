"""Shared pieces of the fuzz tests: example budgets, a JSON mutator and byte-level damage.

Budgets: CI runs ``FUZZ_EXAMPLES`` examples per entry point (derandomized, so a CI failure
reproduces); ``WANFLOW_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz_*.py`` is the long local run.
Each example must end in success or one of the project's errors. Tests hold no time bound
(timing thresholds do not belong in tests); the long run times every example instead and adds a
row per entry point to ``bench/results/fuzz_long_run.md``: examples, slowest, and how many took
longer than ``SLOW_SECONDS`` (the issue's definition of a hang).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import struct
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("WANFLOW_FUZZ_EXAMPLES", "40"))
LONG_RUN = "WANFLOW_FUZZ_EXAMPLES" in os.environ
SLOW_SECONDS = 20.0
REPORT = Path(__file__).resolve().parent.parent / "bench" / "results" / "fuzz_long_run.md"
SLOWEST = REPORT.with_name("fuzz_long_run_slowest.md")

FUZZ_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not LONG_RUN, database=None,
                         suppress_health_check=list(HealthCheck), print_blob=True)

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                        st.sampled_from(["", "F32", "BF16", "F8_E4M3", "..", "/etc/passwd", "x" * 300, "NaN"]))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def _paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every (container path, key) in ``doc``."""
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _at(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def mutate_json(doc: Any, data: st.DataObject, max_edits: int = 3) -> Any:
    """``doc`` with 1..max_edits random edits: a value replaced (random JSON, a number gone NaN
    or huge, a type swapped), a key or item deleted, or an item duplicated."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, max_edits), label="edits")):
        paths = list(_paths(doc))
        if not paths:
            return data.draw(JSON_VALUES, label="document")
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = _at(doc, path[:-1]), path[-1]
        old = parent[key]
        edit = data.draw(st.sampled_from(["replace", "delete", "wrap", "stringify", "number", "duplicate"]),
                         label="edit")
        if edit == "delete":
            del parent[key]
        elif edit == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(old))
        elif edit == "wrap":
            parent[key] = data.draw(st.sampled_from([[old], {"value": old}]), label="wrapper")
        elif edit == "stringify":
            parent[key] = json.dumps(old, allow_nan=True)
        elif edit == "number":
            parent[key] = data.draw(st.sampled_from([float("nan"), float("inf"), -1, 0, 2 ** 63, -2 ** 63, 1e308,
                                                     0.5, True]), label="number")
        else:
            parent[key] = data.draw(JSON_VALUES, label="value")
    return doc


def damage_bytes(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` (a safetensors or pickle file) truncated, with bytes overwritten (mostly in the
    header), with junk appended, or with its safetensors header JSON mutated and re-framed."""
    kind = data.draw(st.sampled_from(["truncate", "overwrite", "append", "header"]), label="damage")
    header_len = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else 0
    is_safetensors = 8 < 8 + header_len <= len(raw) and raw[8:9] == b"{"
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, len(raw)), label="length")]
    if kind == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=64), label="junk")
    if kind == "header" and is_safetensors:
        header = json.loads(raw[8:8 + header_len])
        text = json.dumps(mutate_json(header, data), allow_nan=True).encode()
        return struct.pack("<Q", len(text)) + text + raw[8 + header_len:]
    out = bytearray(raw)
    hot = 8 + header_len if is_safetensors else min(len(raw), 4096)
    for _ in range(data.draw(st.integers(1, 8), label="bytes")):
        limit = hot if data.draw(st.booleans(), label="in header") else len(out)
        if limit:
            out[data.draw(st.integers(0, limit - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    return bytes(out)



def describe_changes(before: Any, after: Any, path: str = "", limit: int = 6) -> list[str]:
    """Where ``after`` differs from ``before`` (``path: old -> new``, at most ``limit`` items), so a
    slow or failing example in the long-run report says what was mutated."""
    if type(before) is type(after) and isinstance(before, dict):
        keys = list(before) + [k for k in after if k not in before]
        parts = [describe_changes(before.get(k, "<absent>"), after.get(k, "<absent>"), f"{path}/{k}", limit)
                 for k in keys]
    elif type(before) is type(after) and isinstance(before, list) and len(before) == len(after):
        parts = [describe_changes(b, a, f"{path}[{i}]", limit) for i, (b, a) in enumerate(zip(before, after))]
    elif before == after or (before != before and after != after):  # equal, or both NaN
        return []
    else:
        def short(value: Any) -> str:
            text = json.dumps(value, allow_nan=True)
            return text if len(text) <= 60 else text[:57] + "..."
        return [f"{path or '/'}: {short(before)} -> {short(after)}"]
    return [change for part in parts for change in part][:limit]


class Timings:
    """Seconds per example of one entry point; the long run reports them (tests assert nothing on time)."""

    KEEP = 5  # slowest examples described in the report

    def __init__(self, entry: str):
        self.entry = entry
        self.seconds: list[float] = []
        self.slowest: list[tuple[float, str]] = []

    @contextmanager
    def example(self, description: str = "") -> Iterator[None]:
        """Time one example; ``description`` (what was mutated) is kept for the slowest ones."""
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - began
            self.seconds.append(seconds)
            self.slowest = sorted(self.slowest + [(seconds, description)], reverse=True)[:self.KEEP]

    def report(self) -> None:
        """Add this entry point's row to REPORT (long run only; the header on the first row of a run)."""
        if not LONG_RUN or not self.seconds:
            return
        global _REPORT_STARTED
        if not _REPORT_STARTED:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=REPORT.parent).stdout.strip()
            REPORT.write_text(
                "# Fuzz long run\n\n"
                f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n- commit: {commit}\n"
                f"- machine: {platform.machine()}, {os.cpu_count()} threads, Python {platform.python_version()}\n"
                f"- command: `WANFLOW_FUZZ_EXAMPLES={FUZZ_EXAMPLES} pytest tests/test_fuzz_files.py "
                "tests/test_fuzz_workflows.py`\n"
                "- a crash fails the test, so every row here ended with 0 crashes; "
                f"a hang is an example slower than {SLOW_SECONDS:.0f} s\n\n"
                "| entry point | examples | crashes | slowest s | median ms | slower than the hang bound |\n"
                "|---|---|---|---|---|---|\n")
            SLOWEST.write_text("# Fuzz long run: the slowest examples of each entry point, and what was mutated\n\n"
                               f"Written with `{REPORT.name}` (same run).\n")
            _REPORT_STARTED = True
        ordered = sorted(self.seconds)
        slow = sum(s > SLOW_SECONDS for s in ordered)
        with REPORT.open("a") as out:
            out.write(f"| {self.entry} | {len(ordered)} | 0 | {ordered[-1]:.2f} | {1000 * ordered[len(ordered) // 2]:.2f} "
                      f"| {slow} |\n")
        with SLOWEST.open("a") as out:
            out.write(f"\n## {self.entry}\n\n")
            out.writelines(f"- {seconds:.2f} s: {description or '(not described)'}\n"
                           for seconds, description in self.slowest)


_REPORT_STARTED = False
