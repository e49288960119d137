"""Check the graph against the kinds of its models before any weights load.

A loader node that can tell its model's variant from the file header alone declares
``peek_variant(**widgets)``; a node that cares which kinds reach its sockets declares
``check_models(models, conditioning, connected)`` (see nodes/model_checks.py for the rules and
nodes/sampler_nodes.py, nodes/image_to_video.py for the hooks). Reading a header takes
milliseconds, so an I2V expert in a text-to-video graph fails here, not after minutes of loading.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

from ..model_loaders.errors import CheckpointError
from .errors import InvalidWorkflow
from .workflow import is_link

log = logging.getLogger("wanflow.runner")


def check_model_kinds(prompt: dict[str, dict], classes: dict[str, type], order: list[str]) -> None:
    """Raise :class:`InvalidWorkflow` on the first node whose models do not fit its sockets."""
    variants = _peek_variants(prompt, classes, order)
    if not variants:
        return
    for node_id in order:
        entry = prompt[node_id]
        check = getattr(classes[entry["class_type"]], "check_models", None)
        if check is None:
            continue
        inputs = entry["inputs"]
        links = {name: value[0] for name, value in inputs.items() if is_link(value)}
        models = {name: variants[source] for name, source in links.items() if source in variants}
        if not models:
            continue
        conditioning = {name: kind for name, source in links.items()
                        if (kind := getattr(classes[prompt[source]["class_type"]], "CONDITIONING_KIND", None))}
        try:
            check(models, conditioning, set(inputs))
        except ValueError as exc:
            raise InvalidWorkflow(f"{exc} (checked from the model files' headers, before loading)",
                                  node_id, entry["class_type"]) from None


def _peek_variants(prompt: dict[str, dict], classes: dict[str, type], order: list[str]) -> dict[str, Any]:
    """Variant per loader node, for the loaders that can read it from the header.

    A file whose header cannot be read is left to the loader itself, which reports it with the
    file's name when the node runs (within a second: a broken header is found at once).
    """
    variants = {}
    for node_id in order:
        entry = prompt[node_id]
        peek = getattr(classes[entry["class_type"]], "peek_variant", None)
        if peek is None:
            continue
        widgets = {name: value for name, value in entry["inputs"].items() if not is_link(value)}
        try:
            variants[node_id] = peek(**{name: widgets[name] for name in _parameters(peek) if name in widgets})
        except (CheckpointError, OSError, ValueError, TypeError) as exc:
            log.debug("node %s: variant not read from the header (%s); the loader will report it", node_id, exc)
    return variants


def _parameters(function: Any) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name not in ("cls", "self")]
