"""Load the umT5 text encoder and its tokenizer from any file users have.

Accepted: official ``models_t5_umt5-xxl-enc-bf16.pth`` (official keys), ComfyUI
``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled`` (HF keys, tokenizer embedded as the uint8
tensor ``spiece_model``), kijai ``umt5-xxl-enc-bf16.safetensors`` and HF folders
(``config.json`` + weights, ``spiece.model``).

The tokenizer comes from the file when embedded; otherwise from ``tokenizer`` (a file or folder)
or from the usual places next to the weights. When none is found, the error lists every place
that was tried.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..wan.tokenizer import UMT5Tokenizer
from ..wan.umt5 import UMT5Config, UMT5Encoder
from . import umt5_keys
from .detect import classify, wrong_model_error
from .errors import CheckpointError, CorruptCheckpointError, names_the_file
from .files import Checkpoint, PathLike, open_checkpoint, prefix_holding
from .finite_check import warn_if_non_finite
from .storage import (StorageChoice, ensure_no_meta, find_weight_scales, load_into,
                      parse_storage_dtype)

SPIECE_KEY = "spiece_model"
TEXT_PREFIXES = ("text_encoders.umt5xxl.transformer.", "text_encoders.umt5xxl.", "text_encoder.",
                 "model.", "module.")
TEXT_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "blocks.0.attn.q.weight")
FILE_EXTRAS = (SPIECE_KEY, "scaled_fp8")  # file-level keys kept next to a stripped prefix
UNUSED_PARTS = ("decoder.", "lm_head.")  # a full (encoder-decoder) umT5 checkpoint: Wan needs the encoder
TOKENIZER_FILE = "spiece.model"
# Where tokenizers live relative to the weights' folder: the folder itself, a tokenizer/ folder,
# the official ckpt_dir layout (google/umt5-xxl/), and a diffusers pipeline's sibling tokenizer/.
TOKENIZER_PLACES = (".", "tokenizer", "google/umt5-xxl", "umt5-xxl", "../tokenizer")


@dataclass
class LoadedTextEncoder:
    model: UMT5Encoder
    tokenizer: UMT5Tokenizer
    file_format: str
    path: str
    tokenizer_source: str


@names_the_file
def load_text_encoder(path: PathLike, storage_dtype: StorageChoice = None,
                      tokenizer: Optional[PathLike] = None) -> LoadedTextEncoder:
    """Load umT5 weights and the matching SentencePiece tokenizer."""
    storage = parse_storage_dtype(storage_dtype)  # a bad choice fails before any file work
    ckpt, layout = open_text_encoder_checkpoint(path)
    spiece = ckpt[SPIECE_KEY] if SPIECE_KEY in ckpt else None
    weights = ckpt.without({SPIECE_KEY})
    config = config_from_shapes(weights)
    with torch.device("meta"):
        model = UMT5Encoder(config)
    load_into(model, weights, storage, expected=f"a umT5 encoder ({config.num_layers} layers)")
    ensure_no_meta(model, str(path))
    warn_if_non_finite(model, str(path))
    tok, tok_source = find_tokenizer(Path(path), spiece, tokenizer, config.text_len)
    scaled = find_weight_scales(weights).is_scaled
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    storage = "scaled fp8" if scaled else ", ".join(dtypes)
    return LoadedTextEncoder(model.eval(), tok, f"{layout}, {storage}", str(path), tok_source)


def open_text_encoder_checkpoint(path: PathLike) -> tuple[Checkpoint, str]:
    """umT5 weights with official key names (``spiece_model`` kept), and the layout name."""
    ckpt = open_checkpoint(path)
    prefix = prefix_holding(ckpt, TEXT_MARKERS, TEXT_PREFIXES)
    if prefix is None:
        raise wrong_model_error(ckpt.name, ckpt.shapes(), "a umT5 text encoder")
    if prefix:
        ckpt = ckpt.map_keys(_inside(prefix))
    ckpt = ckpt.map_keys(lambda k: None if k.startswith(UNUSED_PARTS) else k)
    kind = classify(ckpt.shapes())
    if kind.kind != "umt5":
        raise wrong_model_error(ckpt.name, ckpt.shapes(), "a umT5 text encoder")
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in ckpt:
        return ckpt.converted(umt5_keys.hf_to_official), "HF/ComfyUI keys"
    return ckpt, "official keys"


def _inside(prefix: str):
    """Key renamer keeping the keys under ``prefix`` (stripped) and the file-level extras."""
    def rename(key: str) -> Optional[str]:
        if key.startswith(prefix):
            return key[len(prefix):]
        name = key.rpartition(".")[2]
        return name if name in FILE_EXTRAS else None
    return rename


def config_from_shapes(ckpt: Checkpoint) -> UMT5Config:
    """umT5 sizes from official-key shapes (heads from the per-layer position-bias table)."""
    shapes = ckpt.shapes()
    vocab, dim = shapes["token_embedding.weight"]
    buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    layers = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    return UMT5Config(vocab_size=vocab, dim=dim, num_heads=heads,
                      head_dim=shapes["blocks.0.attn.q.weight"][0] // heads,
                      ffn_dim=shapes["blocks.0.ffn.fc1.weight"][0], num_layers=layers,
                      num_buckets=buckets)


def _tokenizer(source, max_length: int, where: str) -> UMT5Tokenizer:
    """The tokenizer from ``source``; a damaged one is a CorruptCheckpointError naming ``where``."""
    try:
        return UMT5Tokenizer(source, max_length=max_length)
    except ValueError as exc:
        raise CorruptCheckpointError(f"{where}: the umT5 tokenizer cannot be read ({exc}); expected a "
                                     "SentencePiece model such as google/umt5-xxl's spiece.model.") from None


def find_tokenizer(weights_path: Path, embedded: Optional[torch.Tensor],
                   explicit: Optional[PathLike], max_length: int) -> tuple[UMT5Tokenizer, str]:
    """The tokenizer: embedded bytes, else ``explicit``, else a ``spiece.model`` nearby."""
    if embedded is not None and explicit is None:
        return _tokenizer(embedded, max_length, f"{weights_path} ({SPIECE_KEY})"), f"{weights_path} ({SPIECE_KEY})"
    folder = weights_path if weights_path.is_dir() else weights_path.parent
    if explicit is not None:
        candidates = [Path(explicit), Path(explicit) / TOKENIZER_FILE]
    else:
        candidates = [(folder / place / TOKENIZER_FILE).resolve() for place in TOKENIZER_PLACES]
    for candidate in candidates:
        if candidate.is_file():
            return _tokenizer(candidate, max_length, str(candidate)), str(candidate)
    looked = ", ".join(str(c) for c in candidates)
    raise CheckpointError(
        f"{weights_path}: no umT5 tokenizer found. The file has no embedded '{SPIECE_KEY}' "
        f"tensor, and no {TOKENIZER_FILE} was found at: {looked}. Put google/umt5-xxl's "
        f"{TOKENIZER_FILE} next to the weights, pass its path, or use ComfyUI's umt5_xxl files "
        "(they embed it).")
