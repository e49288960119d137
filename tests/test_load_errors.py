"""Truncated, corrupted, unsafe and foreign files each get a clear error naming the file."""
from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import checkpoint_fixtures as fx
from checkpoint_fixtures import single_thread  # noqa: F401  (fixture)
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.errors import (CheckpointError, CorruptCheckpointError,
                                          UnsafeCheckpointError, UnsupportedModelError,
                                          WrongModelError)
from wanflow.model_loaders.files import open_checkpoint
from wanflow.model_loaders.storage import parse_storage_dtype

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def t2v_model():
    return fx.reference_model("t2v")


def good_file(tmp_path, model):
    return fx.write("kijai_bf16", "t2v", tmp_path, model=model)


# --------------------------------------------------------------------------- safetensors damage


def test_truncated_safetensors(tmp_path, t2v_model):
    path = good_file(tmp_path, t2v_model)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match=r"truncated or incomplete download") as err:
        load_dit(path)
    assert path.name in str(err.value)


def test_truncated_inside_the_header(tmp_path, t2v_model):
    path = good_file(tmp_path, t2v_model)
    os.truncate(path, 100)
    with pytest.raises(CorruptCheckpointError, match="header needs .*truncated"):
        load_dit(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        load_dit(path)


def test_damaged_header_json(tmp_path, t2v_model):
    path = good_file(tmp_path, t2v_model)
    data = bytearray(path.read_bytes())
    data[8:12] = b"{{{{"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="not valid UTF-8 JSON"):
        load_dit(path)


def test_offsets_that_disagree_with_the_shape(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(32))
    with pytest.raises(CorruptCheckpointError, match="spans 32 bytes; expected 64 bytes"):
        open_checkpoint(path)


def write_header(path, header: bytes, data: int = 64):
    """A safetensors file from raw header bytes and ``data`` zero bytes of tensor data."""
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(data))
    return path


GOOD_ENTRY = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize("header, words", [
    ({"w": {**GOOD_ENTRY, "dtype": ["F32"]}}, "has dtype \\['F32'\\]"),
    ({"w": {**GOOD_ENTRY, "dtype": 7}}, "has dtype 7"),
    ({"w": {**GOOD_ENTRY, "shape": [True]}}, "has shape \\[True\\]"),
    ({"w": {**GOOD_ENTRY, "data_offsets": [0.0, 16]}}, "offsets \\[0.0, 16\\]"),
    ({"w": GOOD_ENTRY, "__metadata__": ["not", "a dict"]}, "__metadata__ is \\['not'"),
    ({"w": GOOD_ENTRY, "__metadata__": {"rank": 16}}, "a JSON object of strings"),
    ({"w" * 5000: {**GOOD_ENTRY, "dtype": "F99"}}, "has dtype 'F99'"),
])
def test_header_values_of_the_wrong_type_are_named(tmp_path, header, words):
    path = write_header(tmp_path / "odd.safetensors", json.dumps(header).encode())
    with pytest.raises(CorruptCheckpointError, match=words) as err:
        open_checkpoint(path)
    assert "odd.safetensors" in str(err.value) and len(str(err.value)) < 600


def test_deeply_nested_header_json(tmp_path):
    path = write_header(tmp_path / "deep.safetensors", b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(CorruptCheckpointError, match="deep.safetensors: the header JSON is nested too deeply"):
        open_checkpoint(path)


def test_header_with_too_many_entries_is_refused_at_once(tmp_path):
    from wanflow.model_loaders import files

    entries = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
               for i in range(files.MAX_HEADER_ENTRIES + 1)}
    path = write_header(tmp_path / "many.safetensors", json.dumps(entries).encode(), data=0)
    with pytest.raises(CorruptCheckpointError, match=f"lists {files.MAX_HEADER_ENTRIES + 1} entries; "
                                                     f"expected at most {files.MAX_HEADER_ENTRIES} tensors"):
        open_checkpoint(path)


@pytest.mark.parametrize("content, words", [
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (b"GGUF\x03\x00\x00\x00" + bytes(64), "GGUF"),
])
def test_foreign_content_named_safetensors(tmp_path, content, words):
    path = tmp_path / "wan2.1_t2v_1.3B_bf16.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=words):
        load_dit(path)


def test_pth_named_safetensors(tmp_path, t2v_model):
    path = tmp_path / "renamed.safetensors"
    torch.save(fx.official_state_dict(t2v_model), path)
    with pytest.raises(CorruptCheckpointError, match="zip archive"):
        load_dit(path)


def test_safetensors_named_pth(tmp_path):
    path = tmp_path / "model.pth"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CorruptCheckpointError, match="rename it to .safetensors"):
        open_checkpoint(path)


# --------------------------------------------------------------------------- pickles


class _Exploit:
    """Unpickling this would run code (creates a file); weights_only loading must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_needs_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Exploit(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle.*open") as err:
        open_checkpoint(path)
    assert path.name in str(err.value)
    assert not marker.exists()


def test_lora_pickle_that_needs_code_is_refused_and_not_run(tmp_path):
    from wanflow.model_loaders.lora_files import read_lora_file

    marker = tmp_path / "pwned"
    path = tmp_path / "style_lora.pth"
    torch.save({"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 2),
                "payload": _Exploit(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="style_lora.pth: refused to unpickle"):
        read_lora_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x02}q\x00(X\x01", b"\x80\x02" + bytes(range(256)) * 4,
                                     b"PK\x03\x04" + bytes(200)])
@pytest.mark.parametrize("reader", ["model", "lora"])
def test_empty_or_damaged_pickles_are_named(tmp_path, content, reader):
    from wanflow.model_loaders.lora_files import read_lora_file

    path = tmp_path / "damaged.pth"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="damaged.pth: torch.load failed") as err:
        (open_checkpoint if reader == "model" else read_lora_file)(path)
    assert "()" not in str(err.value)


def test_lora_safetensors_with_a_damaged_header_is_named(tmp_path):
    from wanflow.model_loaders.lora_files import read_lora_file

    path = write_header(tmp_path / "broken_lora.safetensors", json.dumps({"w": {**GOOD_ENTRY, "dtype": {}}}).encode())
    with pytest.raises(CorruptCheckpointError, match="broken_lora.safetensors: tensor 'w' has dtype"):
        read_lora_file(path)


def test_legacy_raw_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Exploit(str(marker))}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="io.open"):
        open_checkpoint(path)
    assert not marker.exists()


def test_truncated_pth(tmp_path, t2v_model):
    path = fx.write("official_pth", "t2v", tmp_path, model=t2v_model)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(CorruptCheckpointError, match="truncated or damaged") as err:
        load_dit(path)
    assert path.name in str(err.value)


def test_pth_without_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CorruptCheckpointError, match="expected a state dict"):
        open_checkpoint(path)


def test_pth_wrapped_state_dict_is_unwrapped(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"a.weight": torch.ones(3)}, "epoch": 3}, path)
    assert list(open_checkpoint(path)) == ["a.weight"]


# --------------------------------------------------------------------------- shards and folders


def test_missing_shard(tmp_path, t2v_model):
    folder = fx.write("official_sharded", "t2v", tmp_path, model=t2v_model)
    victim = sorted(folder.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CorruptCheckpointError, match=f"lists shard '{victim.name}', which is missing"):
        load_dit(folder)


def test_index_pointing_at_the_wrong_shard(tmp_path, t2v_model):
    folder = fx.write("official_sharded", "t2v", tmp_path, model=t2v_model)
    index_path = next(folder.glob("*.index.json"))
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][key] = shards[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="that shard does not hold it"):
        load_dit(folder)


def test_folder_with_two_candidate_files(tmp_path, t2v_model):
    fx.write("kijai_bf16", "t2v", tmp_path, model=t2v_model)
    fx.write("comfy_bf16", "t2v", tmp_path, model=t2v_model)
    with pytest.raises(CheckpointError, match="cannot tell which weights to load"):
        load_dit(tmp_path)


def test_a14b_folder_needs_an_expert(tmp_path, t2v_model):
    root = tmp_path / "Wan2.2-T2V-A14B"
    root.mkdir()
    for name in ("high_noise_model", "low_noise_model"):
        fx.write("official_sharded", "t2v", tmp_path / name, model=t2v_model).rename(root / name)
    with pytest.raises(CheckpointError, match="expert='high' or expert='low'"):
        load_dit(root)
    loaded = load_dit(root, expert="low")
    assert (loaded.variant.family, loaded.variant.expert) == ("2.2", "low")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dit("/nonexistent/wan.safetensors")


def test_gguf_is_named(tmp_path):
    path = tmp_path / "wan2.1-t2v-14b-Q4_K_M.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(CheckpointError, match="GGUF"):
        load_dit(path)


# --------------------------------------------------------------------------- foreign models


def _write(tmp_path, name, tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("name, tensors, words", [
    ("wan_2.1_vae.safetensors", {"decoder.middle.0.residual.0.gamma": torch.zeros(4, 1, 1, 1),
                                 "encoder.conv1.weight": torch.zeros(2, 3, 3, 3, 3)},
     r"Wan 2\.1 VAE.*vae_loader"),
    ("umt5_xxl_fp16.safetensors", {"shared.weight": torch.zeros(8, 4),
                                   "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4),
                                   "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
                                       torch.zeros(32, 2),
                                   "spiece_model": torch.zeros(10, dtype=torch.uint8)},
     "umT5 text encoder.*text_encoder_loader"),
    ("clip_vision_h.safetensors", {"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
                                   "vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)},
     "CLIP vision encoder.*clip_vision_loader"),
    ("lightx2v_lora.safetensors", {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 8),
                                   "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(8, 2)},
     "LoRA.*models/loras"),
    ("sd_xl_base_1.0.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
                                    "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)},
     "Stable Diffusion XL"),
])
def test_foreign_models_get_named(tmp_path, name, tensors, words):
    with pytest.raises(WrongModelError, match=words) as err:
        load_dit(_write(tmp_path, name, tensors))
    assert name in str(err.value) and "expected a Wan diffusion model" in str(err.value)


def test_dit_with_missing_tensors(tmp_path, t2v_model):
    sd = fx.official_state_dict(t2v_model)
    del sd["blocks.1.cross_attn.o.weight"]
    path = _write(tmp_path, "partial.safetensors", sd)
    with pytest.raises(WrongModelError, match=r"1 missing \(e\.g\. \['blocks\.1\.cross_attn\.o\.weight'\]\)"):
        load_dit(path)


def test_dit_with_a_wrong_shape(tmp_path, t2v_model):
    sd = fx.official_state_dict(t2v_model)
    sd["blocks.0.norm3.weight"] = torch.zeros(7)
    with pytest.raises(WrongModelError, match="'blocks.0.norm3.weight' has shape \\[7\\]"):
        load_dit(_write(tmp_path, "bad_shape.safetensors", sd))


def test_unsupported_wan_variant_file(tmp_path, t2v_model):
    sd = fx.official_state_dict(t2v_model)
    sd["control_adapter.conv.weight"] = torch.zeros(4)
    with pytest.raises(UnsupportedModelError, match="camera-control"):
        load_dit(_write(tmp_path, "wan2.1_fun_camera_1.3B_bf16.safetensors", sd))


def test_unknown_storage_dtype():
    with pytest.raises(ValueError, match="'int4' is unknown; expected 'default' or one of"):
        parse_storage_dtype("int4")


def test_bad_storage_dtype_fails_before_reading_the_file(tmp_path):
    missing = tmp_path / "not_even_there.safetensors"
    with pytest.raises(ValueError, match="storage dtype 'int4' is unknown"):
        load_dit(missing, "int4")


def test_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CorruptCheckpointError, match="model.pth"):
        open_checkpoint(path)


# --------------------------------------------------------------------------- other loaders


def test_umt5_without_any_tokenizer_says_where_it_looked(tmp_path):
    from wanflow.model_loaders.text_encoder_loader import load_text_encoder

    path = fx.write_umt5("kijai_bf16", fx.tiny_umt5(), b"", tmp_path)
    with pytest.raises(CheckpointError, match="no umT5 tokenizer found") as err:
        load_text_encoder(path)
    message = str(err.value)
    for place in ("spiece.model", "tokenizer/spiece.model", "google/umt5-xxl/spiece.model"):
        assert str(tmp_path / place) in message
    assert "spiece_model" in message


@pytest.mark.parametrize("fmt, name", [("comfy_fp16", "umt5_xxl_fp16.safetensors (spiece_model)"),
                                       ("official_pth", "google/umt5-xxl/spiece.model")])
def test_damaged_tokenizer_names_where_it_came_from(tmp_path, fmt, name):
    from wanflow.model_loaders.text_encoder_loader import load_text_encoder

    path = fx.write_umt5(fmt, fx.tiny_umt5(), b"\x0a\x05 not a sentencepiece model", tmp_path)
    with pytest.raises(CorruptCheckpointError, match="the umT5 tokenizer cannot be read") as err:
        load_text_encoder(path)
    assert name in str(err.value)


@pytest.mark.parametrize("scale", [torch.zeros(0), torch.ones(3), torch.ones(1, dtype=torch.int32)])
def test_weight_scale_of_the_wrong_size_or_type_is_named(tmp_path, t2v_model, scale):
    from safetensors.torch import load_file

    path = fx.write("comfy_fp8_scaled", "t2v", tmp_path, model=t2v_model)
    sd = load_file(str(path))
    key = next(k for k in sd if k.endswith("blocks.0.cross_attn.k.scale_weight"))
    save_file({**sd, key: scale}, str(path))
    with pytest.raises(CorruptCheckpointError, match=r"'blocks.0.cross_attn.k.scale_weight' is .*expected one "
                                                     r"float or one per output row"):
        load_dit(path)


def test_integer_weights_are_refused(tmp_path, t2v_model):
    from safetensors.torch import load_file

    path = good_file(tmp_path, t2v_model)
    sd = load_file(str(path))
    key = next(k for k in sd if k.endswith("blocks.0.ffn.0.bias"))
    save_file({**sd, key: sd[key].to(torch.int64)}, str(path))
    with pytest.raises(CorruptCheckpointError, match=r"blocks.0.ffn.0.bias' is stored as int64; expected floating"):
        load_dit(path)


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": "x"}, "num_attention_heads = 'x'; expected a positive integer that divides"),
    ({"num_attention_heads": 7}, "num_attention_heads = 7; expected a positive integer that divides the model width"),
    ({"vace_layers": 5}, "vace_layers = 5; expected a list of block indices"),
    ([1, 2], "the JSON is a list; expected a model config.json object"),
])
def test_nonsense_config_json_values_are_named(tmp_path, t2v_model, change, words):
    path = fx.write("diffusers_folder", "t2v", tmp_path, model=t2v_model)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, **change} if isinstance(change, dict) else change))
    with pytest.raises(CorruptCheckpointError, match=words):
        load_dit(path)


@pytest.mark.parametrize("alpha", [{}, "16", -4, float("nan")])
def test_peft_config_with_a_nonsense_alpha_is_named(tmp_path, alpha):
    from wanflow.model_loaders.lora_files import read_lora_file

    save_file({"base_model.model.blocks.0.ffn.0.lora_A.weight": torch.ones(2, 4)}, str(tmp_path / "adapter.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": alpha, "r": 2}))
    with pytest.raises(ValueError, match="adapter_config.json: lora_alpha is .*expected a positive number"):
        read_lora_file(tmp_path / "adapter.safetensors")


def test_vae_loader_refuses_a_dit(tmp_path, t2v_model):
    from wanflow.model_loaders.vae_loader import load_vae

    with pytest.raises(WrongModelError, match="expected a Wan VAE.*Wan diffusion model.*dit_loader"):
        load_vae(good_file(tmp_path, t2v_model))


def test_text_encoder_loader_refuses_a_clip_file(tmp_path):
    from wanflow.model_loaders.text_encoder_loader import load_text_encoder

    path = fx.write_clip("comfy", fx.tiny_clip(), tmp_path)
    with pytest.raises(WrongModelError, match="expected a umT5 text encoder.*CLIP vision"):
        load_text_encoder(path)


def test_clip_loader_refuses_a_vae(tmp_path):
    from wanflow.model_loaders.clip_vision_loader import load_clip_vision

    path = fx.write_vae("comfy", fx.tiny_vae("2.1"), tmp_path)
    with pytest.raises(WrongModelError, match="expected a CLIP vision model.*Wan 2.1 VAE.*vae_loader"):
        load_clip_vision(path)


def test_non_finite_weights_are_named_when_the_check_is_asked_for(tmp_path, t2v_model, monkeypatch, caplog):
    """Issue 15 (optional flag): off by default; with WANFLOW_CHECK_WEIGHTS=1 (``wanflow run
    --check-weights``) a warning names the file and the tensors holding NaN or Inf."""
    from wanflow.model_loaders import finite_check

    state = {k: v.clone() for k, v in t2v_model.state_dict().items()}
    state["blocks.0.ffn.0.weight"][0, 0] = float("nan")
    state["head.head.bias"][1] = float("inf")
    path = tmp_path / "diverged.safetensors"
    save_file(state, str(path))
    with caplog.at_level("WARNING", logger="wanflow"):
        load_dit(path)
        assert "NaN or Inf" not in caplog.text
        monkeypatch.setenv(finite_check.CHECK_ENV, "1")
        load_dit(path)
    assert "diverged.safetensors: 2 tensor(s) hold NaN or Inf values (blocks.0.ffn.0.weight, head.head.bias)" \
        in caplog.text
    fp8 = load_dit(path, "fp8_e4m3fn").model  # fp8 weights are widened a chunk at a time to be checked
    assert finite_check.non_finite_tensors(fp8) == ["blocks.0.ffn.0.weight", "head.head.bias"]
