"""Shared pieces of the fuzz tests: example budgets, a JSON mutator and byte-level damage.

Budgets: CI runs ``FUZZ_EXAMPLES`` examples per entry point (derandomized, so a CI failure
reproduces); ``WANFLOW_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz_*.py`` is the long local run.
Each example must end in success or one of the project's errors. There is no time bound: timing
thresholds do not belong in tests, and a hang shows as a run that never ends.
"""
from __future__ import annotations

import copy
import json
import os
import struct
from typing import Any, Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("WANFLOW_FUZZ_EXAMPLES", "40"))
LONG_RUN = "WANFLOW_FUZZ_EXAMPLES" in os.environ

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

