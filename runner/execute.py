"""Checking a prompt against the node classes, then running it in dependency order.

Everything that can be checked before running is checked first (node types, links and their
types, required inputs, widget values, file names and model files, and the models' kinds
against their sockets from the file headers), so a bad workflow fails in a second, before any
model loads. Output files are staged and only moved into the output
folder when the whole run succeeded.
"""
from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from ..nodes import comfy_adapter
from . import node_specs, signals
from .loader_cache import LoaderCache
from .model_kinds import check_model_kinds
from .errors import (InvalidWorkflow, MissingFileError, NodeFailed, RunInterrupted, RunnerError)
from .workflow import Workflow, is_link, unknown_type_message

log = logging.getLogger("wanflow.runner")


@dataclass
class RunResult:
    files: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)  # node id -> the "ui" part of output nodes
    seconds: float = 0.0


# --------------------------------------------------------------------------- validation

def validate(prompt: dict[str, dict], classes: dict[str, type]) -> list[str]:
    """Raise on the first problem (every missing file at once); returns the execution order of
    the nodes outputs need."""
    for node_id, entry in prompt.items():
        kind = entry["class_type"]
        if kind not in classes:
            raise InvalidWorkflow(unknown_type_message(kind), node_id, kind)
    order = execution_order(prompt, classes)  # as in ComfyUI, nodes no output needs are not checked
    for node_id in order:
        _validate_node(prompt, classes, node_id, prompt[node_id])
    missing: list[MissingFileError] = []
    for node_id in order:
        try:
            _run_validate_inputs(classes, node_id, prompt[node_id])
        except MissingFileError as exc:  # collect them: a user fixes all missing files in one go
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        raise MissingFileError(f"{len(missing)} files are missing:\n" + "\n".join(f"  {exc}" for exc in missing))
    check_model_kinds(prompt, classes, order)
    return order


def _validate_node(prompt: dict, classes: dict, node_id: str, entry: dict) -> None:
    kind = entry["class_type"]
    cls = classes[kind]
    specs = {spec.name: spec for spec in node_specs.input_specs(cls)}
    inputs = entry["inputs"]
    dropped = entry.get("_meta", {}).get("dropped", {})
    for name, spec in specs.items():
        if spec.section == "required" and name not in inputs:
            why = f" ({dropped[name]})" if name in dropped else ""
            raise InvalidWorkflow(f"required input {name!r} is not connected{why}", node_id, kind)
    skip_value_check = _validate_inputs_args(cls)
    for name, value in inputs.items():
        if name not in specs:
            continue  # extra inputs are ignored, as in ComfyUI
        spec = specs[name]
        if value is None:
            raise InvalidWorkflow(f"input {name!r} is null; expected a value or a link", node_id, kind)
        if is_link(value):
            _check_link(prompt, classes, node_id, kind, spec, value)
        elif name not in skip_value_check:
            _check_value(node_id, kind, spec, value)


def _check_link(prompt: dict, classes: dict, node_id: str, kind: str, spec, link: list) -> None:
    source_id, slot = link
    if source_id not in prompt:
        raise InvalidWorkflow(f"input {spec.name!r} is linked to node {source_id}, which does not exist "
                              "(or is muted)", node_id, kind)
    source_kind = prompt[source_id]["class_type"]
    outputs = node_specs.output_types(classes[source_kind])
    if not 0 <= slot < len(outputs):
        raise InvalidWorkflow(f"input {spec.name!r} is linked to output {slot} of node {source_id} "
                              f"({source_kind}), which has {len(outputs)} outputs", node_id, kind)
    if not node_specs.types_match(outputs[slot], spec.type):
        wanted = "a combo value" if spec.is_combo else spec.type
        raise InvalidWorkflow(f"wrong link type: input {spec.name!r} expects {wanted}, but node {source_id} "
                              f"({source_kind}) output {slot} gives {outputs[slot]}", node_id, kind)


WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING")
"""Input types that hold a literal value; every other non-combo type is a socket that needs a link."""


def _check_value(node_id: str, kind: str, spec, value: Any) -> None:
    where = f"widget {spec.name!r}"
    if spec.is_combo:
        if value not in spec.type:
            shown = ", ".join(map(repr, list(spec.type)[:8])) + (", ..." if len(spec.type) > 8 else "")
            raise InvalidWorkflow(f"{where}: {value!r} is not one of [{shown}]", node_id, kind)
        return
    if spec.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidWorkflow(f"{where}: expected a finite number, found {value!r:.80}", node_id, kind)
        if spec.type == "INT" and float(value) != int(value):
            raise InvalidWorkflow(f"{where}: expected a whole number, found {value!r}", node_id, kind)
        low, high = spec.options.get("min"), spec.options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidWorkflow(f"{where}: {value!r} is outside [{low}, {high}]", node_id, kind)
    elif spec.type == "BOOLEAN" and not isinstance(value, bool):
        raise InvalidWorkflow(f"{where}: expected true or false, found {value!r}", node_id, kind)
    elif spec.type == "STRING" and not isinstance(value, str):
        raise InvalidWorkflow(f"{where}: expected text, found {value!r:.80}", node_id, kind)
    elif spec.type not in WIDGET_TYPES:
        raise InvalidWorkflow(f"input {spec.name!r} takes a link from a {spec.type} output, found {value!r:.80} "
                              "(a link is [node id, output index])", node_id, kind)


def _validate_inputs_args(cls: type) -> set[str]:
    """Inputs a node checks itself in VALIDATE_INPUTS (ComfyUI then skips its own combo check)."""
    method = getattr(cls, "VALIDATE_INPUTS", None)
    if method is None:
        return set()
    return {name for name in inspect.signature(method).parameters if name not in ("cls", "self")}


def _run_validate_inputs(classes: dict, node_id: str, entry: dict) -> None:
    cls = classes[entry["class_type"]]
    names = _validate_inputs_args(cls)
    if not names:
        return
    args = {name: value for name, value in entry["inputs"].items() if name in names and not is_link(value)}
    if not args:
        return
    try:
        verdict = cls.VALIDATE_INPUTS(**args)
    except comfy_adapter.MissingFile as exc:
        raise MissingFileError(str(exc), node_id, entry["class_type"]) from exc
    except (comfy_adapter.UnsafeFileName, ValueError) as exc:
        raise InvalidWorkflow(str(exc), node_id, entry["class_type"]) from exc
    if verdict is not True:
        raise InvalidWorkflow(str(verdict), node_id, entry["class_type"])


def execution_order(prompt: dict[str, dict], classes: dict[str, type]) -> list[str]:
    """Nodes needed by the output nodes, each after everything it reads from (depth-first)."""
    outputs = [nid for nid, entry in prompt.items() if getattr(classes[entry["class_type"]], "OUTPUT_NODE", False)]
    if not outputs:
        raise InvalidWorkflow("the workflow has no output node (e.g. a save video node), so nothing would run")
    order: list[str] = []
    done: set[str] = set()
    for output in sorted(outputs, key=lambda n: (len(n), n)):
        _visit(prompt, output, order, done)
    return order


def _visit(prompt: dict[str, dict], start: str, order: list[str], done: set[str]) -> None:
    """Depth-first post-order from ``start`` with an explicit stack (a chain of thousands of
    nodes must not hit Python's recursion limit); a node met again on the active path is a cycle."""
    path: list[str] = []
    on_path: set[str] = set()
    stack: list[tuple[str, Iterator[tuple[str, Any]]]] = []

    def enter(node_id: str) -> None:
        path.append(node_id)
        on_path.add(node_id)
        stack.append((node_id, iter(prompt[node_id]["inputs"].items())))

    enter(start)
    while stack:
        node_id, inputs = stack[-1]
        for name, value in inputs:
            if not is_link(value) or value[0] in done:
                continue
            if value[0] not in prompt:
                raise InvalidWorkflow(f"input {name!r} is linked to node {value[0]}, which does not exist "
                                      "(or is muted)", node_id, prompt[node_id]["class_type"])
            if value[0] in on_path:
                cycle = " -> ".join(path[path.index(value[0]):] + [value[0]])
                raise InvalidWorkflow(f"the workflow has a cycle: {cycle}")
            enter(value[0])
            break
        else:
            stack.pop()
            path.pop()
            on_path.discard(node_id)
            done.add(node_id)
            order.append(node_id)


# --------------------------------------------------------------------------- execution

def run(workflow: Workflow, classes: dict[str, type], loader_cache: Optional[LoaderCache] = None) -> RunResult:
    """Validate then execute; output files appear only if every node succeeded. With
    ``loader_cache``, loader nodes reuse models an earlier run of this process loaded."""
    prompt = workflow.prompt
    order = validate(prompt, classes)
    started = time.perf_counter()
    results: dict[str, tuple] = {}
    outcome = RunResult()
    comfy_adapter.begin_staged_outputs()
    try:
        with comfy_adapter.Progress(len(order), desc="workflow") as bar:
            for node_id in order:
                entry = prompt[node_id]
                title = entry.get("_meta", {}).get("title") or entry["class_type"]
                bar.describe(f"node {node_id} ({title})")
                outcome.ui.update(_run_node(workflow, classes, node_id, results, loader_cache))
                bar.update(1)
        with signals.deferred():
            outcome.files = comfy_adapter.commit_staged_outputs()
    finally:
        with signals.deferred():
            comfy_adapter.discard_staged_outputs()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run_node(workflow: Workflow, classes: dict, node_id: str, results: dict,
              loader_cache: Optional[LoaderCache] = None) -> dict:
    entry = workflow.prompt[node_id]
    kind = entry["class_type"]
    cls = classes[kind]
    kwargs = {}
    for name, value in entry["inputs"].items():
        kwargs[name] = results[value[0]][value[1]] if is_link(value) else value
    for name, kind_of_hidden in node_specs.hidden_inputs(cls).items():
        if kind_of_hidden == "PROMPT":
            kwargs[name] = _api_view(workflow.prompt)
        elif kind_of_hidden == "EXTRA_PNGINFO":
            kwargs[name] = {"workflow": workflow.ui} if workflow.ui is not None else None
        elif kind_of_hidden == "UNIQUE_ID":
            kwargs[name] = node_id
    log.info("running node %s (%s)", node_id, kind)
    try:
        comfy_adapter.check_interrupted()
        call = lambda: getattr(cls(), cls.FUNCTION)(**kwargs)  # noqa: E731
        if loader_cache is None:
            output = call()
        else:
            output = loader_cache.get_or_load(LoaderCache.key(cls, kind, entry["inputs"]), call)
    except RunnerError:
        raise
    except comfy_adapter.Interrupted as exc:
        raise RunInterrupted(str(exc), node_id, kind) from exc
    except KeyboardInterrupt as exc:
        raise RunInterrupted("interrupted by the user (Ctrl-C)", node_id, kind) from exc
    except comfy_adapter.MissingFile as exc:
        raise MissingFileError(str(exc), node_id, kind) from exc
    except comfy_adapter.UnsafeFileName as exc:
        raise InvalidWorkflow(str(exc), node_id, kind) from exc
    except Exception as exc:  # a node failed: report it with its id and type
        raise NodeFailed(f"{type(exc).__name__}: {exc}", node_id, kind) from exc
    ui = {}
    if isinstance(output, dict):
        ui = {node_id: output["ui"]} if output.get("ui") is not None else {}
        output = output.get("result", ())
    results[node_id] = tuple(output or ())
    return ui


def _api_view(prompt: dict[str, dict]) -> dict:
    """The prompt as ComfyUI hands it to save nodes (internal bookkeeping removed)."""
    view = {}
    for node_id, entry in prompt.items():
        meta = {k: v for k, v in entry.get("_meta", {}).items() if k == "title"}
        view[node_id] = {"inputs": entry["inputs"], "class_type": entry["class_type"], "_meta": meta}
    return view


