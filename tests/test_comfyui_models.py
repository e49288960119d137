"""Our models inside real ComfyUI's model management, and the bridges to core types.

Each check runs a script of tests/comfyui_scripts/ in ComfyUI's own venv (ComfyUI's modules
imported, the pack imported as ComfyUI imports it, CPU), on the tiny model files the ``server``
fixture wrote into ComfyUI's models folder.
"""
from comfyui_setup import ROOT, requires_comfyui, run_in_comfyui

pytestmark = requires_comfyui


def test_comfyui_loads_and_unloads_our_models(server):
    """A run registers every model with ComfyUI; another node's free_memory unloads them all; a
    partial (--lowvram style) load gives the same output, with and without a LoRA."""
    report = run_in_comfyui(server["work"], "memory_check.py", ROOT)
    assert report["frames"] == [5, 32, 32, 3]
    assert all(report["loaded_after_run"].values()), report
    assert not any(report["loaded_after_free_memory"].values()), report
    assert not any(report["weight_memory_after_free_memory"].values()), report
    assert report["partial_lowvram"] and report["cast_layers"] > 10
    assert report["lora_changes_output"] > 1e-3
    assert report["partial_lora_diff"] < 1e-6 and report["partial_plain_diff"] < 1e-6
