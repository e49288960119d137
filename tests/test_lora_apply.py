"""Applying LoRA stacks to a real (tiny) WanDiT: every format, merged/unmerged, stacking, fp8, errors.

Tolerances: fp32 bases compare at 2e-5 absolute against a ground-truth copy whose weights had the
delta added directly (the only difference is summation order). Merging into fp8 re-quantises the
patched weights (checked bit-exactly on one layer); merged-vs-unmerged output on fp8 must then
differ by less than twice what storing the model in fp8 changed in the first place.
"""
import logging

import pytest
import torch
from safetensors.torch import save_file

from lora_fixtures import (WRITERS, add_to_copy, default_targets, dequantized_copy, dit_inputs,
                           make_spec, patched_copy, random_dit, run, tiny_config, to_fp8,
                           write_comfyui_ab, write_kohya, write_lightx2v_diffs)
from wanflow.model_loaders.lora_files import read_lora_file
from wanflow.wan.dit import WanDiT
from wanflow.wan.lora import LoraMismatchError, LoraStack

ATOL = 2e-5


@pytest.fixture(scope="module")
def model():
    return random_dit("t2v")


@pytest.fixture(scope="module")
def inputs(model):
    return dit_inputs(model.config)


@pytest.fixture(scope="module")
def spec(model):
    return make_spec(model, default_targets(model.config), seed=2)


@pytest.fixture(scope="module")
def spec_b(model):
    return make_spec(model, default_targets(model.config, blocks=[1]), rank=2, alpha=2.0, seed=5)


@pytest.fixture(scope="module")
def truth(model, spec, inputs):
    return run(patched_copy(model, spec), inputs)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_equal(model, saved):
    now = model.state_dict()
    assert sorted(now) == sorted(saved)
    for key, value in saved.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key


def one_lora_stack(sd, strength=1.0, name="lora"):
    stack = LoraStack()
    stack.add(name, high=sd, low=sd, strength_high=strength, strength_low=strength)
    return stack


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_format_gives_the_same_output(writer, model, spec, inputs, truth, tmp_path):
    path = tmp_path / f"{writer}.safetensors"
    save_file({k: v.contiguous() for k, v in WRITERS[writer](spec).items()}, str(path))
    lora = read_lora_file(path)
    with one_lora_stack(lora.state_dict).apply(model, "high") as applied:
        out = run(model, inputs)
    report = applied.reports[0]
    assert report.matched_keys == report.total_keys == len(lora.state_dict)
    assert len(report.matched_targets) == len(spec)
    torch.testing.assert_close(out, truth, rtol=0, atol=ATOL)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_merged_equals_unmerged_and_restores_exactly(model, spec, inputs, strength):
    before = snapshot(model)
    stack = one_lora_stack(write_kohya(spec), strength)
    with stack.apply(model, "high", mode="unmerged"):
        unmerged = run(model, inputs)
    assert_bit_equal(model, before)
    with stack.apply(model, "high", mode="merged"):
        merged = run(model, inputs)
    assert_bit_equal(model, before)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=ATOL)
    torch.testing.assert_close(unmerged, run(patched_copy(model, spec, strength), inputs), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_strength_zero_equals_no_lora(model, spec, inputs, mode):
    base = run(model, inputs)
    with one_lora_stack(write_comfyui_ab(spec), 0.0).apply(model, "high", mode=mode):
        assert torch.equal(run(model, inputs), base)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_two_stacked_loras_add_their_deltas(model, spec, spec_b, inputs, mode):
    stack = LoraStack()
    stack.add("a", high=write_comfyui_ab(spec), low=None, strength_high=0.7)
    stack.add("b", high=WRITERS["diffusers"](spec_b), low=None, strength_high=-1.3)
    truth = patched_copy(patched_copy(model, spec, 0.7), spec_b, -1.3)
    with stack.apply(model, "high", mode=mode) as applied:
        out = run(model, inputs)
    assert [r.name for r in applied.reports] == ["a", "b"]
    torch.testing.assert_close(out, run(truth, inputs), rtol=0, atol=ATOL)


def test_a_stack_is_one_adapter_per_layer_even_with_mixed_dtypes(model, spec, spec_b, inputs):
    """Low-rank factors of all LoRAs on a layer are concatenated (bf16 and fp32 files mixed)."""
    bf16_file = {k: v.bfloat16() for k, v in write_comfyui_ab(spec).items()}
    rounded = {t: type(d)(d.down.bfloat16().float(), d.up.bfloat16().float(), d.alpha) for t, d in spec.items()}
    stack = LoraStack()
    stack.add("a", high=bf16_file, low=None, strength_high=0.5)
    stack.add("b", high=write_kohya(spec_b), low=None, strength_high=2.0)
    with stack.apply(model, "high"):
        assert len(model.blocks[1].self_attn.q.adapters) == 1
        out = run(model, inputs)
        stack.set_strength("a", high=0.0)
        only_b = run(model, inputs)
    truth = patched_copy(patched_copy(model, rounded, 0.5), spec_b, 2.0)
    torch.testing.assert_close(out, run(truth, inputs), rtol=0, atol=ATOL)
    torch.testing.assert_close(only_b, run(patched_copy(model, spec_b, 2.0), inputs), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_changing_a_strength_needs_no_reload(model, spec, inputs, mode):
    stack = one_lora_stack(write_comfyui_ab(spec), 1.0, name="style")
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    with stack.apply(model, "high", mode=mode):
        stack.set_strength("style", high=0.25)
        out = run(model, inputs)
        if mode == "unmerged":  # base weights never touched
            assert {n: p.data_ptr() for n, p in model.named_parameters()} == pointers
    torch.testing.assert_close(out, run(patched_copy(model, spec, 0.25), inputs), rtol=0, atol=ATOL)


def test_each_expert_gets_its_own_file_and_strength(spec, spec_b, inputs):
    high_model, low_model = random_dit("t2v", seed=0), random_dit("t2v", seed=9)
    stack = LoraStack()
    stack.add("distill", high=write_comfyui_ab(spec), low=write_kohya(spec_b),
              strength_high=3.0, strength_low=1.0)
    stack.add("high-only", high=WRITERS["peft"](spec_b), low=None, strength_high=0.5)
    with stack.apply(high_model, "high") as high, stack.apply(low_model, "low") as low:
        assert [r.name for r in high.reports] == ["distill", "high-only"]
        assert [r.name for r in low.reports] == ["distill"]
        out_high, out_low = run(high_model, inputs), run(low_model, inputs)
        stack.set_strength("distill", low=0.0)
        assert torch.equal(run(low_model, inputs), run(random_dit("t2v", seed=9), inputs))
    truth_high = patched_copy(patched_copy(high_model, spec, 3.0), spec_b, 0.5)
    torch.testing.assert_close(out_high, run(truth_high, inputs), rtol=0, atol=1e-4)
    torch.testing.assert_close(out_low, run(patched_copy(low_model, spec_b, 1.0), inputs), rtol=0, atol=ATOL)


def test_ai_toolkit_combined_high_low_file(spec, spec_b, inputs):
    """One file, both experts: diffusion_model.transformer_1.* is high noise, transformer_2.* low."""
    combined = {k.replace("diffusion_model.", "diffusion_model.transformer_1.", 1): v
                for k, v in write_comfyui_ab(spec).items()}
    combined.update({k.replace("diffusion_model.", "diffusion_model.transformer_2.", 1): v
                     for k, v in write_comfyui_ab(spec_b).items()})
    high_model, low_model = random_dit("t2v", seed=0), random_dit("t2v", seed=9)
    stack = one_lora_stack(combined)
    with stack.apply(high_model, "high") as high, stack.apply(low_model, "low") as low:
        out_high, out_low = run(high_model, inputs), run(low_model, inputs)
    assert high.reports[0].unmatched == {} and low.reports[0].unmatched == {}
    torch.testing.assert_close(out_high, run(patched_copy(high_model, spec), inputs), rtol=0, atol=ATOL)
    torch.testing.assert_close(out_low, run(patched_copy(low_model, spec_b), inputs), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_lightx2v_full_diffs(model, spec, inputs, mode):
    diffs, deltas = write_lightx2v_diffs(model)
    sd = {**write_comfyui_ab(spec), **diffs}
    before = snapshot(model)
    truth = add_to_copy(patched_copy(model, spec, 0.5), deltas, 0.5)
    with one_lora_stack(sd, 0.5).apply(model, "high", mode=mode) as applied:
        out = run(model, inputs)
    assert applied.reports[0].matched_keys == len(sd)
    assert_bit_equal(model, before)
    torch.testing.assert_close(out, run(truth, inputs), rtol=0, atol=ATOL)


# ---- fp8 bases ------------------------------------------------------------------------------

@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_fp8_base(spec, spec_b, inputs, scaled):
    model = random_dit("t2v")
    full_precision = run(model, inputs)
    to_fp8(model, scaled)
    q = model.blocks[0].self_attn.q
    assert q.weight.dtype == torch.float8_e4m3fn and hasattr(q, "scale_weight") == scaled
    dequantized = dequantized_copy(model)
    before = snapshot(model)
    base = run(model, inputs)

    with one_lora_stack(write_comfyui_ab(spec), 0.0).apply(model, "high"):
        assert torch.equal(run(model, inputs), base)

    stack = LoraStack()
    stack.add("a", high=write_comfyui_ab(spec), low=None, strength_high=0.8)
    stack.add("b", high=write_kohya(spec_b), low=None, strength_high=0.5)
    truth = run(patched_copy(patched_copy(dequantized, spec, 0.8), spec_b, 0.5), inputs)
    with stack.apply(model, "high", mode="unmerged"):
        unmerged = run(model, inputs)
        assert q.weight.dtype == torch.float8_e4m3fn
    assert_bit_equal(model, before)
    torch.testing.assert_close(unmerged, truth, rtol=0, atol=ATOL)

    # Merged: the patched weight is the fp32 sum re-quantised to fp8 by round-to-nearest; a
    # scaled layer's scale grows when the sum would leave the fp8 range, a plain one clamps.
    value = q.compute_weight(torch.float32) + 0.8 * spec["blocks.0.self_attn.q"].delta
    scale = torch.maximum(q.scale_weight, value.abs().max() / 448) if scaled else torch.tensor(1.0)
    expected_q = (value / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    with stack.apply(model, "high", mode="merged"):
        merged = run(model, inputs)
        assert torch.equal(q.weight.view(torch.uint8), expected_q.view(torch.uint8))
        if scaled:
            assert torch.equal(q.scale_weight, scale)
    assert_bit_equal(model, before)
    # That rounding moves the output about as much as storing the model in fp8 did at all.
    quantization_error = (base - full_precision).norm()
    assert (merged - unmerged).norm() < 2 * quantization_error
    assert (unmerged - base).norm() > 4 * quantization_error  # the LoRA effect stands out


def test_bf16_base(spec, inputs):
    """bf16 weights and bf16 compute: both modes land as close to the fp32 truth as bf16 itself does."""
    model = random_dit("t2v")
    full_precision, truth = run(model, inputs), run(patched_copy(model, spec), inputs)
    model.to(torch.bfloat16)
    before = snapshot(model)
    bf16_inputs = dict(inputs, x=inputs["x"].bfloat16(), context=inputs["context"].bfloat16())
    bf16_error = (run(model, bf16_inputs) - full_precision).norm()
    stack = one_lora_stack(write_kohya(spec))
    with stack.apply(model, "high", mode="unmerged"):
        unmerged = run(model, bf16_inputs)
    with stack.apply(model, "high", mode="merged"):
        merged = run(model, bf16_inputs)
        assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert_bit_equal(model, before)
    assert (unmerged - truth).norm() < 2 * bf16_error
    assert (merged - truth).norm() < 2 * bf16_error
    assert (truth - full_precision).norm() > 20 * bf16_error


# ---- reporting ------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", [("self_attn.q", "self_attn.o"), ("ffn.0",)])
def test_lora_for_a_wider_model_is_refused_with_widths(targets):
    model = random_dit("t2v")
    shapes = {"self_attn.q": (5120, 5120), "self_attn.o": (5120, 5120), "ffn.0": (13824, 5120)}
    sd = {}
    for i in range(2):
        for target in targets:
            out_f, in_f = shapes[target]
            sd[f"diffusion_model.blocks.{i}.{target}.lora_A.weight"] = torch.zeros(1, in_f)
            sd[f"diffusion_model.blocks.{i}.{target}.lora_B.weight"] = torch.zeros(out_f, 1)
    with pytest.raises(LoraMismatchError, match=r"made for a 5120-wide \(Wan 14B.*this model is 48-wide"):
        one_lora_stack(sd).apply(model, "high")
    assert all(not m.adapters for m in model.modules() if hasattr(m, "adapters"))


@pytest.mark.parametrize("key, words", [
    ("decoder.upsamples.0.residual.2.lora_down.weight", "VAE LoRA"),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", "Stable Diffusion"),
])
def test_foreign_loras_are_refused_with_what_they_are(key, words, model):
    up = key.replace("lora_down", "lora_up")
    with pytest.raises(LoraMismatchError, match=words):
        one_lora_stack({key: torch.zeros(2, 8), up: torch.zeros(8, 2)}).apply(model, "high")


def test_clip_branch_only_lora_on_a_model_without_it():
    model = random_dit("i2v-2.2")
    sd = {f"diffusion_model.blocks.0.cross_attn.k_img.lora_{ab}.weight": torch.zeros(2, 48) if ab == "A"
          else torch.zeros(48, 2) for ab in "AB"}
    with pytest.raises(LoraMismatchError, match="CLIP image branch"):
        one_lora_stack(sd).apply(model, "high")


def test_vace_lora_on_a_model_without_vace_blocks(model):
    sd = {f"pipe.vace.vace_blocks.0.self_attn.q.lora_{ab}.default.weight": torch.zeros(2, 48) if ab == "A"
          else torch.zeros(48, 2) for ab in "AB"}
    with pytest.raises(LoraMismatchError, match="not a VACE model"):
        one_lora_stack(sd).apply(model, "high")


def test_vace_lora_on_a_vace_model(inputs):
    model = random_dit("vace")
    targets = [f"vace_blocks.{i}.{t}" for i in range(2) for t in ("self_attn.q", "ffn.0")]
    targets += ["vace_blocks.0.before_proj", "vace_blocks.1.after_proj"]
    spec = make_spec(model, targets)
    sd = {f"pipe.vace.{k}": v for k, v in WRITERS["diffsynth"](spec).items()}
    gen = torch.Generator().manual_seed(4)
    vace_inputs = dict(inputs, vace_context=torch.randn(1, model.config.vace_in_dim, 2, 4, 4, generator=gen))
    with one_lora_stack(sd).apply(model, "high") as applied:
        out = run(model, vace_inputs)
    assert applied.reports[0].matched_keys == len(sd)
    assert (out - run(model, vace_inputs)).abs().max() > 1e-2  # the VACE patches do act
    torch.testing.assert_close(out, run(patched_copy(model, spec), vace_inputs), rtol=0, atol=ATOL)


def test_wan21_i2v_lora_on_wan22_warns_and_lists_unmatched(caplog):
    i2v_21, i2v_22 = random_dit("i2v"), random_dit("i2v-2.2")
    targets = default_targets(i2v_21.config, blocks=[0]) + ["blocks.0.cross_attn.k_img", "img_emb.proj.1"]
    sd = write_comfyui_ab(make_spec(i2v_21, targets))
    with caplog.at_level(logging.WARNING):
        with one_lora_stack(sd).apply(i2v_22, "high") as applied:
            pass
    report = applied.reports[0]
    assert report.total_keys == len(sd) and report.matched_keys == len(sd) - 6
    assert sorted(report.unmatched) == sorted(k for k in sd if "k_img" in k or "img_emb" in k)
    assert f"{len(sd) - 6}/{len(sd)} keys matched" in caplog.text
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight" in caplog.text
    assert "Wan 2.1 I2V LoRA" in caplog.text


def test_unsupported_parts_count_as_unmatched(model, spec, caplog):
    sd = write_comfyui_ab(spec)
    sd["diffusion_model.blocks.0.self_attn.q.dora_scale"] = torch.ones(1, 48)
    with caplog.at_level(logging.WARNING):
        with one_lora_stack(sd).apply(model, "high") as applied:
            pass
    assert applied.reports[0].unmatched == {"diffusion_model.blocks.0.self_attn.q.dora_scale":
                                            "DoRA (dora_scale) is not supported"}
    assert "DoRA" in caplog.text


def test_stack_misuse_is_refused(model, spec):
    stack = one_lora_stack(write_comfyui_ab(spec), name="x")
    with pytest.raises(ValueError, match="already in the stack"):
        stack.add("x", high={}, low=None)
    with pytest.raises(ValueError, match="high expert, the low expert or both"):
        stack.add("y", high=None, low=None)
    with pytest.raises(TypeError, match=r"LoRA 'y': low= must be a state dict .* got str"):
        stack.add("y", high=None, low="loras/style.safetensors")
    with pytest.raises(ValueError, match="expert must be"):
        stack.apply(model, "middle")
    with stack.apply(model, "high"):
        with pytest.raises(RuntimeError, match="already has a LoRA stack applied"):
            stack.apply(model, "high")
        with pytest.raises(RuntimeError, match="already has a LoRA stack applied"):
            one_lora_stack(write_kohya(spec)).apply(model, "high")
    one_lora_stack(write_kohya(spec)).apply(model, "high").remove()  # free again after remove()
    with pytest.raises(KeyError, match="no LoRA named"):
        stack.set_strength("z", high=1.0)


def test_meta_built_model_with_assigned_weights(spec, inputs):
    """Loaders build on the meta device and assign real tensors; LoRAs follow the assigned weights."""
    source = random_dit("t2v")
    with torch.device("meta"):
        model = WanDiT(tiny_config("t2v")).eval()
    model.load_state_dict(source.state_dict(), assign=True)
    with one_lora_stack(write_comfyui_ab(spec)).apply(model, "high"):
        out = run(model, inputs)
    torch.testing.assert_close(out, run(patched_copy(source, spec), inputs), rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_conv_patch_embedding_lora_is_baked(model, inputs, mode):
    """A LoRA on the Conv3d patch embedding (no run-time adapter slot) is baked in both modes."""
    gen = torch.Generator().manual_seed(7)
    weight = model.patch_embedding.weight  # [48, 16, 1, 2, 2]
    down = torch.randn(2, *weight.shape[1:], generator=gen) * 0.1
    up = torch.randn(weight.shape[0], 2, 1, 1, 1, generator=gen) * 0.1
    sd = {"diffusion_model.patch_embedding.lora_down.weight": down,
          "diffusion_model.patch_embedding.lora_up.weight": up,
          "diffusion_model.patch_embedding.alpha": torch.tensor(1.0)}
    delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * 0.5
    truth = add_to_copy(model, {"patch_embedding.weight": delta}, 0.8)
    before = snapshot(model)
    with one_lora_stack(sd, 0.8).apply(model, "high", mode=mode):
        out = run(model, inputs)
    assert_bit_equal(model, before)
    torch.testing.assert_close(out, run(truth, inputs), rtol=0, atol=ATOL)


def test_adapters_move_with_the_model_and_leave_state_dicts_alone(spec, inputs):
    """Samplers move experts with module.to(); unmerged adapters must follow, invisibly to state dicts."""
    model = random_dit("t2v")
    keys = sorted(model.state_dict())
    sd = {**WRITERS["lycoris_lokr"](spec), "diffusion_model.blocks.0.ffn.0.diff_b": torch.ones(64)}
    with one_lora_stack(sd).apply(model, "high"):
        assert sorted(model.state_dict()) == keys
        adapters = [m for m in model.modules() if type(m).__name__.endswith("Adapter")]
        assert len(adapters) == len(spec) + 1
        model.to(torch.float64)
        assert all(b.dtype == torch.float64 for a in adapters for b in a.buffers())
        model.to(torch.float32)
    assert all(not m.adapters for m in model.modules() if hasattr(m, "adapters"))
    assert not any(type(m).__name__.endswith("Adapter") for m in model.modules())
