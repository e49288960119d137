"""Tiny Wan checkpoints written in every real-world layout users have on disk.

Each writer takes an official-key state dict (from a tiny :class:`WanDiT` with random weights)
and writes it the way that release does: same file/folder names, key prefixes, dtypes, scale keys
and metadata markers (see ../shared/reference/ecosystem-formats.md). Weights are rounded to
bf16 first, so every lossless format (fp32, bf16, fp16 for these magnitudes) holds exactly the
same numbers and must give bit-identical outputs; fp8 formats differ by their quantisation only.

Tiny configs use width 128 and one head, so head_dim is Wan's 128 and detection works exactly as
for real files (heads = width / 128).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from safetensors.torch import save_file

from wanflow.model_loaders import clip_keys, dit_keys, umt5_keys, vae_keys
from wanflow.wan.clip_vision import CLIPVisionConfig, CLIPVisionTower
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.umt5 import UMT5Config, UMT5Encoder
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

_TINY = dict(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=32)
TINY_CONFIGS: dict[str, WanDiTConfig] = {
    "t2v": WanDiTConfig(**_TINY, model_type="t2v"),
    "i2v": WanDiTConfig(**_TINY, in_dim=36, model_type="i2v", has_image_input=True, clip_dim=40),
    "flf2v": WanDiTConfig(**_TINY, in_dim=36, model_type="flf2v", has_image_input=True,
                          clip_dim=40, flf_pos_len=6),
    "i2v-2.2": WanDiTConfig(**_TINY, in_dim=36, model_type="i2v"),
    "ti2v": WanDiTConfig(**_TINY, in_dim=48, out_dim=48, model_type="ti2v"),
    "vace": WanDiTConfig(**{**_TINY, "num_layers": 4}, model_type="vace", vace_layers=(0, 2),
                         vace_in_dim=24),
}
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
SAFETENSORS_METADATA = {"format": "pt"}


# --------------------------------------------------------------------------- reference model


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random, well-scaled weights exactly representable in bf16 and fp16 (lossless formats)."""
    model.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        is_norm_scale = name.endswith("gamma") or ("norm" in name and p.ndim == 1)
        if is_norm_scale:
            value = 1.0 + 0.2 * noise
        elif p.ndim >= 2 and name.endswith("weight"):
            value = noise / p[0].numel() ** 0.5
        else:
            value = 0.3 * noise
        value = value.to(torch.bfloat16).float()
        value[value.abs() < 2.0 ** -14] = 0.0  # so fp16 (fewer exponent bits) holds it exactly
        p.copy_(value)
    return model


def reference_model(task: str, seed: int = 0) -> WanDiT:
    """A tiny fp32 WanDiT whose random weights are exactly representable in bf16 and fp16."""
    return randomize_(WanDiT(TINY_CONFIGS[task]), seed)


def official_state_dict(model: WanDiT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sample_inputs(config: WanDiTConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    """Forward arguments for a 2x4x4 latent, covering every conditioning input the model takes."""
    gen = torch.Generator().manual_seed(seed)
    latent = (1, config.out_dim, 2, 4, 4)
    inputs = {"x": torch.randn(latent, generator=gen), "t": torch.tensor([600.0]),
              "context": torch.randn(1, 5, config.text_dim, generator=gen)}
    if config.in_dim > config.out_dim:
        inputs["y"] = torch.randn(1, config.in_dim - config.out_dim, 2, 4, 4, generator=gen)
    if config.has_image_input:
        inputs["clip_fea"] = torch.randn(1, config.flf_pos_len or 3, config.clip_dim, generator=gen)
    if config.vace_layers:
        inputs["vace_context"] = torch.randn(1, config.vace_in_dim, 2, 4, 4, generator=gen)
    return inputs


def run(model: WanDiT, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's output on ``inputs`` through the original text-padding path: these width-128
    test models count as nano, for which the loader turns on the (equal up to rounding, not bit
    for bit) collapsed padding, and the format tests compare bits."""
    model.collapse_text_padding = False
    x, t, context = inputs["x"], inputs["t"], inputs["context"]
    rest = {k: v for k, v in inputs.items() if k not in ("x", "t", "context")}
    with torch.no_grad():
        return model(x, t, context, **rest)


# --------------------------------------------------------------------------- dtype helpers


def _is_block_linear(key: str, tensor: torch.Tensor) -> bool:
    """The tensors real fp8 releases store in fp8: the 2-D Linear weights of the blocks."""
    return tensor.ndim == 2 and key.endswith(".weight") and key.startswith(("blocks.", "vace_blocks."))


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in sd.items()}


def _scaled_fp8(sd: dict[str, torch.Tensor], scale_name: str, with_marker: bool,
                input_scales: bool) -> dict[str, torch.Tensor]:
    """ComfyUI-style scaled fp8: block Linears as fp8 + fp32 per-layer scale, the rest bf16."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _is_block_linear(key, value):
            scale = value.abs().max().float() / FP8_MAX
            out[key] = (value.float() / scale).to(FP8)
            layer = key[: -len(".weight")]
            out[f"{layer}.{scale_name}"] = scale.reshape(())
            if input_scales:
                out[f"{layer}.scale_input"] = torch.ones((), dtype=torch.float32)
        else:
            out[key] = value.to(torch.bfloat16)
    if with_marker:
        out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return out


def _plain_fp8(sd: dict[str, torch.Tensor], dtype: torch.dtype = FP8) -> dict[str, torch.Tensor]:
    """kijai fp8_e4m3fn: block Linears and the text embedding cast to fp8, norms kept fp32."""
    out = {}
    for key, value in sd.items():
        if _is_block_linear(key, value) or key == "text_embedding.0.weight":
            out[key] = value.to(dtype)
        elif "norm" in key:
            out[key] = value.float()
        else:
            out[key] = value.to(torch.bfloat16)
    return out


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {(k if k == "scaled_fp8" else prefix + k): v for k, v in sd.items()}


def _shard(sd: dict[str, torch.Tensor], folder: Path, stem: str, shards: int) -> Path:
    """Write ``stem-0000i-of-0000n.safetensors`` shards and ``stem.safetensors.index.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[i::shards]}
        save_file(part, str(folder / name), metadata=SAFETENSORS_METADATA)
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = folder / f"{stem}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def _official_config(config: WanDiTConfig) -> dict:
    """The config.json shipped with official Wan-AI DiT folders (WanModel arguments)."""
    out = {"_class_name": "WanModel", "_diffusers_version": "0.30.0",
           "model_type": config.model_type, "dim": config.dim, "ffn_dim": config.ffn_dim,
           "freq_dim": config.freq_dim, "in_dim": config.in_dim, "out_dim": config.out_dim,
           "num_heads": config.num_heads, "num_layers": config.num_layers,
           "text_dim": config.text_dim, "text_len": config.text_len, "eps": config.eps,
           "patch_size": list(config.patch_size), "qk_norm": True, "cross_attn_norm": True,
           "window_size": [-1, -1]}
    if config.vace_layers:
        out.update(vace_layers=list(config.vace_layers), vace_in_dim=config.vace_in_dim)
    return out


def _diffusers_config(config: WanDiTConfig) -> dict:
    out = {"_class_name": dit_keys.diffusers_class_name(config), "_diffusers_version": "0.35.0"}
    out.update(dit_keys.diffusers_config(config))
    out["patch_size"] = list(out["patch_size"])
    return out


# --------------------------------------------------------------------------- writers
# Each writer: (official state dict, config, output folder) -> the path a user would pick.

Writer = Callable[[dict, WanDiTConfig, Path], Path]


def write_official_single(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """Official single-file folder (e.g. Wan2.1-T2V-1.3B): config.json + one safetensors, fp32."""
    folder = folder / "Wan2.1-official"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_official_config(config)))
    save_file(_cast(sd, torch.float32), str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def write_official_sharded(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """Official 14B folders: config.json + bf16 shards + ``*.safetensors.index.json``."""
    folder = folder / "Wan2.1-official-sharded"
    _shard(_cast(sd, torch.bfloat16), folder, "diffusion_pytorch_model", shards=3)
    (folder / "config.json").write_text(json.dumps(_official_config(config)))
    return folder


def write_official_pth(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """A plain pickled state dict (torch.save), as the official .pth releases are."""
    path = folder / "wan_dit.pth"
    torch.save(_cast(sd, torch.bfloat16), path)
    return path


def write_comfy_bf16(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """Comfy-Org repackaged, ``model.diffusion_model.`` prefix, bf16."""
    path = folder / "wan2.1_tiny_bf16.safetensors"
    save_file(_prefixed(_cast(sd, torch.bfloat16), "model.diffusion_model."), str(path),
              metadata=SAFETENSORS_METADATA)
    return path


def write_comfy_fp16_bare(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """Comfy-Org repackaged without prefix (bare official keys), fp16."""
    path = folder / "wan2.1_tiny_fp16.safetensors"
    save_file(_cast(sd, torch.float16), str(path))
    return path


def write_comfy_fp8_scaled(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """ComfyUI ``*_fp8_scaled``: prefix, fp8 + ``scale_weight`` (+ ``scale_input``), marker key."""
    path = folder / "wan2.1_tiny_fp8_scaled.safetensors"
    scaled = _scaled_fp8(sd, "scale_weight", with_marker=True, input_scales=True)
    save_file(_prefixed(scaled, "model.diffusion_model."), str(path))
    return path


def write_kijai_fp8_e4m3fn(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """kijai ``Wan2_1-*_fp8_e4m3fn``: bare keys, unscaled fp8 block weights."""
    path = folder / "Wan2_1-tiny_fp8_e4m3fn.safetensors"
    save_file(_plain_fp8(sd), str(path))
    return path


def write_fp8_e5m2(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """The same layout with fp8 e5m2 weights (ComfyUI can save these with weight_dtype e5m2)."""
    path = folder / "wan2.1_tiny_fp8_e5m2.safetensors"
    save_file(_plain_fp8(sd, torch.float8_e5m2), str(path))
    return path


def write_kijai_bf16(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    path = folder / "Wan2_1-tiny_bf16.safetensors"
    save_file(_cast(sd, torch.bfloat16), str(path))
    return path


def write_kijai_fp8_scaled(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """kijai ``*_fp8_e4m3fn_scaled_KJ``: bare keys, ``weight_scale`` per layer, no marker."""
    path = folder / "Wan2_1-tiny_fp8_e4m3fn_scaled_KJ.safetensors"
    save_file(_scaled_fp8(sd, "weight_scale", with_marker=False, input_scales=False), str(path))
    return path


def write_diffusers_folder(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """diffusers ``transformer/``: config.json + diffusers-named bf16 shards + index."""
    folder = folder / "transformer"
    _shard(_cast(dit_keys.official_to_diffusers(sd), torch.bfloat16), folder,
           "diffusion_pytorch_model", shards=2)
    (folder / "config.json").write_text(json.dumps(_diffusers_config(config)))
    return folder


def write_diffusers_single(sd: dict, config: WanDiTConfig, folder: Path) -> Path:
    """A single safetensors file with diffusers key names (no config.json next to it)."""
    path = folder / "wan_tiny_diffusers.safetensors"
    save_file(_cast(dit_keys.official_to_diffusers(sd), torch.bfloat16), str(path),
              metadata=SAFETENSORS_METADATA)
    return path


LOSSLESS_FORMATS: dict[str, Writer] = {
    "official_single": write_official_single,
    "official_sharded": write_official_sharded,
    "official_pth": write_official_pth,
    "comfy_bf16": write_comfy_bf16,
    "comfy_fp16_bare": write_comfy_fp16_bare,
    "kijai_bf16": write_kijai_bf16,
    "diffusers_folder": write_diffusers_folder,
    "diffusers_single": write_diffusers_single,
}
FP8_FORMATS: dict[str, Writer] = {
    "comfy_fp8_scaled": write_comfy_fp8_scaled,
    "kijai_fp8_e4m3fn": write_kijai_fp8_e4m3fn,
    "kijai_fp8_scaled": write_kijai_fp8_scaled,
    "fp8_e5m2": write_fp8_e5m2,
}
ALL_FORMATS: dict[str, Writer] = {**LOSSLESS_FORMATS, **FP8_FORMATS}


def write(format_name: str, task: str, folder: Path, seed: int = 0,
          model: Optional[WanDiT] = None) -> Path:
    """Write the tiny ``task`` model in ``format_name`` under ``folder``; returns the path to load."""
    model = model if model is not None else reference_model(task, seed)
    folder.mkdir(parents=True, exist_ok=True)
    return ALL_FORMATS[format_name](official_state_dict(model), model.config, folder)


# --------------------------------------------------------------------------- VAE, umT5, CLIP

TINY_UMT5 = UMT5Config(vocab_size=160, dim=32, num_heads=2, head_dim=16, ffn_dim=48, num_layers=2,
                       num_buckets=8)  # max_distance stays 128: not stored in any file
TINY_CLIP = CLIPVisionConfig(image_size=28, patch_size=14, dim=160, num_layers=2, num_heads=2,
                             embed_dim=16)


def tiny_vae(version: str, seed: int = 0):
    model = WanVAE22(TINY_WAN22_VAE) if version == "2.2" else WanVAE21(TINY_WAN21_VAE)
    return randomize_(model, seed)


def tiny_umt5(seed: int = 0) -> UMT5Encoder:
    return randomize_(UMT5Encoder(TINY_UMT5), seed)


def tiny_clip(seed: int = 0) -> CLIPVisionTower:
    return randomize_(CLIPVisionTower(TINY_CLIP), seed)


def tiny_spiece(folder: Path) -> bytes:
    """A small SentencePiece model with umT5's special ids (<pad>=0, </s>=1, <unk>=2)."""
    import sentencepiece

    words = "a cat dog runs in the snow under blue sky slowly camera pans over city at night".split()
    sentences = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) for i in range(300)]
    prefix = folder / "spm"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(prefix), vocab_size=60,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model").read_bytes()


def _state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}


def write_vae(fmt: str, model, folder: Path) -> Path:
    """``official_pth`` (Wan2.x_VAE.pth), ``comfy`` (bf16 safetensors) or ``diffusers`` (vae/)."""
    folder.mkdir(parents=True, exist_ok=True)
    version = "2.2" if isinstance(model, WanVAE22) else "2.1"
    if fmt == "official_pth":
        path = folder / f"Wan{version}_VAE.pth"
        torch.save(_state(model, torch.float32), path)
    elif fmt == "comfy":
        path = folder / ("wan2.2_vae.safetensors" if version == "2.2" else "wan_2.1_vae.safetensors")
        save_file(_state(model, torch.bfloat16), str(path))
    elif fmt == "diffusers":
        path = folder / "vae"
        path.mkdir()
        config = {"_class_name": "AutoencoderKLWan", **vae_keys.diffusers_config(model.config)}
        (path / "config.json").write_text(json.dumps(config, default=list))
        save_file(vae_keys.official_to_diffusers(_state(model, torch.float32)),
                  str(path / "diffusion_pytorch_model.safetensors"), metadata=SAFETENSORS_METADATA)
    else:
        raise ValueError(fmt)
    return path


def _scaled_linears(sd: dict[str, torch.Tensor], is_linear) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if is_linear(key, value):
            scale = value.abs().max().float() / FP8_MAX
            out[key] = (value.float() / scale).to(FP8)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return out


def write_umt5(fmt: str, model: UMT5Encoder, spiece: bytes, folder: Path) -> Path:
    """umT5 as ``official_pth`` (+ google/umt5-xxl/spiece.model), ComfyUI ``comfy_fp16`` /
    ``comfy_fp8_scaled`` (HF keys + embedded ``spiece_model``), ``hf_folder`` (text_encoder/ with
    a sibling tokenizer/) or ``kijai_bf16`` (official keys, no tokenizer anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    spiece_tensor = torch.tensor(list(spiece), dtype=torch.uint8)  # ComfyUI embeds the bytes
    if fmt == "official_pth":
        path = folder / "models_t5_umt5-xxl-enc-bf16.pth"
        torch.save(_state(model, torch.bfloat16), path)
        (folder / "google" / "umt5-xxl").mkdir(parents=True)
        (folder / "google" / "umt5-xxl" / "spiece.model").write_bytes(spiece)
    elif fmt == "comfy_fp16":
        path = folder / "umt5_xxl_fp16.safetensors"
        sd = umt5_keys.official_to_hf(_state(model, torch.float16))
        save_file({**sd, "spiece_model": spiece_tensor}, str(path))
    elif fmt == "comfy_fp8_scaled":
        path = folder / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
        sd = umt5_keys.official_to_hf(_state(model, torch.bfloat16))
        sd = _scaled_linears(sd, lambda k, v: v.ndim == 2 and ".layer." in k and "relative" not in k)
        save_file({**sd, "spiece_model": spiece_tensor}, str(path))
    elif fmt == "hf_folder":
        path = folder / "text_encoder"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"architectures": ["UMT5EncoderModel"],
                                                       "d_model": model.config.dim}))
        save_file(umt5_keys.official_to_hf(_state(model, torch.float32)), str(path / "model.safetensors"),
                  metadata=SAFETENSORS_METADATA)
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "spiece.model").write_bytes(spiece)
    elif fmt == "kijai_bf16":
        path = folder / "umt5-xxl-enc-bf16.safetensors"
        save_file(_state(model, torch.bfloat16), str(path))
    else:
        raise ValueError(fmt)
    return path


def write_clip(fmt: str, model: CLIPVisionTower, folder: Path) -> Path:
    """``official_pth`` (visual.* + text tower), ``comfy`` (clip_vision_h, HF keys, fp16) or
    ``kijai_fp16`` (open-clip keys in safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    visual = {f"visual.{k}": v for k, v in _state(model, torch.float16).items()}
    if fmt == "official_pth":
        path = folder / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
        extra = {"textual.token_embedding.weight": torch.zeros(10, 8), "log_scale": torch.tensor(4.6)}
        torch.save({**{k: v.float() for k, v in visual.items()}, **extra}, path)
    elif fmt == "comfy":
        path = folder / "clip_vision_h.safetensors"
        save_file(clip_keys.official_to_hf(_state(model, torch.float16)), str(path))
    elif fmt == "kijai_fp16":
        path = folder / "open-clip-xlm-roberta-large-vit-huge-14_fp16.safetensors"
        save_file(visual, str(path))
    else:
        raise ValueError(fmt)
    return path


# --------------------------------------------------------------------------- test speed


@pytest.fixture(scope="module", autouse=False)
def single_thread():
    """Tiny models run faster on one thread (no spinning on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
