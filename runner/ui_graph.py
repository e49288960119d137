"""Building UI-format workflows (frontend schema 0.4) from a short description.

The templates in ``workflows/`` are generated with this, so their sockets, links and
``widgets_values`` always match the node classes (widget order, the seed-control entry, the
upload entry of LoadImage). ``python -m wanflow.runner.templates`` rewrites them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import node_specs, template_layout
from .template_layout import Column

PACK_ID = "comfyui-wanflow"
PACK_VERSION = "0.1.0"
CORE_NODES = {"LoadImage"}
NOTE_TYPES = {"Note", "MarkdownNote"}
OPTIONAL_SHAPE = 7  # how the frontend marks optional sockets


@dataclass
class Node:
    """One node of a template: widget values by name (others take the class default) and links."""

    id: int
    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # input -> (source node, output)
    title: Optional[str] = None
    size: Optional[tuple[float, float]] = None
    models: list[dict] = field(default_factory=list)  # properties.models: name, url, directory
    seed_control: str = "randomize"
    pos: tuple[float, float] = (0.0, 0.0)  # set by template_layout.arrange


def note(node_id: int, text: str, size: Optional[tuple[float, float]] = None, title: str = "Read me") -> Node:
    """A Markdown note; without ``size`` it is sized to fit its text (``template_layout.note_size``)."""
    return Node(node_id, "MarkdownNote", {"text": text}, title=title, size=size)


def build(nodes: list[Node], classes: dict[str, type], title: str, columns: Optional[list[Column]] = None) -> dict:
    """The UI workflow JSON for ``nodes``; raises ValueError naming the node for bad references.

    With ``columns`` (group title and node ids, see :mod:`.template_layout`) the nodes are placed
    in groups beside the first note, and the workflow opens with all of it on screen."""
    by_id = {node.id: node for node in nodes}
    links: list[list] = []
    outgoing: dict[tuple[int, int], list[int]] = {}
    built_inputs: dict[int, list[dict]] = {}
    for node in nodes:
        if node.type in NOTE_TYPES:
            continue
        cls = _class_of(node, classes)
        specs = {spec.name: spec for spec in node_specs.input_specs(cls)}
        for name in node.links:
            if name not in specs:
                raise ValueError(f"template {title!r}: node {node.id} ({node.type}) has no input {name!r}")
        inputs = []
        for spec in specs.values():
            link_id = None
            if spec.name in node.links:
                source_id, slot = node.links[spec.name]
                source_cls = _class_of(by_id[source_id], classes)
                source_type = source_cls.RETURN_TYPES[slot]
                if not node_specs.types_match(source_type, spec.type):
                    raise ValueError(f"template {title!r}: node {node.id} input {spec.name!r} ({spec.type}) "
                                     f"linked to node {source_id} output {slot} ({source_type})")
                link_id = len(links) + 1
                links.append([link_id, source_id, slot, node.id, len(inputs), source_type])
                outgoing.setdefault((source_id, slot), []).append(link_id)
            elif spec.is_widget:
                continue  # plain widget: stored in widgets_values only
            entry = {"name": spec.name, "type": "COMBO" if spec.is_combo else spec.type, "link": link_id}
            if spec.is_widget:
                entry["widget"] = {"name": spec.name}
            if spec.section == "optional":
                entry["shape"] = OPTIONAL_SHAPE
            inputs.append(entry)
        built_inputs[node.id] = inputs
    groups: list[dict] = []
    if columns:
        sizes = {node.id: _size(node, classes, built_inputs.get(node.id, [])) for node in nodes}
        notes = [node.id for node in nodes if node.type in NOTE_TYPES]
        groups = template_layout.arrange(by_id, notes[0], columns, sizes)
        for node in nodes:
            node.size = sizes[node.id]
    ui_nodes = [_node_json(node, classes, built_inputs.get(node.id, []), outgoing, order)
                for order, node in enumerate(nodes)]
    view = template_layout.initial_view(ui_nodes, groups) if columns else {"scale": 0.75, "offset": [0, 0]}
    return {
        "id": _stable_uuid(title),
        "revision": 0,
        "last_node_id": max(by_id),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": view, "info": {"title": title}},
        "version": 0.4,
    }


def _class_of(node: Node, classes: dict[str, type]) -> type:
    if node.type not in classes:
        raise ValueError(f"node {node.id}: unknown node type {node.type!r}")
    return classes[node.type]


def widgets_values(node: Node, cls: type) -> list:
    """Positional widget values: given or default, plus the seed-control / upload entries."""
    values = []
    for spec in node_specs.widget_specs(cls):
        if spec.name in node.widgets:
            value = node.widgets[spec.name]
        elif "default" in spec.options:
            value = spec.options["default"]
        elif spec.is_combo:
            value = spec.type[0] if spec.type else ""
        else:
            raise ValueError(f"node {node.id} ({node.type}): widget {spec.name!r} needs a value")
        values.append(value)
        if spec.extra_values:
            values.append(node.seed_control if spec.type == "INT" else "image")
    unknown = set(node.widgets) - {spec.name for spec in node_specs.widget_specs(cls)}
    if unknown:
        raise ValueError(f"node {node.id} ({node.type}): no widgets named {sorted(unknown)}")
    return values


def _node_json(node: Node, classes: dict[str, type], inputs: list[dict],
               outgoing: dict[tuple[int, int], list[int]], order: int) -> dict:
    base = {"id": node.id, "type": node.type, "pos": list(node.pos), "flags": {}, "order": order, "mode": 0}
    if node.type in NOTE_TYPES:
        base.update({"size": list(node.size or (400.0, 200.0)), "inputs": [], "outputs": [],
                     "properties": {}, "widgets_values": [node.widgets["text"]], "color": "#432", "bgcolor": "#653"})
        if node.title:
            base["title"] = node.title
        return base
    cls = classes[node.type]
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    outputs = []
    for slot, (name, kind) in enumerate(zip(names, cls.RETURN_TYPES)):
        outputs.append({"name": name, "type": kind, "links": outgoing.get((node.id, slot)) or None, "slot_index": slot})
    properties: dict[str, Any] = {"Node name for S&R": node.type}
    if node.type in CORE_NODES:
        properties.update({"cnr_id": "comfy-core"})
    else:
        properties.update({"cnr_id": PACK_ID, "ver": PACK_VERSION})
    if node.models:
        properties["models"] = node.models
    base.update({"size": list(_size(node, classes, inputs)), "inputs": inputs, "outputs": outputs,
                 "properties": properties, "widgets_values": widgets_values(node, cls)})
    if node.title:
        base["title"] = node.title
    return base


def _size(node: Node, classes: dict[str, type], inputs: list[dict]) -> tuple[float, float]:
    if node.type in NOTE_TYPES:
        return node.size or template_layout.note_size(node.widgets["text"])
    cls = classes[node.type]
    return template_layout.estimated_size(node, cls, len(inputs), len(cls.RETURN_TYPES))


def _stable_uuid(title: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/wanflow/comfyui-wanflow/{title}"))
