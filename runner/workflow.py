"""Workflow files: UI format (what the ComfyUI frontend saves) and API format (what /prompt takes).

Both become one *prompt*: ``{node_id: {"class_type", "inputs": {name: value | [source_id, slot]},
"_meta": {"title"}}}``, the structure ComfyUI executes. The UI graph is kept so save nodes can
embed it in the video, as ComfyUI does.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import node_specs
from .errors import InvalidWorkflow, UsageError

UI_ONLY_TYPES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MODE_MUTED, MODE_BYPASS = 2, 4


@dataclass
class Workflow:
    prompt: dict[str, dict]
    ui: Optional[dict] = None  # the UI graph, embedded in outputs as extra_pnginfo["workflow"]


def is_link(value: Any) -> bool:
    """A prompt input that refers to another node's output: ``[source_id, output_index]``."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def shown_path(path: Any, limit: int = 200) -> str:
    """A path for a message, cut to ``limit`` characters (a user may hand us any string)."""
    text = str(path)
    return text if len(text) <= limit else text[:limit] + "..."


def read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"workflow {shown_path(path)} is not UTF-8 text (byte {exc.start}); expected a "
                         "JSON workflow saved by ComfyUI") from None
    except OSError as exc:
        raise UsageError(f"cannot read workflow {shown_path(path)}: {exc.strerror or type(exc).__name__}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"workflow {shown_path(path)} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"workflow {shown_path(path)} nests JSON too deeply to be a workflow") from None


def load_workflow(data: Any, classes: dict[str, type], source: str = "workflow") -> Workflow:
    """Turn parsed workflow JSON (either format) into a :class:`Workflow`; JSON of the wrong
    shape anywhere is an :class:`InvalidWorkflow` naming what was found."""
    source = shown_path(source)
    try:
        return _load_workflow(data, classes, source)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if isinstance(exc, InvalidWorkflow):
            raise
        raise InvalidWorkflow(f"{source}: malformed workflow JSON ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); expected a workflow saved by ComfyUI") from None


def _load_workflow(data: Any, classes: dict[str, type], source: str) -> Workflow:
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return Workflow(ui_to_prompt(data, classes), copy.deepcopy(data))
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a saved /prompt body
        ui = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        return Workflow(_api_prompt(data["prompt"], source), ui)
    if isinstance(data, dict) and data:
        return Workflow(_api_prompt(data, source), None)
    raise InvalidWorkflow(f"{source}: neither a UI workflow (no 'nodes' list) nor an API prompt")


def _api_prompt(prompt: dict, source: str) -> dict[str, dict]:
    result = {}
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            raise InvalidWorkflow(f"{source}: API entry {node_id!r:.80} has no class_type (a node type name)")
        if not isinstance(entry.get("inputs") or {}, dict):
            raise InvalidWorkflow(f"{source}: API entry {node_id!r:.80} has inputs of type "
                                  f"{type(entry['inputs']).__name__}; expected an object of input names")
        inputs = {}
        for name, value in (entry.get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (int, str)) \
                    and isinstance(value[1], int) and not isinstance(value[1], bool):
                value = [str(value[0]), value[1]]
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                value = value["__value__"]
            inputs[name] = value
        result[str(node_id)] = {"class_type": entry["class_type"], "inputs": inputs,
                                "_meta": dict(entry.get("_meta") or {})}
    return result


# --------------------------------------------------------------------------- UI format

class _UIGraph:
    """Index of a UI workflow: nodes by id and links by id."""

    def __init__(self, ui: dict):
        for node in ui["nodes"]:
            if not isinstance(node, dict) or not isinstance(node.get("id"), (int, str)) \
                    or not isinstance(node.get("type"), str):
                raise InvalidWorkflow(f"malformed node {node!r:.120}: expected an object with an id and a type")
            if not isinstance(node.get("inputs") or [], list) or \
                    not all(isinstance(slot, dict) for slot in node.get("inputs") or []):
                raise InvalidWorkflow(f"node {node['id']!r:.40} ({node['type']:.60}): inputs must be a list of slots")
        self.nodes = {str(node["id"]): node for node in ui["nodes"]}
        self.links: dict[int, tuple[str, int, str, int, Any]] = {}
        for link in ui.get("links") or []:
            if isinstance(link, dict):
                link = [link.get("id"), link.get("origin_id"), link.get("origin_slot"),
                        link.get("target_id"), link.get("target_slot"), link.get("type")]
            if not isinstance(link, (list, tuple)) or len(link) < 5 \
                    or not all(_is_int(link[i]) for i in (0, 2, 4)) or not all(_is_id(link[i]) for i in (1, 3)):
                raise InvalidWorkflow(f"malformed link {link!r:.120}: expected [id, origin, slot, target, slot, type]")
            self.links[int(link[0])] = (str(link[1]), int(link[2]), str(link[3]), int(link[4]),
                                        link[5] if len(link) > 5 else None)

    def describe(self, node_id: str) -> str:
        node = self.nodes[node_id]
        return f"node {node_id} ({node.get('type')})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


def _slot_link(graph: "_UIGraph", node_id: str, slot_index: int, slot: dict) -> int:
    """The link id on an input slot; anything but a whole number is a broken file, not a crash."""
    link = slot["link"]
    if _is_int(link):
        return link
    if isinstance(link, float) and link.is_integer():
        return int(link)
    raise InvalidWorkflow(f"{graph.describe(node_id)}: input {slot_index} has link {link!r:.40}; expected a link id "
                          "(a whole number) or null")


def ui_to_prompt(ui: dict, classes: dict[str, type]) -> dict[str, dict]:
    """Convert a UI workflow, dropping UI-only and muted nodes and wiring around bypassed ones."""
    graph = _UIGraph(ui)
    prompt: dict[str, dict] = {}
    for node_id, node in graph.nodes.items():
        kind = node.get("type")
        if node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS) or kind in UI_ONLY_TYPES:
            continue
        if kind not in classes:
            raise InvalidWorkflow(unknown_type_message(kind, ui), node_id, kind)
        values = node.get("widgets_values") or []
        if isinstance(values, dict):
            inputs = dict(values)
        else:
            try:
                inputs = node_specs.map_widgets_values(classes[kind], list(values), graph.describe(node_id))
            except ValueError as exc:
                raise InvalidWorkflow(str(exc)) from exc
        dropped = {}
        for slot_index, slot in enumerate(node.get("inputs") or []):
            if slot.get("link") is None:
                continue
            name = (slot.get("widget") or {}).get("name") or slot["name"]
            resolved = _resolve_link(graph, _slot_link(graph, node_id, slot_index, slot), node_id, slot_index, set())
            if resolved is None:
                inputs.pop(name, None)
                dropped[name] = "its source node is muted or has nothing to pass through"
            else:
                inputs[name] = resolved
        meta = {"title": node.get("title") or kind}
        if dropped:
            meta["dropped"] = dropped
        prompt[node_id] = {"class_type": kind, "inputs": inputs, "_meta": meta}
    return prompt


def unknown_type_message(kind: str, ui: Optional[dict] = None) -> str:
    """Why a node type cannot run headless, and what can."""
    subgraphs = {str(g.get("id")) for g in ((ui or {}).get("definitions") or {}).get("subgraphs") or []}
    if kind in subgraphs:
        return ("this node is a subgraph, which the headless runner does not run yet; unpack it in ComfyUI "
                "(right-click > Unpack Subgraph) and save again")
    return (f"unknown node type {kind!r}: the headless runner runs the WanFlow nodes, LoadImage and the UI-only "
            "nodes (notes, primitives, reroutes); other packs' and core nodes need ComfyUI itself")


def _resolve_link(graph: _UIGraph, link_id: int, target_id: str, target_slot: int, seen: set) -> Any:
    """What feeds a linked input: ``[source_id, slot]``, a literal (primitive) or None (muted)."""
    if link_id in seen:
        raise InvalidWorkflow(f"link {link_id} is part of a loop through reroutes or bypassed nodes")
    seen.add(link_id)
    if link_id not in graph.links:
        raise InvalidWorkflow(f"{graph.describe(target_id)}: input {target_slot} refers to link {link_id}, "
                              "which is not in the links list")
    origin_id, origin_slot, link_target, link_slot, link_type = graph.links[link_id]
    if (link_target, link_slot) != (target_id, target_slot):
        raise InvalidWorkflow(f"link {link_id} says it ends at node {link_target} slot {link_slot}, "
                              f"but {graph.describe(target_id)} uses it on slot {target_slot}")
    if origin_id not in graph.nodes:
        raise InvalidWorkflow(f"link {link_id} starts at node {origin_id}, which does not exist")
    origin = graph.nodes[origin_id]
    kind, mode = origin.get("type"), origin.get("mode", 0)
    if mode == MODE_MUTED:
        return None
    if kind == "PrimitiveNode":
        values = origin.get("widgets_values") or []
        if not values:
            raise InvalidWorkflow("PrimitiveNode has no value", origin_id, kind)
        return values[0]
    if kind == "Reroute" or mode == MODE_BYPASS:
        index = 0 if kind == "Reroute" else _bypass_input(origin, origin_slot, link_type)
        if index is None:
            return None
        slots = origin.get("inputs") or []
        if index >= len(slots) or slots[index].get("link") is None:
            return None
        return _resolve_link(graph, _slot_link(graph, origin_id, index, slots[index]), origin_id, index, seen)
    return [origin_id, origin_slot]


def _bypass_input(node: dict, output_slot: int, wanted: Any) -> Optional[int]:
    """A bypassed node passes through its input of the output's type (same slot first)."""
    inputs = node.get("inputs") or []
    if output_slot < len(inputs) and inputs[output_slot].get("type") == wanted:
        return output_slot
    for index, slot in enumerate(inputs):
        if slot.get("type") == wanted:
            return index
    return None


# --------------------------------------------------------------------------- --set

def apply_overrides(prompt: dict[str, dict], overrides: list[str], classes: dict[str, type]) -> None:
    """Apply ``NODE.INPUT=VALUE`` overrides; NODE is an id or a unique title, VALUE JSON or text."""
    for text in overrides:
        target, sep, raw = text.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot or not node_ref or not name:
            raise UsageError(f"--set {text!r}: expected NODE.INPUT=VALUE, e.g. --set 3.seed=42")
        node_id = _find_node(prompt, node_ref, text)
        kind = prompt[node_id]["class_type"]
        known = [spec.name for spec in node_specs.input_specs(classes[kind])] if kind in classes else []
        if kind in classes and name not in known:
            raise UsageError(f"--set {text!r}: {kind} has no input {name!r} (inputs: {', '.join(known)})")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        prompt[node_id]["inputs"][name] = value


def _find_node(prompt: dict[str, dict], ref: str, text: str) -> str:
    if ref in prompt:
        return ref
    hits = [nid for nid, entry in prompt.items() if entry.get("_meta", {}).get("title") == ref]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UsageError(f"--set {text!r}: title {ref!r} matches nodes {', '.join(hits)}; use an id")
    raise UsageError(f"--set {text!r}: no node with id or title {ref!r} (ids: {', '.join(sorted(prompt, key=_id_key))})")


def _id_key(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
