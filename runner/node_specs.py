"""Reading a V1 node class: its inputs, which of them are widgets, and its outputs.

The frontend saves widget values positionally (``widgets_values``) in the order of the widget
inputs of ``INPUT_TYPES`` (required, then optional; sockets skipped). Two kinds of extra entries
follow some widgets: the seed control (``"fixed"``, ``"randomize"``, …) after an INT with
``control_after_generate`` (or named ``seed``/``noise_seed``), and the upload button value after
an image combo with ``image_upload``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class."""

    name: str
    type: Any  # a type name, or a list of choices for a combo
    options: dict = field(default_factory=dict)
    section: str = "required"

    @property
    def is_combo(self) -> bool:
        return isinstance(self.type, (list, tuple))

    @property
    def is_widget(self) -> bool:
        if self.options.get("forceInput"):
            return False
        return self.is_combo or self.type in WIDGET_TYPES

    @property
    def extra_values(self) -> int:
        """How many ``widgets_values`` entries follow this widget's own value."""
        if self.type == "INT":
            control = self.options.get("control_after_generate")
            return int(bool(control)) if control is not None else int(self.name in SEED_NAMES)
        if self.is_combo and any(self.options.get(flag) for flag in UPLOAD_OPTIONS):
            return 1
        return 0


def input_specs(node_class: type) -> list[InputSpec]:
    """Required and optional inputs in declaration order (hidden inputs excluded)."""
    declared = node_class.INPUT_TYPES()
    specs = []
    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, (list, tuple)) else spec
            options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
            specs.append(InputSpec(name, kind, dict(options or {}), section))
    return specs


def hidden_inputs(node_class: type) -> dict[str, str]:
    """Hidden inputs (``PROMPT``, ``EXTRA_PNGINFO``, ``UNIQUE_ID``) by name."""
    return dict(node_class.INPUT_TYPES().get("hidden") or {})


def widget_specs(node_class: type) -> list[InputSpec]:
    return [spec for spec in input_specs(node_class) if spec.is_widget]


def widgets_values_length(node_class: type) -> int:
    """How many entries a saved ``widgets_values`` list has for this class."""
    return sum(1 + spec.extra_values for spec in widget_specs(node_class))


def map_widgets_values(node_class: type, values: list, where: str) -> dict[str, Any]:
    """Name each positional widget value; raises ValueError when the list does not line up.

    A list that stops early is accepted when every widget it leaves out has a default: a graph
    saved before a node gained a widget opens in ComfyUI with that widget at its default, so it
    runs the same here."""
    specs = widget_specs(node_class)
    expected = widgets_values_length(node_class)
    named, i = {}, 0
    for spec in specs:
        if i == len(values) and len(values) < expected and "default" in spec.options:
            named[spec.name] = spec.options["default"]
            continue
        if i + spec.extra_values >= len(values) or len(values) > expected:
            names = ", ".join(s.name + (" (+control)" if s.extra_values else "") for s in specs)
            raise ValueError(f"{where}: widgets_values has {len(values)} entries, expected {expected} ({names})")
        named[spec.name] = values[i]
        i += 1 + spec.extra_values
    return named


def output_types(node_class: type) -> tuple[str, ...]:
    return tuple(node_class.RETURN_TYPES)


def types_match(source: str, target: Any) -> bool:
    """Can an output of type ``source`` feed an input declared as ``target``?"""
    if isinstance(target, (list, tuple)):
        return source in ("*", "COMBO")
    if "*" in (source, target):
        return True
    sources = {t.strip() for t in str(source).split(",")}
    targets = {t.strip() for t in str(target).split(",")}
    return bool(sources & targets)
