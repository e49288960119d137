"""Parsing every LoRA dialect into canonical patches (model_loaders/lora_formats.py, lora_files.py)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from lora_fixtures import WRITERS, default_targets, make_spec, random_dit, tiny_config
from wanflow.model_loaders.lora_files import guess_expert, read_lora_file
from wanflow.model_loaders.lora_formats import (FullDiff, LoHa, LoKr, LowRank, describe_foreign,
                                                parse_lora, split_key)
from wanflow.wan.dit import WanDiT
from wanflow.wan.lora import target_names

EXPECTED_DIALECT = {
    "comfyui_ab": "comfyui", "comfyui_updown": "comfyui", "kohya": "kohya", "wan_fun": "wan-fun",
    "diffusers": "diffusers", "peft": "peft", "diffsynth": "diffsynth", "diffsynth_pipe": "diffsynth",
    "lycoris_loha": "lycoris", "lycoris_lokr": "lycoris",
}


@pytest.fixture(scope="module")
def model():
    with torch.device("meta"):
        return WanDiT(tiny_config("t2v"))


@pytest.fixture(scope="module")
def spec():
    return make_spec(random_dit(), default_targets(tiny_config("t2v"), blocks=[0, 2]))


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_dialect_reads_to_the_same_deltas(writer, model, spec):
    parsed = parse_lora(WRITERS[writer](spec), target_names(model))
    assert parsed.unparsed == {}
    assert parsed.dialects == {EXPECTED_DIALECT[writer]}
    assert sorted(parsed.patches) == sorted(spec)
    for target, expected in spec.items():
        patch = parsed.patches[target]
        assert patch.bias is None
        (weight,) = patch.weights
        torch.testing.assert_close(weight.delta(), expected.delta, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key, module, part", [
    ("diffusion_model.blocks.0.self_attn.q.lora_A.weight", "diffusion_model.blocks.0.self_attn.q", "down"),
    ("diffusion_model.blocks.0.cross_attn.k.lora_up.weight", "diffusion_model.blocks.0.cross_attn.k", "up"),
    ("lora_unet_blocks_0_self_attn_q.alpha", "lora_unet_blocks_0_self_attn_q", "alpha"),
    ("blocks.0.self_attn.q.lora_B.default.weight", "blocks.0.self_attn.q", "up"),
    ("transformer.blocks.0.attn1.to_q.lora_B.bias", "transformer.blocks.0.attn1.to_q", "diff_b"),
    ("diffusion_model.blocks.0.diff_m", "diffusion_model.blocks.0", "diff_m"),
    ("diffusion_model.blocks.0.norm3.diff_b", "diffusion_model.blocks.0.norm3", "diff_b"),
    ("diffusion_model.blocks.0.norm3.diff", "diffusion_model.blocks.0.norm3", "diff"),
    ("lycoris_blocks_0_self_attn_q.lokr_w2_b", "lycoris_blocks_0_self_attn_q", "lokr_w2_b"),
    ("lycoris_blocks_0_ffn_0.hada_w1_a", "lycoris_blocks_0_ffn_0", "hada_w1_a"),
    ("blocks.0.ffn.0.lora.down.weight", "blocks.0.ffn.0", "down"),
    ("something.weird", "something.weird", None),
])
def test_split_key(key, module, part):
    assert split_key(key) == (module, part)


def test_scale_rules():
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    assert LowRank(down, up).scale == 1.0  # no alpha: scale 1, not 1/rank
    assert LowRank(down, up, alpha=2.0).scale == 0.5
    torch.testing.assert_close(LowRank(down, up, alpha=2.0).delta(), up @ down * 0.5)
    loha = LoHa(torch.randn(5, 2), torch.randn(2, 6), torch.randn(5, 2), torch.randn(2, 6), alpha=1.0)
    assert loha.rank == 2 and loha.scale == 0.5
    full = LoKr(w1=torch.randn(2, 3), w2=torch.randn(4, 2), alpha=8.0)
    assert full.scale == 1.0 and full.delta().shape == (8, 6)  # both factors full: no alpha scaling
    low = LoKr(w1=torch.randn(2, 3), w2_a=torch.randn(4, 2), w2_b=torch.randn(2, 2), alpha=8.0)
    assert low.scale == 4.0 and low.shape == (8, 6)


def test_lokr_puts_the_w1_factor_outside_and_loha_multiplies_elementwise():
    """LyCORIS: ΔW[i·r2 + k, j·c2 + l] = w1[i, j] · w2[k, l] (w1 is the outer, small factor)."""
    g = torch.Generator().manual_seed(0)
    w1, w2_a, w2_b = (torch.randn(*s, generator=g) for s in [(2, 3), (4, 2), (2, 5)])
    w2 = w2_a @ w2_b
    expected = (w1[:, None, :, None] * w2[None, :, None, :]).reshape(8, 15) * (6.0 / 2)
    torch.testing.assert_close(LoKr(w1=w1, w2_a=w2_a, w2_b=w2_b, alpha=6.0).delta(), expected)
    a, b, c, d = (torch.randn(*s, generator=g) for s in [(5, 3), (3, 4), (5, 2), (2, 4)])
    loha = LoHa(a, b, c, d, alpha=1.5)
    torch.testing.assert_close(loha.delta(), (a @ b) * (c @ d) * 0.5)   # rank = rows of w1_b


def test_lightx2v_diffs_map_to_modules_and_modulation(model):
    sd = {
        "diffusion_model.blocks.1.diff_m": torch.randn(1, 6, 48),
        "diffusion_model.blocks.1.norm3.diff": torch.randn(48),
        "diffusion_model.blocks.1.norm3.diff_b": torch.randn(48),
        "diffusion_model.blocks.1.cross_attn.k.diff_b": torch.randn(48),
        "diffusion_model.head.head.diff": torch.randn(64, 48),
        "diffusion_model.head.modulation.diff": torch.randn(1, 2, 48),
    }
    parsed = parse_lora(sd, target_names(model))
    assert parsed.unparsed == {} and parsed.dialects == {"lightx2v"}
    assert isinstance(parsed.patches["blocks.1.modulation"].weights[0], FullDiff)
    assert isinstance(parsed.patches["head.modulation"].weights[0], FullDiff)
    norm3 = parsed.patches["blocks.1.norm3"]
    assert torch.equal(norm3.weights[0].diff, sd["diffusion_model.blocks.1.norm3.diff"])
    assert torch.equal(norm3.bias, sd["diffusion_model.blocks.1.norm3.diff_b"])
    assert parsed.patches["blocks.1.cross_attn.k"].weights == []


def test_diffusers_bias_and_modulation_names_convert(model):
    sd = {"transformer.blocks.0.attn2.to_k.lora_B.bias": torch.randn(48),
          "transformer.blocks.0.scale_shift_table.diff": torch.randn(1, 6, 48),
          "transformer.proj_out.lora_A.weight": torch.randn(2, 48),
          "transformer.proj_out.lora_B.weight": torch.randn(64, 2)}
    parsed = parse_lora(sd, target_names(model))
    assert sorted(parsed.patches) == ["blocks.0.cross_attn.k", "blocks.0.modulation", "head.head"]
    assert parsed.dialects == {"diffusers"}


def test_flattened_names_need_the_model_index():
    sd = {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(2, 48),
          "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.randn(48, 2)}
    parsed = parse_lora(sd)
    assert parsed.patches == {}
    assert all("module names" in reason for reason in parsed.unparsed.values())


def test_incomplete_and_unsupported_parts_are_reported_with_reasons(model):
    sd = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, 48),
          "diffusion_model.blocks.0.self_attn.k.lora_A.weight": torch.randn(2, 48),
          "diffusion_model.blocks.0.self_attn.k.lora_B.weight": torch.randn(48, 3),
          "diffusion_model.blocks.0.self_attn.v.dora_scale": torch.randn(1, 48),
          "diffusion_model.blocks.0.self_attn.o.bogus": torch.randn(3),
          "diffusion_model.blocks.1.self_attn.q.lora_A.weight": torch.randn(48),
          "diffusion_model.blocks.1.self_attn.q.lora_B.weight": torch.randn(48, 2),
          "diffusion_model.blocks.1.self_attn.k.lora_A.weight": torch.randn(0, 48),
          "diffusion_model.blocks.1.self_attn.k.lora_B.weight": torch.randn(48, 0)}
    parsed = parse_lora(sd, target_names(model))
    assert parsed.patches == {}
    reasons = parsed.unparsed
    assert "incomplete" in reasons["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]
    assert "do not chain" in reasons["diffusion_model.blocks.0.self_attn.k.lora_B.weight"]
    assert "DoRA" in reasons["diffusion_model.blocks.0.self_attn.v.dora_scale"]
    assert "unknown key suffix" in reasons["diffusion_model.blocks.0.self_attn.o.bogus"]
    assert "non-empty matrices, found down (48,)" in reasons["diffusion_model.blocks.1.self_attn.q.lora_B.weight"]
    assert "non-empty matrices" in reasons["diffusion_model.blocks.1.self_attn.k.lora_A.weight"]


def test_default_alpha_applies_only_without_alpha_key(model):
    sd = {"base_model.model.blocks.0.ffn.0.lora_A.weight": torch.randn(4, 48),
          "base_model.model.blocks.0.ffn.0.lora_B.weight": torch.randn(64, 4)}
    assert parse_lora(sd, default_alpha=2.0).patches["blocks.0.ffn.0"].weights[0].scale == 0.5
    sd["base_model.model.blocks.0.ffn.0.alpha"] = torch.tensor(8.0)
    assert parse_lora(sd, default_alpha=2.0).patches["blocks.0.ffn.0"].weights[0].scale == 2.0


def test_empty_lora_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        parse_lora({})


@pytest.mark.parametrize("key, words", [
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", "Stable Diffusion"),
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "text-encoder"),
    ("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", "Flux"),
    ("decoder.upsamples.0.residual.2.lora_down.weight", "VAE LoRA"),
    ("encoder.block.0.layer.0.SelfAttention.q.lora_A.weight", "umT5"),
])
def test_describe_foreign(key, words):
    assert words in describe_foreign([key])


def test_describe_foreign_is_silent_for_wan_keys():
    assert describe_foreign(["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]) is None


# ---- files ----------------------------------------------------------------------------------

def test_read_safetensors_and_peft_config(tmp_path, spec):
    sd = {k: v.contiguous() for k, v in WRITERS["peft"](spec).items()}
    save_file(sd, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16}))
    lora = read_lora_file(tmp_path / "adapter_model.safetensors")
    assert lora.default_alpha == 16.0 and lora.name == "adapter_model"
    assert sorted(lora.state_dict) == sorted(sd)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16, "use_rslora": True}))
    assert read_lora_file(tmp_path / "adapter_model.safetensors").default_alpha == 32.0  # 16·√4
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json.*not readable JSON"):
        read_lora_file(tmp_path / "adapter_model.safetensors")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_lora_file(tmp_path / "nope.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        read_lora_file(bad)
    other = tmp_path / "lora.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported extension"):
        read_lora_file(other)


@pytest.mark.parametrize("name, expert", [
    ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors", "high"),
    ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors", "low"),
    ("Wan_2_2_I2V_A14B_HIGH_lightx2v_4step_lora_v1030_rank_64_bf16.safetensors", "high"),
    ("Wan2.2-T2V-A14B-4steps-lora-rank64-Seko-V1.1/low_noise_model.safetensors", "low"),
    ("my_style_lora.safetensors", None),
    ("highway_lowlands.safetensors", None),
    ("Wan2.2-Lightning/high_noise_model/adapter.safetensors", "high"),  # the folder says it
    ("/low/loras/high_noise_v2.safetensors", "high"),                # the name wins
    ("/data/high_res/ComfyUI/models/loras/style.safetensors", None),     # roots are not read
])
def test_guess_expert(name, expert):
    assert guess_expert(name) == expert


def test_a_lora_and_a_full_diff_on_one_module_are_both_kept(model):
    sd = {"diffusion_model.head.head.lora_down.weight": torch.randn(2, 48),
          "diffusion_model.head.head.lora_up.weight": torch.randn(64, 2),
          "diffusion_model.head.head.diff": torch.randn(64, 48),
          "diffusion_model.head.head.diff_b": torch.randn(64)}
    patch = parse_lora(sd, target_names(model)).patches["head.head"]
    assert [type(w) for w in patch.weights] == [LowRank, FullDiff]
    assert patch.bias is not None and sorted(patch.keys) == sorted(sd)


def test_read_torch_pickle_weights_only(tmp_path, spec):
    sd = WRITERS["comfyui_updown"](spec)
    torch.save({"state_dict": sd}, tmp_path / "old_style.ckpt")
    lora = read_lora_file(tmp_path / "old_style.ckpt")
    assert sorted(lora.state_dict) == sorted(sd) and lora.default_alpha is None
    torch.save([1, 2, 3], tmp_path / "not_a_dict.pt")
    with pytest.raises(ValueError, match="not_a_dict.pt: the pickle holds a list; expected a state dict"):
        read_lora_file(tmp_path / "not_a_dict.pt")
