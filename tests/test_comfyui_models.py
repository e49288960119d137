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


def test_core_model_and_conditioning_sample_like_core_two_stage_ksampler(server):
    """Two core Wan experts (UNETLoader's loader, ModelSamplingSD3, one after core LoraLoaderModelOnly)
    and core text conditioning (unpadded, prompts of different lengths) through our MoE sampler
    give core KSamplerAdvanced's two-stage result (Euler, simple); our DiT takes the unpadded
    context exactly as core's Wan model does."""
    models = server["work"] / "ComfyUI" / "models"
    report = run_in_comfyui(server["work"], "core_model_check.py", ROOT, models)
    assert report["note"].endswith("high-noise expert 2 steps, low-noise expert 4 steps"), report
    assert report["sampler_max_diff"] < 1e-4 and report["sampler_lora_max_diff"] < 1e-4, report
    assert report["lora_changes_result"] > 1e-2, report       # the core LoRA patch reached our sampler
    assert report["dit_unpadded_max_diff"] < 1e-4 < report["dit_padded_max_diff"], report
    assert report["dit_both_padded_max_diff"] < 1e-4, report
