"""Where the nodes of a template go: a files note, then groups in columns read left to right.

Templates name their columns (``Load models``, ``Prompt``, ``Sample``, ``Decode and save``) and
the nodes of each, top to bottom; :func:`arrange` places them so that no two nodes come within
:data:`NODE_GAP` pixels (title bars included), wraps each column in a group, sizes the note to
fit its table, and :func:`initial_view` picks the zoom and offset at which the whole graph is on
screen when the template opens. ``tests/test_workflows.py`` checks the same rules on every file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from . import node_specs

TITLE_BAR = 30.0      # the frontend draws a node's title above its ``pos``
NODE_GAP = 50.0       # between nodes, title bars included (the rule is >= 40)
GROUP_PAD = 20.0      # inside a group, around its nodes
GROUP_HEADER = 45.0   # the group's own title
COLUMN_GAP = 70.0     # between groups
CHAR_WIDTH = 7.5      # average width of a character of the note's text
LINE_HEIGHT = 21.0
VIEWPORT = (1780.0, 880.0)   # the canvas a 1920x1080 screen leaves beside the toolbar and sidebar
READABLE_SCALE = 0.6         # below it the frontend draws nodes without their text
VIEW_MARGIN = (70.0, 80.0)   # where the graph's top-left corner lands on screen
GROUP_COLOURS = {"Load models": "#3f789e", "Load models and pictures": "#3f789e", "Prompt": "#8a5c9e",
                 "Sample": "#3f8e5e", "Decode and save": "#a1793a"}


@dataclass
class Column:
    title: str
    node_ids: list[int]


def estimated_size(node: Any, cls: type, inputs: int, outputs: int) -> tuple[float, float]:
    """The body size saved for a node that gives none: 340 px wide, rows for sockets and widgets."""
    if node.size is not None:
        return node.size
    widgets = len(node_specs.widget_specs(cls))
    return 340.0, 30.0 + 22.0 * (inputs + outputs) + 26.0 * widgets


def note_size(text: str) -> tuple[float, float]:
    """A note wide enough for its longest table row, tall enough for its wrapped lines."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    width = max([_row_width(row) for row in rows] + [420.0])
    lines = 0
    for line in text.splitlines():
        if line.startswith("|"):
            lines += 1.4  # table rows are taller than text lines
        else:
            lines += max(1, -(-len(_visible(line)) * CHAR_WIDTH // (width - 40)))
    return width, 60.0 + lines * LINE_HEIGHT


def _visible(markdown: str) -> str:
    """The text a Markdown line shows: link targets and code marks dropped."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "").replace("*", "")


def _row_width(row: str) -> float:
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return sum(len(_visible(cell)) * CHAR_WIDTH + 28.0 for cell in cells) + 40.0


def arrange(nodes: dict[int, Any], note_id: int, columns: list[Column],
            sizes: dict[int, tuple[float, float]]) -> list[dict]:
    """Set ``pos`` of the note and of every column's nodes; returns the frontend's group entries."""
    nodes[note_id].pos = (0.0, GROUP_HEADER + TITLE_BAR)
    x = sizes[note_id][0] + COLUMN_GAP
    groups = []
    for index, column in enumerate(columns, start=1):
        width = max(sizes[node_id][0] for node_id in column.node_ids)
        y = GROUP_HEADER + TITLE_BAR
        for node_id in column.node_ids:
            nodes[node_id].pos = (x + GROUP_PAD, y)
            y += sizes[node_id][1] + TITLE_BAR + NODE_GAP
        height = y - NODE_GAP - TITLE_BAR + GROUP_PAD
        groups.append({"id": index, "title": column.title, "bounding": [x, 0.0, width + 2 * GROUP_PAD, height],
                       "color": GROUP_COLOURS.get(column.title, "#3f789e"), "font_size": 24, "flags": {}})
        x += width + 2 * GROUP_PAD + COLUMN_GAP
    return groups


def graph_bounds(node_rects: Iterable[tuple[float, float, float, float]],
                 groups: Iterable[dict]) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the nodes (title bars included) and groups."""
    rects = [*node_rects, *(tuple(group["bounding"]) for group in groups)]
    return (min(r[0] for r in rects), min(r[1] for r in rects),
            max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects))


def node_rect(entry: dict) -> tuple[float, float, float, float]:
    """A saved node's rectangle with its title bar: ``(x, y, width, height)``."""
    (x, y), (width, height) = entry["pos"], entry["size"]
    return x, y - TITLE_BAR, width, height + TITLE_BAR


def initial_view(ui_nodes: list[dict], groups: list[dict]) -> dict:
    """``extra.ds``: the largest zoom (at most 1) at which the whole graph fits the viewport."""
    left, top, right, bottom = graph_bounds((node_rect(n) for n in ui_nodes), groups)
    scale = min(1.0, VIEWPORT[0] / (right - left), VIEWPORT[1] / (bottom - top))
    scale = math.floor(scale * 1000) / 1000  # rounded down, so the graph still fits
    offset = [round(VIEW_MARGIN[0] / scale - left, 1), round(VIEW_MARGIN[1] / scale - top, 1)]
    return {"scale": scale, "offset": offset}
