"""Every file layout loads into the same model and gives the same outputs.

DiT: lossless layouts (fp32, bf16, fp16; official/ComfyUI/kijai/diffusers keys; single, sharded,
.pth) must match the reference model bit for bit: the fixture weights are bf16-representable and
the model upcasts per call. fp8 layouts hold quantised weights; their outputs must stay within
FP8_TOLERANCE (e4m3, 3 mantissa bits) or E5M2_TOLERANCE (e5m2, 2 bits) relative L2 error.
VAE, umT5 and CLIP vision layouts are checked the same way at the end of the file.
"""
from __future__ import annotations

import os

import pytest
import torch

import checkpoint_fixtures as fx
from checkpoint_fixtures import single_thread  # noqa: F401  (fixture)
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.files import PickleFile, SafetensorsFile
from wanflow.wan import ops

TASKS = list(fx.TINY_CONFIGS)
EXTRA_KEY_TASKS = ("flf2v", "vace")  # every layout with the FLF2V/VACE extras (T2V keys included)
OTHER_TASKS = ("t2v", "i2v", "i2v-2.2", "ti2v")
LOSSLESS_CASES = ([(fmt, task) for fmt in fx.LOSSLESS_FORMATS for task in EXTRA_KEY_TASKS]
                  + [(fmt, task) for fmt in ("comfy_bf16", "diffusers_folder") for task in OTHER_TASKS])
FP8_CASES = ([(fmt, task) for fmt in fx.FP8_FORMATS for task in EXTRA_KEY_TASKS]
             + [("comfy_fp8_scaled", task) for task in OTHER_TASKS])
pytestmark = pytest.mark.usefixtures("single_thread")
FP8_TOLERANCE = 0.08  # relative L2 error of the velocity, fp8 weights vs the bf16 reference
E5M2_TOLERANCE = 0.2  # e5m2 keeps 2 mantissa bits instead of 3


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def references():
    """Per task: the reference model, its inputs and its output."""
    out = {}
    for task in TASKS:
        model = fx.reference_model(task)
        inputs = fx.sample_inputs(model.config)
        out[task] = (model, inputs, fx.run(model, inputs))
    return out


@pytest.mark.parametrize("fmt, task", LOSSLESS_CASES)
def test_lossless_formats_give_identical_outputs(fmt, task, references, tmp_path):
    model, inputs, expected = references[task]
    path = fx.write(fmt, task, tmp_path, model=model)
    loaded = load_dit(path)
    assert loaded.model.config == model.config
    assert loaded.variant.task == fx.TINY_CONFIGS[task].model_type
    torch.testing.assert_close(fx.run(loaded.model, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("fmt, task", FP8_CASES)
def test_fp8_formats_stay_fp8_and_close(fmt, task, references, tmp_path):
    model, inputs, expected = references[task]
    loaded = load_dit(fx.write(fmt, task, tmp_path, model=model))
    q = loaded.model.blocks[0].self_attn.q
    e5m2 = "e5m2" in fmt
    assert q.weight.dtype == (torch.float8_e5m2 if e5m2 else torch.float8_e4m3fn), "fp8 stays fp8"
    assert (getattr(q, "scale_weight", None) is not None) == ("scaled" in fmt)
    assert loaded.model.config == model.config
    tolerance = E5M2_TOLERANCE if e5m2 else FP8_TOLERANCE
    assert relative_error(fx.run(loaded.model, inputs), expected) < tolerance


def test_formats_are_described(tmp_path, references):
    model = references["t2v"][0]
    scaled = load_dit(fx.write("comfy_fp8_scaled", "t2v", tmp_path / "a", model=model))
    assert scaled.file_format == "ComfyUI, scaled fp8 (float8_e4m3fn)"
    diffusers = load_dit(fx.write("diffusers_folder", "t2v", tmp_path / "b", model=model))
    assert diffusers.file_format.startswith("diffusers")


def test_weights_keep_their_file_dtype(tmp_path, references):
    model = references["t2v"][0]
    loaded = load_dit(fx.write("comfy_fp16_bare", "t2v", tmp_path, model=model)).model
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}


@pytest.mark.parametrize("storage, dtype", [("fp8_e4m3fn", torch.float8_e4m3fn),
                                            ("fp8_e5m2", torch.float8_e5m2),
                                            ("fp8_e4m3fn_scaled", torch.float8_e4m3fn)])
def test_user_chosen_fp8_storage(storage, dtype, tmp_path, references):
    """bf16 file -> fp8 at load time: Linear weights become fp8, norms/modulation stay bf16."""
    model, inputs, expected = references["t2v"]
    loaded = load_dit(fx.write("comfy_bf16", "t2v", tmp_path, model=model), storage).model
    assert loaded.blocks[1].ffn[0].weight.dtype == dtype
    assert loaded.blocks[1].modulation.dtype == torch.bfloat16
    assert loaded.blocks[1].norm3.weight.dtype == torch.bfloat16
    assert (getattr(loaded.blocks[1].ffn[0], "scale_weight", None) is not None) == storage.endswith("scaled")
    tolerance = E5M2_TOLERANCE if dtype == torch.float8_e5m2 else FP8_TOLERANCE
    assert relative_error(fx.run(loaded, inputs), expected) < tolerance


@pytest.mark.parametrize("storage, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                            ("fp32", torch.float32)])
def test_scaled_file_to_wider_storage_dequantises(storage, dtype, tmp_path, references):
    model, inputs, expected = references["i2v"]
    path = fx.write("comfy_fp8_scaled", "i2v", tmp_path, model=model)
    as_fp8 = load_dit(path).model
    loaded = load_dit(path, storage).model
    k_img = loaded.blocks[0].cross_attn.k_img
    assert k_img.weight.dtype == dtype and getattr(k_img, "scale_weight", None) is None
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    for name, module in as_fp8.named_modules():  # the same numbers, only stored wider
        if isinstance(module, ops.Linear):
            wide = loaded.get_submodule(name).weight.float()
            torch.testing.assert_close(wide, module.compute_weight(torch.float32).to(dtype).float())
    assert relative_error(fx.run(loaded, inputs), expected) < FP8_TOLERANCE


def test_loaded_tensors_are_the_tensors_read_not_copies(tmp_path, references):
    """assign=True: the parameter is the buffer the reader filled (no second copy made)."""
    model = references["t2v"][0]
    path = fx.write("kijai_bf16", "t2v", tmp_path, model=model)
    loaded = load_dit(path).model
    assert all(not p.is_meta for p in loaded.parameters())
    weight = loaded.blocks[0].self_attn.q.weight
    assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_pth_is_memory_mapped_not_read(tmp_path, references):
    """New-style .pth files are mapped (pages load on use), not copied into memory."""
    model = references["t2v"][0]
    path = fx.write("official_pth", "t2v", tmp_path, model=model)
    source = PickleFile(path)
    with open("/proc/self/maps") as f:
        assert str(path) in f.read()
    assert source.read("blocks.0.ffn.0.weight").dtype == torch.bfloat16  # as stored


def test_full_comfyui_checkpoint_gives_each_loader_its_part(tmp_path, references):
    """A checkpoint holding model.diffusion_model.*, vae.* and text_encoders.* keys."""
    from safetensors.torch import save_file

    from wanflow.model_loaders.vae_loader import load_vae

    model = references["t2v"][0]
    vae = fx.tiny_vae("2.1")
    tensors = {f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    tensors.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    tensors["text_encoders.umt5xxl.transformer.shared.weight"] = torch.zeros(4, 4)
    path = tmp_path / "wan_all_in_one.safetensors"
    save_file(tensors, str(path))
    dit = load_dit(path)
    assert dit.file_format.startswith("ComfyUI") and dit.model.config == model.config
    assert load_vae(path).model.config == vae.config


def test_sharded_reader_sees_every_key(tmp_path, references):
    model = references["vace"][0]
    folder = fx.write("official_sharded", "vace", tmp_path, model=model)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) == 3
    keys = set().union(*(SafetensorsFile(s).infos for s in shards))
    assert keys == set(model.state_dict())


def test_diffusers_fixture_is_what_diffusers_reads(tmp_path, references):
    """Our diffusers-layout fixture (config.json + shards) loads strictly into diffusers itself."""
    import json

    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import load_file

    model = references["vace"][0]
    folder = fx.write("diffusers_folder", "vace", tmp_path, model=model)
    config = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    twin = cls.from_config(config)
    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(".attn2.norm_added_q." in k for k in missing)
    assert load_dit(folder).model.config == model.config


def test_every_linear_is_a_storage_dtype_layer(tmp_path, references):
    loaded = load_dit(fx.write("kijai_fp8_e4m3fn", "flf2v", tmp_path,
                               model=references["flf2v"][0])).model
    for name, module in loaded.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert isinstance(module, ops.Linear), name


# --------------------------------------------------------------------------- VAE, umT5, CLIP


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("fmt", ["official_pth", "comfy", "diffusers"])
def test_vae_formats_decode_identically(fmt, version, tmp_path):
    from wanflow.model_loaders.vae_loader import load_vae

    reference = fx.tiny_vae(version)
    z = torch.randn(1, reference.z_dim, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    loaded = load_vae(fx.write_vae(fmt, reference, tmp_path))
    assert loaded.version == version and loaded.model.config == reference.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.decode(z), reference.decode(z), rtol=0, atol=0)


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    return fx.tiny_spiece(tmp_path_factory.mktemp("spm"))


PROMPTS = ["a cat runs in the snow", "camera pans over the city at night"]


@pytest.mark.parametrize("fmt", ["official_pth", "comfy_fp16", "hf_folder", "comfy_fp8_scaled"])
def test_umt5_formats_encode_identically(fmt, spiece, tmp_path):
    from wanflow.model_loaders.text_encoder_loader import load_text_encoder
    from wanflow.wan.tokenizer import UMT5Tokenizer
    from wanflow.wan.umt5 import encode_prompts

    reference = fx.tiny_umt5()
    expected = encode_prompts(reference, UMT5Tokenizer(spiece), PROMPTS, dtype=torch.float32)
    loaded = load_text_encoder(fx.write_umt5(fmt, reference, spiece, tmp_path))
    assert loaded.model.config == reference.config
    with torch.no_grad():
        got = encode_prompts(loaded.model, loaded.tokenizer, PROMPTS, dtype=torch.float32)
    if fmt == "comfy_fp8_scaled":
        # Random tiny umT5s are too sensitive for a loose tolerance (no attention scaling), so
        # compare exactly against the file's weights dequantised by hand (w_fp8 * scale_weight).
        assert loaded.model.blocks[0].attn.q.weight.dtype == torch.float8_e4m3fn
        expected = encode_prompts(_dequantised_umt5(tmp_path), UMT5Tokenizer(spiece), PROMPTS,
                                  dtype=torch.float32)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    where = {"official_pth": "google/umt5-xxl/spiece.model", "hf_folder": "tokenizer/spiece.model"}
    assert loaded.tokenizer_source.endswith(where.get(fmt, "(spiece_model)"))


def _dequantised_umt5(folder):
    from safetensors.torch import load_file

    from wanflow.model_loaders import umt5_keys
    from wanflow.wan.umt5 import UMT5Encoder

    raw = load_file(next(folder.glob("*.safetensors")))
    sd = {}
    for key, value in raw.items():
        if key in ("spiece_model", "scaled_fp8") or key.endswith("scale_weight"):
            continue
        scale = raw.get(key[: -len("weight")] + "scale_weight")
        sd[key] = value.float() * scale if scale is not None else value.float()
    model = UMT5Encoder(fx.TINY_UMT5).eval()
    model.load_state_dict(umt5_keys.hf_to_official(sd))
    return model


def test_umt5_tokenizer_given_explicitly(spiece, tmp_path):
    from wanflow.model_loaders.text_encoder_loader import load_text_encoder

    path = fx.write_umt5("kijai_bf16", fx.tiny_umt5(), spiece, tmp_path / "weights")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spiece.model").write_bytes(spiece)
    loaded = load_text_encoder(path, tokenizer=tmp_path / "tok")
    assert loaded.tokenizer.vocab_size > 3 and loaded.file_format == "official keys, bfloat16"


@pytest.mark.parametrize("fmt", ["official_pth", "comfy", "kijai_fp16"])
def test_clip_vision_formats_give_identical_outputs(fmt, tmp_path):
    from wanflow.model_loaders.clip_vision_loader import load_clip_vision

    reference = fx.tiny_clip()
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    loaded = load_clip_vision(fx.write_clip(fmt, reference, tmp_path))
    assert loaded.model.config == reference.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(pixels), reference(pixels), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["diffusers_single", "comfy_fp8_scaled", "official_sharded"])
def test_each_tensor_is_read_exactly_once(fmt, tmp_path, references, monkeypatch):
    """Key conversion happens on names only: loading reads every stored tensor once, no more."""
    from safetensors import safe_open

    path = fx.write(fmt, "vace", tmp_path, model=references["vace"][0])
    reads: list[str] = []
    original = SafetensorsFile.read

    def counting_read(self, key, buffer=None):
        reads.append(key)
        return original(self, key, buffer)

    monkeypatch.setattr(SafetensorsFile, "read", counting_read)
    load_dit(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    stored = []
    for file in files:
        with safe_open(str(file), "pt") as f:
            stored += list(f.keys())
    unused = {k for k in stored if k.endswith(("scale_input", "scaled_fp8"))}  # never needed
    assert sorted(reads) == sorted(k for k in stored if k not in unused)


def test_full_umt5_checkpoint_uses_the_encoder_only(spiece, tmp_path):
    """google/umt5-xxl style files also hold the decoder and lm_head; Wan needs the encoder."""
    from safetensors.torch import load_file, save_file

    from wanflow.model_loaders.text_encoder_loader import load_text_encoder

    reference = fx.tiny_umt5()
    folder = fx.write_umt5("hf_folder", reference, spiece, tmp_path)
    weights = load_file(folder / "model.safetensors")
    weights["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(32, 32)
    weights["lm_head.weight"] = torch.zeros(160, 32)
    save_file(weights, str(folder / "model.safetensors"))
    assert load_text_encoder(folder).model.config == reference.config
