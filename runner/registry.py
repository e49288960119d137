"""The node classes the headless runner knows: the pack's nodes plus a LoadImage of our own."""
from __future__ import annotations

from ..nodes import NODE_CLASS_MAPPINGS
from ..nodes.load_image import LoadImage


def node_classes() -> dict[str, type]:
    classes = dict(NODE_CLASS_MAPPINGS)
    classes.setdefault("LoadImage", LoadImage)
    return classes
