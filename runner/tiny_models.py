"""A ComfyUI-style models folder of tiny Wan files, for the demo, template runs and tests.

Every file is written in the layout users have on disk (Comfy-Org repackaged: DiT keys with the
``model.diffusion_model.`` prefix, VAE with official keys, umT5 and CLIP vision with HF keys and
the tokenizer embedded as a ``spiece_model`` tensor), so the real loaders read them. The weights
are random (seeded): the videos are noise, but every code path of a real run is exercised in a
fraction of a second, for every variant (WanNano, in ``nano/``, has trained models for T2V, I2V
and Wan 2.1 VACE only).
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model_loaders import clip_keys, umt5_keys
from ..wan.clip_vision import CLIPVisionConfig, CLIPVisionTower
from ..wan.dit import WanDiT
from ..wan.dit_config import WanDiTConfig
from ..wan.tokenizer import UMT5Tokenizer
from ..wan.umt5 import UMT5Config, UMT5Encoder
from ..wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from ..wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

TEXT_DIM = 32
CLIP_DIM = 80  # one head of 80 channels: the loader reads heads as width / 80, like ViT-H/14
# head_dim 128 as in every real Wan DiT, so variant detection works as for real files.
_DIT = dict(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=TEXT_DIM)
DIT_CONFIGS: dict[str, WanDiTConfig] = {
    "t2v": WanDiTConfig(**_DIT, model_type="t2v"),
    "i2v": WanDiTConfig(**_DIT, in_dim=36, model_type="i2v"),
    "i2v_clip": WanDiTConfig(**_DIT, in_dim=36, model_type="i2v", has_image_input=True, clip_dim=CLIP_DIM),
    "ti2v": WanDiTConfig(**_DIT, in_dim=48, out_dim=48, model_type="ti2v"),
    "fun_inp_5b": WanDiTConfig(**_DIT, in_dim=100, out_dim=48, model_type="i2v"),  # Wan2.2-Fun-5B-InP's shape
    "vace": WanDiTConfig(**{**_DIT, "num_layers": 4}, model_type="vace", vace_layers=(0, 2), vace_in_dim=96),
}
UMT5_CONFIG = dict(dim=TEXT_DIM, num_heads=2, head_dim=16, ffn_dim=64, num_layers=2)
CLIP_CONFIG = CLIPVisionConfig(image_size=28, patch_size=14, dim=CLIP_DIM, num_layers=2, num_heads=1, embed_dim=16)
_WORDS = ("a the cat dog fox bird runs walks flies jumps through over snow beach forest city street rain sun "
          "light camera slowly pans tracks red blue golden hour night water waves picture subject motion").split()


@dataclass(frozen=True)
class TinyFiles:
    """Names (inside their model folders) of the tiny files written by :func:`write_tiny_models`."""

    t2v_high: str = "wanflow_tiny_wan2.2_t2v_high_noise.safetensors"
    t2v_low: str = "wanflow_tiny_wan2.2_t2v_low_noise.safetensors"
    i2v_high: str = "wanflow_tiny_wan2.2_i2v_high_noise.safetensors"
    i2v_low: str = "wanflow_tiny_wan2.2_i2v_low_noise.safetensors"
    i2v_clip: str = "wanflow_tiny_wan2.1_i2v.safetensors"
    ti2v: str = "wanflow_tiny_wan2.2_ti2v.safetensors"
    fun_inp_5b: str = "wanflow_tiny_wan2.2_fun_inpaint_5B.safetensors"
    vace: str = "wanflow_tiny_wan2.1_vace.safetensors"
    vace_high: str = "wanflow_tiny_wan2.2_vace_high_noise.safetensors"  # a Wan2.2-VACE-Fun-A14B-style pair
    vace_low: str = "wanflow_tiny_wan2.2_vace_low_noise.safetensors"
    vae21: str = "wanflow_tiny_wan2.1_vae.safetensors"
    vae22: str = "wanflow_tiny_wan2.2_vae.safetensors"
    umt5: str = "wanflow_tiny_umt5.safetensors"
    clip_vision: str = "wanflow_tiny_clip_vision.safetensors"
    lora_high: str = "wanflow_tiny_lora_high_noise.safetensors"
    lora_low: str = "wanflow_tiny_lora_low_noise.safetensors"


FILES = TinyFiles()


def tiny_spiece_model(seed: int = 0) -> bytes:
    """A small SentencePiece model with umT5's special ids (<pad>=0, </s>=1, <unk>=2), trained here."""
    import sentencepiece

    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) for _ in range(300)]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=96, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2)
    return model.getvalue()


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(tensors), str(path), metadata={"format": "pt"})


def _dit_file(config: WanDiTConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = WanDiT(config)
    return {"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}


def _lora_file(config: WanDiTConfig, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A ComfyUI-format LoRA on every block's self-attention q and v."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(config.num_layers):
        for name in ("q", "v"):
            key = f"diffusion_model.blocks.{block}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, config.dim, generator=gen) * 0.05
            tensors[f"{key}.lora_B.weight"] = torch.randn(config.dim, rank, generator=gen) * 0.05
    return tensors


def write_tiny_models(root: Path, seed: int = 0) -> TinyFiles:
    """Write every tiny file into ``root`` (``diffusion_models/``, ``vae/``, ``text_encoders/``,
    ``clip_vision/``, ``loras/``); existing files are rewritten. Returns the file names."""
    root = Path(root)
    dits = {FILES.t2v_high: ("t2v", 1), FILES.t2v_low: ("t2v", 2), FILES.i2v_high: ("i2v", 3),
            FILES.i2v_low: ("i2v", 4), FILES.i2v_clip: ("i2v_clip", 5), FILES.ti2v: ("ti2v", 6),
            FILES.vace: ("vace", 7), FILES.vace_high: ("vace", 8), FILES.vace_low: ("vace", 9),
            FILES.fun_inp_5b: ("fun_inp_5b", 14)}
    for name, (kind, offset) in dits.items():
        _save(root / "diffusion_models" / name, _dit_file(DIT_CONFIGS[kind], seed + offset))
    torch.manual_seed(seed + 10)
    _save(root / "vae" / FILES.vae21, WanVAE21(TINY_WAN21_VAE).state_dict())
    torch.manual_seed(seed + 11)
    _save(root / "vae" / FILES.vae22, WanVAE22(TINY_WAN22_VAE).state_dict())
    spiece = tiny_spiece_model(seed)
    vocab = UMT5Tokenizer(spiece).vocab_size
    torch.manual_seed(seed + 12)
    encoder = UMT5Encoder(UMT5Config(vocab_size=vocab, **UMT5_CONFIG))
    text = umt5_keys.official_to_hf(encoder.state_dict())
    text["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    _save(root / "text_encoders" / FILES.umt5, text)
    torch.manual_seed(seed + 13)
    _save(root / "clip_vision" / FILES.clip_vision, clip_keys.official_to_hf(CLIPVisionTower(CLIP_CONFIG).state_dict()))
    _save(root / "loras" / FILES.lora_high, _lora_file(DIT_CONFIGS["t2v"], seed + 20))
    _save(root / "loras" / FILES.lora_low, _lora_file(DIT_CONFIGS["t2v"], seed + 21))
    return FILES
