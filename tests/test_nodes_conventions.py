"""Every registered node follows the pack's conventions (menu, names, tooltips, socket types)."""
import pytest

from wanflow.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from wanflow.runner import node_specs

STANDARD_TYPES = {"IMAGE", "MASK", "LATENT", "INT", "FLOAT", "STRING", "BOOLEAN"}
# core types that only the bridges take or give (nodes/core_bridge.py), each named in the description
BRIDGE_TYPES = {"MODEL": "MODEL", "CONDITIONING": "CONDITIONING", "CLIP_VISION_OUTPUT": "CLIPVisionEncode"}


def all_types(cls):
    for spec in node_specs.input_specs(cls):
        if not spec.is_combo:
            yield spec.type
    yield from cls.RETURN_TYPES


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_conventions(name):
    cls = NODE_CLASS_MAPPINGS[name]
    assert name.startswith("WanFlow")
    assert NODE_DISPLAY_NAME_MAPPINGS[name].startswith("WanFlow ")
    assert cls.CATEGORY.split("/")[0] == "WanFlow"
    assert cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))
    for spec in node_specs.input_specs(cls):
        assert spec.options.get("tooltip"), f"{name}.{spec.name} has no tooltip"
        if spec.is_widget and not spec.is_combo and spec.type != "STRING":
            assert "default" in spec.options, f"{name}.{spec.name} has no default"
        if spec.is_combo and spec.type:
            assert spec.options.get("default", spec.type[0]) in spec.type
    for union in all_types(cls):
        for kind in union.split(","):
            if kind in BRIDGE_TYPES:
                texts = cls.DESCRIPTION + " ".join(spec.options.get("tooltip", "") for spec in node_specs.input_specs(cls))
                assert BRIDGE_TYPES[kind] in texts, f"{name}: says nowhere which socket takes core {kind}"
                continue
            assert kind in STANDARD_TYPES or kind.startswith("WANFLOW_"), f"{name}: type {kind} lacks WANFLOW_"
    if getattr(cls, "RETURN_NAMES", None):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)


def test_display_names_cover_all_nodes():
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
