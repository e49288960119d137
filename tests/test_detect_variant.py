"""Variant detection: a table of real release file names and real shapes -> expected variant.

Shapes come from our WanDiT presets built on the meta device (the exact shapes of the official
weights, no data), written with the key prefixes each release uses.
"""
from __future__ import annotations

import functools

import pytest
import torch

from wanflow.model_loaders.detect import (COMMUNITY_DEFAULTS, FUN_INP_DEFAULTS, OFFICIAL_DEFAULTS, classify,
                                          detect_dit_variant, expert_from_name, family_from_name, is_fun_inp_name)
from wanflow.model_loaders.errors import UnsupportedModelError, WrongModelError
from wanflow.wan import dit, dit_config


@functools.lru_cache(maxsize=None)
def preset_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = dit.WanDiT(dit_config.PRESETS[preset])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# file name (as released) | preset whose shapes it holds | family, task, size, expert
RELEASES = [
    ("wan2.1_t2v_1.3B_bf16.safetensors", "wan2.1-t2v-1.3b", ("2.1", "t2v", "1.3B", None)),
    ("Wan2_1-T2V-1_3B_fp8_e4m3fn.safetensors", "wan2.1-t2v-1.3b", ("2.1", "t2v", "1.3B", None)),
    ("wan2.1_t2v_14B_fp16.safetensors", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("Wan2_1-T2V-14B_fp8_e4m3fn.safetensors", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("wan2.1_i2v_480p_14B_fp8_scaled.safetensors", "wan2.1-i2v-14b", ("2.1", "i2v", "14B", None)),
    ("Wan2_1-I2V-14B-720P_fp8_e4m3fn.safetensors", "wan2.1-i2v-14b", ("2.1", "i2v", "14B", None)),
    ("wan2.1_flf2v_720p_14B_fp16.safetensors", "wan2.1-flf2v-14b", ("2.1", "flf2v", "14B", None)),
    ("wan2.1_vace_1.3B_fp16.safetensors", "wan2.1-vace-1.3b", ("2.1", "vace", "1.3B", None)),
    ("wan2.1_vace_14B_fp16.safetensors", "wan2.1-vace-14b", ("2.1", "vace", "14B", None)),
    ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "high")),
    ("wan2.2_t2v_low_noise_14B_fp16.safetensors", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "low")),
    ("wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "low")),
    ("Wan2_2-T2V-A14B_HIGH_fp8_e4m3fn_scaled_KJ.safetensors", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "high")),
    ("Wan2_2-T2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "low")),
    ("wan2.2_i2v_A14b_high_noise_lightx2v_4step_1030.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("Wan2.2-T2V-A14B/low_noise_model/diffusion_pytorch_model.safetensors.index.json",
     "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "low")),
    ("Wan2.2-I2V-A14B/high_noise_model/diffusion_pytorch_model.safetensors.index.json",
     "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("Wan2.2-T2V-A14B-Diffusers/transformer_2", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "low")),
    ("wan2.2_ti2v_5B_fp16.safetensors", "wan2.2-ti2v-5b", ("2.2", "ti2v", "5B", None)),
    ("some_finetune_of_i2v.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", None)),
    # Phantom-Wan subject-to-video: Wan 2.1 T2V weights; Kijai's repackaged names, the official
    # 1.3B checkpoint and QuantStack's GGUF
    ("Phantom-Wan-1_3B_fp16.safetensors", "wan2.1-t2v-1.3b", ("2.1", "t2v", "1.3B", None)),
    ("Phantom-Wan-1_3B_fp32.safetensors", "wan2.1-t2v-1.3b", ("2.1", "t2v", "1.3B", None)),
    ("Phantom-Wan-1.3B.pth", "wan2.1-t2v-1.3b", ("2.1", "t2v", "1.3B", None)),
    ("Phantom-Wan-14B_fp16.safetensors", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("Phantom-Wan-14B_fp8_e4m3fn.safetensors", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("Phantom_Wan_14B-Q4_K_M.gguf", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("wan2.2_fun_vace_high_noise_14B_bf16.safetensors", "wan2.2-vace-fun-a14b", ("2.2", "vace", "14B", "high")),
    ("wan2.2_fun_vace_high_noise_14B_fp8_scaled.safetensors", "wan2.2-vace-fun-a14b", ("2.2", "vace", "14B", "high")),
    ("wan2.2_fun_vace_low_noise_14B_fp8_scaled.safetensors", "wan2.2-vace-fun-a14b", ("2.2", "vace", "14B", "low")),
    # Wan2.2-Fun-A14B-InP: the shapes of Wan 2.2 I2V-A14B; its name gives its authors' settings
    # (Comfy-Org repackaged, alibaba-pai/Wan2.2-Fun-A14B-InP folders, QuantStack GGUF)
    ("wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("wan2.2_fun_inpaint_low_noise_14B_fp8_scaled.safetensors", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "low")),
    ("Wan2.2-Fun-A14B-InP/high_noise_model/diffusion_pytorch_model.safetensors.index.json",
     "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("Wan2.2-Fun-A14B-InP/low_noise_model/diffusion_pytorch_model.safetensors.index.json",
     "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "low")),
    ("Wan2.2-Fun-A14B-InP-HighNoise-Q4_K_M.gguf", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    # Wan2.2-Fun-5B-InP: one model, told apart by its 100 input channels (Comfy-Org's repackaged file)
    ("wan2.2_fun_inpaint_5B_bf16.safetensors", "wan2.2-fun-5b-inp", ("2.2", "i2v", "5B", None)),
    ("my_5b_inpaint_finetune.safetensors", "wan2.2-fun-5b-inp", ("2.2", "i2v", "5B", None)),
    # GGUF (loaded by gguf_files.py; the same shapes as the files they were converted from):
    # city96/Wan2.1-*-gguf, QuantStack/Wan2.2-*-GGUF and QuantStack/Wan2.1_14B_VACE-GGUF names
    ("wan2.1-t2v-14b-Q4_K_M.gguf", "wan2.1-t2v-14b", ("2.1", "t2v", "14B", None)),
    ("wan2.1-i2v-14b-480p-Q5_K_M.gguf", "wan2.1-i2v-14b", ("2.1", "i2v", "14B", None)),
    ("Wan2.1_14B_VACE-Q4_K_M.gguf", "wan2.1-vace-14b", ("2.1", "vace", "14B", None)),
    ("HighNoise/Wan2.2-T2V-A14B-HighNoise-Q4_K_M.gguf", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "high")),
    ("LowNoise/Wan2.2-T2V-A14B-LowNoise-Q4_K_M.gguf", "wan2.2-t2v-a14b", ("2.2", "t2v", "14B", "low")),
    ("Wan2.2-I2V-A14B-HighNoise-Q8_0.gguf", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "high")),
    ("Wan2.2-I2V-A14B-LowNoise-Q3_K_M.gguf", "wan2.2-i2v-a14b", ("2.2", "i2v", "14B", "low")),
    ("Wan2.2-TI2V-5B-Q4_K_M.gguf", "wan2.2-ti2v-5b", ("2.2", "ti2v", "5B", None)),
]


@pytest.mark.parametrize("name, preset, expected", RELEASES, ids=[r[0] for r in RELEASES])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_release_table(name, preset, expected, prefix):
    shapes = preset_shapes(preset)
    if prefix:  # ComfyUI-prefixed files are stripped by the loader; classify sees through it
        assert classify({prefix + k: v for k, v in shapes.items()}).kind == "wan_dit"
    variant = detect_dit_variant(shapes, name)
    assert (variant.family, variant.task, variant.size, variant.expert) == expected
    assert variant.config == dit_config.PRESETS[preset]  # the exact official architecture
    key = (variant.family, variant.task, variant.size)
    fun_a14b_inp = is_fun_inp_name(name) and variant.size == "14B"
    expected_defaults = FUN_INP_DEFAULTS if fun_a14b_inp else {**OFFICIAL_DEFAULTS, **COMMUNITY_DEFAULTS}[key]
    assert variant.defaults == expected_defaults
    assert any("Fun-A14B-InP" in note for note in variant.notes) == fun_a14b_inp
    assert any("Fun-5B-InP" in note for note in variant.notes) == (preset == "wan2.2-fun-5b-inp")


def test_fun_inp_names():
    for name in ("wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors", "Wan2.2-Fun-A14B-InP",
                 "Wan2_2-Fun-InP-A14B_LOW_fp8_e4m3fn_scaled_KJ.safetensors"):
        assert is_fun_inp_name(name), name
    for name in ("wan2.2_i2v_high_noise_14B_fp16.safetensors", "wan2.2_fun_vace_high_noise_14B_bf16.safetensors",
                 "Wan2.2-Fun-A14B-Control", "fun_input_test.safetensors"):
        assert not is_fun_inp_name(name), name


def test_fun_inp_defaults_are_its_authors_settings():
    inp = FUN_INP_DEFAULTS
    assert (inp.shift, inp.steps, inp.boundary, inp.vae) == (5.0, 50, 0.9, "2.1")
    assert (inp.guide_scale, inp.guide_scale_low_noise) == (6.0, 6.0)
    assert inp.sizes[0] == (832, 480) and (inp.frames, inp.fps) == (81, 16)


def test_fun_5b_inp_is_one_model_with_its_authors_settings():
    variant = detect_dit_variant(preset_shapes("wan2.2-fun-5b-inp"), "wan2.2_fun_inpaint_5B_bf16.safetensors")
    assert variant.name == "Wan 2.2 I2V-5B" and variant.expert is None
    assert (variant.defaults.vae, variant.defaults.frames, variant.defaults.fps) == ("2.2", 121, 24)
    assert (variant.defaults.guide_scale, variant.defaults.steps, variant.defaults.boundary) == (6.0, 50, None)
    with pytest.raises(WrongModelError, match="no high/low-noise experts"):
        detect_dit_variant(preset_shapes("wan2.2-fun-5b-inp"), "wan2.2_fun_inpaint_5B_bf16.safetensors", expert="high")


def test_t2v_14b_without_a_telling_name_is_assumed_2_1_with_a_note():
    variant = detect_dit_variant(preset_shapes("wan2.1-t2v-14b"), "my_finetune.safetensors")
    assert (variant.family, variant.family_from) == ("2.1", "assumed")
    assert any("identical shapes" in note for note in variant.notes)


def test_phantom_is_told_from_t2v_by_its_file_name_only():
    """Phantom-Wan-14B has the T2V-14B shapes and no 'wan2.1' in its name: 2.1 from the name, with a
    note pointing at Subject to Video; a plain T2V file gets no such note."""
    phantom = detect_dit_variant(preset_shapes("wan2.1-t2v-14b"), "Phantom-Wan-14B_fp16.safetensors")
    assert (phantom.family, phantom.family_from) == ("2.1", "file name")
    assert any("Subject to Video" in note for note in phantom.notes)
    assert not any("identical shapes" in note for note in phantom.notes)
    plain = detect_dit_variant(preset_shapes("wan2.1-t2v-1.3b"), "wan2.1_t2v_1.3B_bf16.safetensors")
    assert not any("Phantom" in note for note in plain.notes)


def test_expert_override_makes_a_t2v_14b_a_2_2_expert():
    variant = detect_dit_variant(preset_shapes("wan2.1-t2v-14b"), "my_finetune.safetensors",
                                 expert="low")
    assert (variant.family, variant.expert) == ("2.2", "low")
    assert variant.defaults.boundary == 0.875


def test_expert_override_on_a_model_without_experts_is_an_error():
    with pytest.raises(WrongModelError, match="no high/low-noise experts"):
        detect_dit_variant(preset_shapes("wan2.2-ti2v-5b"), "x.safetensors", expert="high")


def test_wan22_vace_fun_expert_pair_from_tiny_files(tmp_path):
    """Wan2.2-VACE-Fun-A14B as Comfy-Org ships it (``model.diffusion_model.`` keys, scaled fp8, a
    high/low file pair), written tiny: both files load as experts of one pair that takes the
    conditioning of WanFlow Reference to Video, with its authors' settings and the T2V switch."""
    import checkpoint_fixtures as fx
    from wanflow.model_loaders.dit_loader import load_dit, peek_dit_variant
    from wanflow.nodes.model_checks import check_sampler_models

    variants = {}
    for expert in ("high", "low"):
        written = fx.write("comfy_fp8_scaled", "vace", tmp_path / expert, seed=1 if expert == "high" else 2)
        path = written.rename(written.with_name(f"wan2.2_fun_vace_{expert}_noise_14B_fp8_scaled.safetensors"))
        loaded = load_dit(path)
        assert peek_dit_variant(path) == loaded.variant
        variants[expert] = variant = loaded.variant
        assert (variant.family, variant.task, variant.expert) == ("2.2", "vace", expert)
        assert variant.config.vace_layers == fx.TINY_CONFIGS["vace"].vace_layers and variant.config.in_dim == 16
        assert variant.defaults == COMMUNITY_DEFAULTS[("2.2", "vace", "14B")] and variant.defaults.boundary == 0.875
        assert "high-noise expert" in variant.name if expert == "high" else "low-noise expert" in variant.name
    check_sampler_models({"model_high": variants["high"], "model_low": variants["low"]}, "reference")
    with pytest.raises(ValueError, match="connect the high-noise expert to model_high"):
        check_sampler_models({"model_high": variants["low"], "model_low": variants["high"]}, "reference")
    # The Wan 2.1 VACE file of the same shapes stays a single Wan 2.1 model.
    single = detect_dit_variant(preset_shapes("wan2.1-vace-14b"), "wan2.1_vace_14B_fp16.safetensors")
    assert (single.family, single.expert) == ("2.1", None)


def test_wan22_vace_fun_defaults_are_its_authors_settings():
    vace22 = COMMUNITY_DEFAULTS[("2.2", "vace", "14B")]
    assert (vace22.shift, vace22.steps, vace22.solver, vace22.boundary) == (12.0, 50, "unipc", 0.875)
    assert (vace22.guide_scale, vace22.guide_scale_low_noise, vace22.vae) == (5.0, 5.0, "2.1")
    assert (832, 480) in vace22.sizes and (vace22.frames, vace22.fps) == (81, 16)


def test_official_defaults():
    t2v22 = OFFICIAL_DEFAULTS[("2.2", "t2v", "14B")]
    assert (t2v22.shift, t2v22.steps, t2v22.boundary) == (12.0, 40, 0.875)
    assert (t2v22.guide_scale, t2v22.guide_scale_low_noise) == (4.0, 3.0)
    i2v22 = OFFICIAL_DEFAULTS[("2.2", "i2v", "14B")]
    assert (i2v22.shift, i2v22.boundary, i2v22.guide_scale) == (5.0, 0.9, 3.5)
    ti2v = OFFICIAL_DEFAULTS[("2.2", "ti2v", "5B")]
    assert (ti2v.vae, ti2v.fps, ti2v.frames, ti2v.sizes[0]) == ("2.2", 24, 121, (1280, 704))
    i2v21 = OFFICIAL_DEFAULTS[("2.1", "i2v", "14B")]
    assert (i2v21.shift, i2v21.shift_480p, i2v21.steps, i2v21.needs_clip_vision) == (5.0, 3.0, 40, True)
    assert OFFICIAL_DEFAULTS[("2.1", "flf2v", "14B")].shift == 16.0
    assert OFFICIAL_DEFAULTS[("2.1", "vace", "1.3B")].shift == 16.0
    assert all(d.vae == "2.1" for k, d in OFFICIAL_DEFAULTS.items() if k[2] != "5B")


@pytest.mark.parametrize("name, expert", [
    ("wan2.2_t2v_high_noise_14B_fp16.safetensors", "high"),
    ("Wan2_2-I2V-A14B_LOW_fp8.safetensors", "low"),
    ("high_noise_model/diffusion_pytorch_model.safetensors.index.json", "high"),
    ("transformer_2/diffusion_pytorch_model.safetensors.index.json", "low"),
    ("wan2.1_t2v_14B_highres_finetune.safetensors", None),   # "highres" is not "high"
    ("flow_matching_lowvram.safetensors", None),
    ("high_and_low.safetensors", None),                       # contradictory: no guess
])
def test_expert_from_name(name, expert):
    assert expert_from_name(name) == expert


@pytest.mark.parametrize("name, family", [("Wan2_2-T2V-A14B.safetensors", "2.2"),
                                          ("wan22_t2v.safetensors", "2.2"),
                                          ("wan2.1_t2v_14B.safetensors", "2.1"),
                                          ("model.safetensors", None)])
def test_family_from_name(name, family):
    assert family_from_name(name) == family


# --------------------------------------------------------------------------- other files

OTHER_FILES = {
    "wan_vae_2.1": {"decoder.middle.0.residual.0.gamma": (384, 1, 1, 1),
                    "encoder.conv1.weight": (96, 3, 3, 3, 3), "conv1.weight": (32, 32, 1, 1, 1)},
    "wan_vae_2.2": {"decoder.middle.0.residual.0.gamma": (1024, 1, 1, 1),
                    "decoder.upsamples.0.upsamples.0.residual.2.weight": (1024, 1024, 3, 3, 3)},
    "umt5": {"shared.weight": (256384, 4096), "encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096),
             "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": (32, 64),
             "spiece_model": (4548313,)},
    "clip_vision": {"vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14),
                    "vision_model.encoder.layers.0.self_attn.q_proj.weight": (1280, 1280)},
    "lora": {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": (32, 5120),
             "diffusion_model.blocks.0.self_attn.q.lora_up.weight": (5120, 32)},
    "sdxl": {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
             "model.diffusion_model.label_emb.0.0.weight": (1280, 2816)},
    "sd1": {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)},
    "flux": {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)},
    "wan_vace_module": {"vace_patch_embedding.weight": (5120, 96, 1, 2, 2),
                        "vace_blocks.0.after_proj.weight": (5120, 5120)},
}


@pytest.mark.parametrize("kind", list(OTHER_FILES))
def test_classify_other_files(kind):
    assert classify(OTHER_FILES[kind]).kind == kind


@pytest.mark.parametrize("kind, words", [("wan_vae_2.1", "Wan 2.1 VAE"), ("umt5", "text-encoder loader"),
                                         ("clip_vision", "CLIP vision loader"), ("lora", "LoRA"),
                                         ("sdxl", "Stable Diffusion XL"),
                                         ("wan_vace_module", "VACE add-on module.*full VACE model")])
def test_non_dit_files_name_what_they_are(kind, words):
    with pytest.raises(WrongModelError, match=words):
        detect_dit_variant(OTHER_FILES[kind], "file.safetensors")


@pytest.mark.parametrize("marker, what", [("control_adapter.conv.weight", "camera"),
                                          ("face_adapter.fuser_blocks.0.k_norm.weight", "Animate"),
                                          ("casual_audio_encoder.encoder.final_linear.weight", "S2V")])
def test_unsupported_wan_variants_are_named(marker, what):
    shapes = dict(preset_shapes("wan2.1-t2v-1.3b"), **{marker: (8,)})
    with pytest.raises(UnsupportedModelError, match=what):
        detect_dit_variant(shapes, "x.safetensors")


def test_fun_control_channels_are_named():
    shapes = dict(preset_shapes("wan2.1-t2v-1.3b"))
    shapes["patch_embedding.weight"] = (1536, 48, 1, 2, 2)
    with pytest.raises(UnsupportedModelError, match="48 input and 16 output"):
        detect_dit_variant(shapes, "wan2.1_fun_control_1.3B_bf16.safetensors")
