"""GGUF DiT files (city96's layout): reading, per-layer torch dequantization, LoRA on top, errors.

Files are written here with the ``gguf`` package's writer; values are quantized with its
quantizer where it has one (BF16, Q8_0, Q5_0, Q4_0) and with ``gguf_fixtures``' K-type packers
otherwise (their layout is checked against the package's reference dequantization below).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gguf_fixtures as gf
from dit_testing import randomize_
from fuzzing import FUZZ_SETTINGS, damage_bytes
from lora_fixtures import make_spec, patched_copy, write_comfyui_ab
from wanflow.model_loaders.dit_loader import load_dit, peek_dit_variant, reload_dit
from wanflow.model_loaders.errors import CheckpointError, CorruptCheckpointError, WrongModelError
from wanflow.model_loaders.files import open_checkpoint
from wanflow.model_loaders.parking import is_parked, park
from wanflow.wan import gguf_ops
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.lora import LoraStack

# Wide enough for the 256-value K blocks (in_features 256 and 512), small enough to be quick.
CFG = WanDiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, model_type="t2v")

# Stated error of a quantized model's output against the float model it was made from (relative
# L2 over the output, these random weights and inputs; measured 0.004 / 0.016 / 0.030 / 0.039 /
# 0.072 / 0.072 / 0.166 for Q8_0 … Q3_K, about half of each bound). F32 is exact; F16 and BF16 round
# every weight once.
OUTPUT_ERROR = {"F32": 1e-6, "F16": 2e-3, "BF16": 1e-2, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.06,
                "Q5_0": 0.08, "Q4_K": 0.15, "Q4_0": 0.15, "Q3_K": 0.3}
# What the test quantizers achieve on N(0, 1) rows (max error over max |x|): checks their layout.
ROUNDTRIP_ERROR = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.05, "Q5_0": 0.05, "Q4_K": 0.1, "Q4_0": 0.1, "Q3_K": 0.2}


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, CFG.in_dim, 2, 4, 4, generator=gen), torch.tensor([700.0]),
            torch.randn(1, 6, CFG.text_dim, generator=gen))


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


@pytest.fixture(scope="module")
def float_model() -> WanDiT:
    model = WanDiT(CFG).eval()
    randomize_(model, 0)
    return model


@pytest.fixture(scope="module")
def files(float_model, tmp_path_factory) -> dict[str, object]:
    """One city96-layout file per type (block Linears in that type), written once."""
    folder = tmp_path_factory.mktemp("gguf")
    sd = float_model.state_dict()
    out = {}
    for quant in gf.ALL_TYPES:
        base = quant if quant in ("F32", "F16") else "BF16"
        path = folder / f"wan2.1-t2v-tiny-{quant}.gguf"
        gf.city96_file(path, sd, quant, base=base)
        out[quant] = path
    return out


def _reference_model(path) -> WanDiT:
    """A float32 WanDiT holding the values the ``gguf`` package dequantizes from ``path``."""
    model = WanDiT(CFG).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.reshape(shapes[k]) for k, v in gf.dequantized_state_dict(path).items()})
    return model


# --------------------------------------------------------------------------- dequantization


@pytest.mark.parametrize("quant", gf.QUANTIZED)
def test_test_quantizers_write_the_reference_layout(quant):
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    back = gf.reference(gf.quantize(x, quant), quant)
    assert np.abs(back - x).max() / np.abs(x).max() < ROUNDTRIP_ERROR[quant]


@pytest.mark.parametrize("quant", gf.ALL_TYPES)
def test_every_type_reads_back_as_the_gguf_reference(quant, tmp_path):
    """Through the file: quantized values and random blocks (every bit pattern, finite scales)."""
    values = np.random.default_rng(3).standard_normal((6, 512)).astype(np.float32)
    tensors = {"values": (torch.from_numpy(values), quant)}
    if quant in gf.QUANTIZED:
        tensors["random"] = (gf.random_blocks(quant, 6, 512, seed=4), quant)
    path = gf.write_gguf(tmp_path / "types.gguf", tensors)
    reference = gf.dequantized_state_dict(path)
    ckpt = open_checkpoint(path)
    for key, expected in reference.items():
        info = ckpt.info(key)
        assert info.model_shape == (6, 512)
        if quant in gf.QUANTIZED:
            assert info.dtype == torch.uint8 and info.quant_format == quant
            ours = gguf_ops.dequantize(ckpt[key], quant, torch.float32, (6, 512))
            for dtype in (torch.bfloat16, torch.float16):
                assert torch.equal(gguf_ops.dequantize(ckpt[key], quant, dtype, (6, 512)), expected.to(dtype))
        else:
            ours = ckpt[key].float()
        assert (ours - expected).abs().max().item() <= 1e-6, key


def test_dequantization_runs_in_torch_on_the_blocks_device():
    raw = torch.from_numpy(gf.random_blocks("Q4_K", 4, 256))
    meta = gguf_ops.dequantize(raw.to("meta"), "Q4_K", torch.bfloat16, (4, 256))
    assert meta.device.type == "meta" and meta.dtype == torch.bfloat16 and meta.shape == (4, 256)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("quant", gf.ALL_TYPES)
def test_quantized_model_matches_reference_and_stays_close_to_float(quant, files, float_model):
    loaded = load_dit(files[quant])
    model = loaded.model
    inputs = _inputs()
    out = _run(model, inputs)
    # exactly what the gguf package's dequantization gives, computed in float32
    assert (out - _run(_reference_model(files[quant]), inputs)).abs().max().item() <= 1e-5
    # and within the stated error of the model it was quantized from
    ref = _run(float_model, inputs)
    assert ((out - ref).norm() / ref.norm()).item() <= OUTPUT_ERROR[quant]
    q = model.blocks[0].self_attn.q
    if quant in gf.QUANTIZED:  # the blocks stay packed: bytes in memory = bytes in the file
        assert isinstance(q, gguf_ops.QuantizedLinear) and q.weight.dtype == torch.uint8
        assert q.weight.numel() == gguf_ops.FORMATS[quant].nbytes(CFG.dim * CFG.dim)
        assert quant in loaded.file_format and loaded.file_format.startswith("GGUF, ")
    else:
        assert not gguf_ops.is_quantized(q) and q.weight.dtype == gf.gguf_torch_dtype(quant)
    assert model.blocks[0].modulation.dtype == torch.float32 and model.blocks[0].modulation.shape == (1, 6, CFG.dim)


def test_weight_function_patches_see_the_dequantized_weight(files):
    layer = load_dit(files["Q5_K"]).model.blocks[1].ffn[0]
    plain = layer.compute_weight(torch.float32)
    layer.weight_function = [lambda w: w * 2]  # what ComfyUI's model management hangs on a layer
    assert torch.equal(layer.compute_weight(torch.float32), plain * 2)
    assert layer.compute_weight(torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocks_are_dequantized_on_the_inputs_device(files):
    model = load_dit(files["Q4_K"]).model
    inputs = _inputs()
    on_cpu = _run(model, inputs)
    layer = model.blocks[0].self_attn.q
    x = torch.randn(3, CFG.dim, device="cuda")
    assert layer.compute_weight(torch.float32, x.device).device.type == "cuda"  # weight left in RAM
    assert layer(x).device.type == "cuda"
    model.to("cuda")
    assert layer.weight.device.type == "cuda" and layer.weight.dtype == torch.uint8
    on_gpu = _run(model, tuple(t.cuda() for t in inputs)).cpu()
    assert (on_gpu - on_cpu).abs().max().item() < 1e-3 * on_cpu.abs().max().item()


@pytest.mark.parametrize("mode", ["unmerged", "merged"])
def test_lora_stays_unmerged_on_top_of_quantized_layers(mode, float_model, tmp_path):
    path = tmp_path / "wan-Q4_K-f32.gguf"  # unquantized layers in F32, so merging them is exact too
    gf.city96_file(path, float_model.state_dict(), "Q4_K", base="F32")
    model = load_dit(path).model
    reference = _reference_model(path)
    spec = make_spec(reference, ["blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.cross_attn.o", "head.head"])
    raw = model.blocks[0].self_attn.q.weight.clone()
    head_before = model.head.head.weight.clone()
    stack = LoraStack()
    stack.add("lora", high=write_comfyui_ab(spec), low=None)
    applied = stack.apply(model, mode=mode)
    inputs = _inputs()
    expected = _run(patched_copy(reference, spec), inputs)
    assert (_run(model, inputs) - expected).abs().max().item() <= 1e-4
    q = model.blocks[0].self_attn.q
    assert q.adapters and torch.equal(q.weight, raw)  # the packed blocks are never touched
    assert bool(model.head.head.adapters) == (mode == "unmerged")  # a BF16 layer merges as usual
    applied.remove()
    assert not q.adapters and torch.equal(model.head.head.weight, head_before)
    assert (_run(model, inputs) - _run(reference, inputs)).abs().max().item() <= 1e-5


def test_storage_choice_applies_to_the_unquantized_tensors_only(files):
    for choice, dtype in (("bf16", torch.bfloat16), ("fp8_e4m3fn", torch.float8_e4m3fn)):
        model = load_dit(files["Q6_K"], choice).model
        assert model.blocks[0].self_attn.q.weight.dtype == torch.uint8
        assert model.text_embedding[0].weight.dtype == dtype


def test_parked_model_reads_its_blocks_back(files):
    path = files["Q3_K"]
    model = load_dit(path).model
    inputs = _inputs()
    before = _run(model, inputs)
    park(model)
    assert is_parked(model) and model.blocks[0].self_attn.q.weight.device.type == "meta"
    reload_dit(path, model)
    assert torch.equal(_run(model, inputs), before)


# --------------------------------------------------------------------------- layouts and detection


def test_comfy_prefix_file_name_expert_and_missing_architecture(float_model, tmp_path):
    path = tmp_path / "wan2.2_t2v_low_noise_14B_Q4_K_M.gguf"
    gf.city96_file(path, float_model.state_dict(), "Q4_K", prefix="model.diffusion_model.")
    variant = peek_dit_variant(path)
    assert (variant.family, variant.task, variant.expert) == ("2.2", "t2v", "low")
    loaded = load_dit(path)
    assert loaded.variant.expert == "low" and isinstance(loaded.model.blocks[1].ffn[2], gguf_ops.QuantizedLinear)
    bare = tmp_path / "wan2.1_no_arch.gguf"  # ComfyUI-GGUF's compatibility mode: names decide
    gf.write_gguf(bare, {k: (v, gf.city96_type(k, v, "Q8_0")) for k, v in float_model.state_dict().items()}, arch=None)
    assert load_dit(bare).variant.task == "t2v"


VACE_CFG = WanDiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, model_type="vace",
                        vace_layers=(0,), vace_in_dim=24)


def test_vace_file_is_detected(tmp_path):
    model = WanDiT(VACE_CFG).eval()
    randomize_(model, 1)
    path = tmp_path / "Wan2.1-VACE-tiny-Q5_K_M.gguf"
    gf.city96_file(path, model.state_dict(), "Q5_K")
    loaded = load_dit(path)
    assert loaded.variant.task == "vace" and loaded.variant.config.vace_layers == (0,)
    assert isinstance(loaded.model.vace_blocks[0].after_proj, gguf_ops.QuantizedLinear)


def test_flattened_tensor_and_modulation_without_its_leading_one(float_model, tmp_path):
    """``comfy.gguf.orig_shape`` (a weight whose rows do not fill whole blocks is flattened to rows
    of 256) and a 2-D modulation, as llama.cpp's quantizer writes it without city96's shape fix."""
    sd = float_model.state_dict()
    tensors = {k: (v, gf.city96_type(k, v, "Q8_0")) for k, v in sd.items()}
    weight = sd["blocks.0.cross_attn.k.weight"]  # stand-in: stored as [256, 256] under another shape
    tensors["blocks.0.cross_attn.k.weight"] = (weight.reshape(-1, 128), "Q8_0")
    tensors["blocks.0.modulation"] = (sd["blocks.0.modulation"].reshape(6, CFG.dim), "F32")
    path = gf.write_gguf(tmp_path / "wan-flattened.gguf", tensors,
                         orig_shapes={"blocks.0.cross_attn.k.weight": tuple(weight.shape)})
    model = load_dit(path).model
    assert model.blocks[0].cross_attn.k.weight_shape == weight.shape
    for layer in (model.blocks[0].cross_attn.k, model.blocks[0].cross_attn.v):  # flattened, and by rows
        assert torch.equal(gguf_ops.weight_rows(layer, slice(3, 9), torch.float32),
                           layer.compute_weight(torch.float32)[3:9])
    assert model.blocks[0].modulation.shape == (1, 6, CFG.dim)
    inputs = _inputs()
    expected = WanDiT(CFG).eval()
    expected.load_state_dict({k: v.reshape(sd[k].shape) for k, v in gf.dequantized_state_dict(path).items()})
    assert (_run(model, inputs) - _run(expected, inputs)).abs().max().item() <= 1e-5


def test_model_loader_node_lists_and_loads_a_gguf(files, tmp_path):
    from wanflow.nodes import comfy_adapter as ca
    from wanflow.nodes.loader_nodes import WanFlowModelLoader

    root = tmp_path / "models"
    (root / "unet").mkdir(parents=True)  # ComfyUI-GGUF's folder; diffusion_models works alike
    name = "wan2.2_t2v_high_noise_14B_Q4_K_M.gguf"
    (root / "unet" / name).write_bytes(files["Q4_K"].read_bytes())
    ca.configure_headless(root, tmp_path / "input", tmp_path / "output")
    try:
        assert name in WanFlowModelLoader.INPUT_TYPES()["required"]["model_name"][0]
        assert WanFlowModelLoader.VALIDATE_INPUTS(name) is True
        handle, text = WanFlowModelLoader().load(name, "default", "sdpa")["result"]
        assert (handle.variant.family, handle.variant.expert) == ("2.2", "high")
        assert isinstance(handle.model.blocks[0].self_attn.v, gguf_ops.QuantizedLinear)
        assert "Q4_K" in text
    finally:
        ca.configure_headless(None, None, None)
        ca._headless.models_dir = None


# --------------------------------------------------------------------------- bad files


def _assert_named(exc: BaseException, path) -> None:
    assert path.name in str(exc), f"the message does not name the file: {exc}"


@pytest.mark.parametrize("content, words", [
    (b"", "starts with b''"),
    (b"<!DOCTYPE html><html>404</html>", "HTML page"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", "expected a GGUF file"),
    (b"GGUF\x63\x00\x00\x00" + bytes(40), "GGUF version 99"),
    (b"GGUF\x00\x00\x00\x03" + bytes(40), "big-endian"),
    (b"GGUF\x03\x00\x00\x00", "only 8 bytes"),
])
def test_foreign_or_damaged_header(tmp_path, content, words):
    path = tmp_path / "wan-Q4_K.gguf"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=words) as info:
        load_dit(path)
    _assert_named(info.value, path)


@pytest.mark.parametrize("fraction", [0.002, 0.02, 0.2, 0.6, 0.999])
def test_truncated_file(files, tmp_path, fraction):
    raw = files["Q4_K"].read_bytes()
    path = tmp_path / "wan2.1-t2v-Q4_K.gguf"
    path.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(CorruptCheckpointError, match="truncated") as info:
        peek_dit_variant(path)
    _assert_named(info.value, path)
    assert f"{path.stat().st_size}" in str(info.value)


def test_other_architecture_unsupported_type_and_bad_metadata(float_model, tmp_path):
    small = {"blocks.0.ffn.0.weight": (float_model.blocks[0].ffn[0].weight, "Q8_0")}
    flux = gf.write_gguf(tmp_path / "flux1-dev-Q8_0.gguf", small, arch="flux")
    with pytest.raises(WrongModelError, match="holds a 'flux' model .*expected a Wan diffusion model"):
        load_dit(flux)
    q4_1 = gf.write_gguf(tmp_path / "wan-Q4_1.gguf",
                         {"blocks.0.ffn.0.weight": (small["blocks.0.ffn.0.weight"][0], "Q4_1")})
    with pytest.raises(CorruptCheckpointError, match=r"'blocks.0.ffn.0.weight' is stored as Q4_1; expected one of "
                                                     r"the types F32, F16, BF16, Q8_0"):
        load_dit(q4_1)
    bad_shape = gf.write_gguf(tmp_path / "wan-orig.gguf", small, orig_shapes={"blocks.0.ffn.0.weight": (3, 7)})
    with pytest.raises(CorruptCheckpointError, match=r"orig_shape.blocks.0.ffn.0.weight.* = \[3, 7\] for a tensor of "
                                                     r"131072 values"):
        load_dit(bad_shape)


@pytest.mark.parametrize("left_out", ["patch_embedding.weight", "vace_patch_embedding.weight"])
def test_missing_patch_embedding_points_to_the_5d_fix(left_out, tmp_path):
    model = WanDiT(VACE_CFG).eval()
    sd = {k: v for k, v in model.state_dict().items() if k != left_out}
    path = tmp_path / "wan2.1-vace-Q4_K_M-unfixed.gguf"
    gf.city96_file(path, sd, "Q4_K")
    with pytest.raises(CorruptCheckpointError, match=f"no {left_out} .*fix_5d_tensors.py") as info:
        load_dit(path)
    _assert_named(info.value, path)


def test_wrong_width_is_named(float_model, tmp_path):
    sd = float_model.state_dict()
    tensors = {k: (v, gf.city96_type(k, v, "Q8_0")) for k, v in sd.items()}
    tensors["blocks.1.ffn.2.weight"] = (torch.zeros(CFG.dim, 256), "Q8_0")
    path = gf.write_gguf(tmp_path / "wan-mixed.gguf", tensors)
    with pytest.raises(WrongModelError, match=r"'blocks.1.ffn.2.weight' has shape \[256, 256\] \(Q8_0\), but "
                                              r"Wan 2.1 T2V-custom \(dim 256\) expects \[256, 512\]"):
        load_dit(path)


@pytest.mark.slow
def test_damaged_gguf_files_load_or_get_a_named_error(files, tmp_path):
    original = files["Q4_K"].read_bytes()

    @FUZZ_SETTINGS
    @given(data=st.data())
    def check(data):
        path = tmp_path / "damaged.gguf"
        path.write_bytes(damage_bytes(original, data))
        try:
            load_dit(path)
        except CheckpointError as exc:
            _assert_named(exc, path)

    check()


def test_lora_training_on_a_gguf_base_matches_the_float_base(files, monkeypatch):
    """The trainer recasts frozen weights a few rows at a time: on quantized layers it unpacks
    just those rows' blocks. Loss and adapter gradients equal those on the dequantized float model."""
    from wanflow.train import lora_network as ln

    monkeypatch.setattr(ln, "CHUNK_BYTES", {"cpu": 64 * 1024})  # several row chunks per layer
    inputs = _inputs()
    grads = []
    for model in (load_dit(files["Q5_K"]).model, _reference_model(files["Q5_K"])):
        network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4), seed=1)
        with torch.no_grad():
            for p in network.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        with ln.attach_lora(model, network):
            loss = model(*inputs).square().mean()
            loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in network.parameters()]))
    (loss_q, grads_q), (loss_f, grads_f) = grads
    assert torch.allclose(loss_q, loss_f, rtol=1e-5)
    for got, want in zip(grads_q, grads_f):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
