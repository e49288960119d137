"""umT5 state-dict names: HF / ComfyUI (``UMT5EncoderModel``) <-> official Wan (our modules).

Per block ``i`` (HF prefix ``encoder.block.{i}.``, official prefix ``blocks.{i}.``):

    official                     HF / ComfyUI
    norm1                        layer.0.layer_norm
    attn.{q,k,v,o}               layer.0.SelfAttention.{q,k,v,o}
    pos_embedding.embedding      layer.0.SelfAttention.relative_attention_bias
    norm2                        layer.1.layer_norm
    ffn.gate.0  (GELU branch)    layer.1.DenseReluDense.wi_0
    ffn.fc1     (linear branch)  layer.1.DenseReluDense.wi_1
    ffn.fc2                      layer.1.DenseReluDense.wo

and ``token_embedding`` <-> ``shared`` (HF may also store the tied copy
``encoder.embed_tokens.weight``; it is dropped when ``shared.weight`` is present),
``norm`` <-> ``encoder.final_layer_norm``.

Only the module path is renamed; the tensor name after it is kept, so scaled-fp8 extras such
as ``...q.scale_weight`` follow their layer. ComfyUI's file-level extras ``spiece_model``
(tokenizer bytes) and ``scaled_fp8`` (format marker) are passed through unchanged under the
same names: the loader pops them (``wan.tokenizer.UMT5Tokenizer`` accepts ``spiece_model``).
Any other unknown key raises a ValueError naming it. Prefixes such as ComfyUI's
``text_encoders.umt5xxl.transformer.`` must be stripped by the caller.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

PASSTHROUGH_KEYS = ("spiece_model", "scaled_fp8")

# official module path inside a block -> HF module path inside a block
BLOCK_MODULES: dict[str, str] = {
    "norm1": "layer.0.layer_norm",
    "attn.q": "layer.0.SelfAttention.q",
    "attn.k": "layer.0.SelfAttention.k",
    "attn.v": "layer.0.SelfAttention.v",
    "attn.o": "layer.0.SelfAttention.o",
    "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
    "norm2": "layer.1.layer_norm",
    "ffn.gate.0": "layer.1.DenseReluDense.wi_0",
    "ffn.fc1": "layer.1.DenseReluDense.wi_1",
    "ffn.fc2": "layer.1.DenseReluDense.wo",
}

# official top-level module -> HF top-level module
TOP_MODULES: dict[str, str] = {
    "token_embedding": "shared",
    "norm": "encoder.final_layer_norm",
}

_HF_BLOCK_MODULES = {hf: official for official, hf in BLOCK_MODULES.items()}
_HF_TOP_MODULES = {hf: official for official, hf in TOP_MODULES.items()}
_HF_TIED_EMBEDDING = "encoder.embed_tokens.weight"
_OFFICIAL_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def _rename_module(path: str, table: Mapping[str, str]) -> str | None:
    """Rename the module part of ``module.path.tensor_name``; None if the module is unknown."""
    module, _, name = path.rpartition(".")
    return f"{table[module]}.{name}" if module in table else None


def _convert(sd: Mapping[str, torch.Tensor], rename: Callable[[str], str | None],
             what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in PASSTHROUGH_KEYS:
            out[key] = value
            continue
        new = rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"umT5 {what}: {len(unknown)} unrecognised key(s), e.g. {unknown[:5]}")
    return out


def _hf_name_to_official(key: str) -> str | None:
    match = _HF_BLOCK.fullmatch(key)
    if match:
        inner = _rename_module(match.group(2), _HF_BLOCK_MODULES)
        return None if inner is None else f"blocks.{match.group(1)}.{inner}"
    return _rename_module(key, _HF_TOP_MODULES)


def _official_name_to_hf(key: str) -> str | None:
    match = _OFFICIAL_BLOCK.fullmatch(key)
    if match:
        inner = _rename_module(match.group(2), BLOCK_MODULES)
        return None if inner is None else f"encoder.block.{match.group(1)}.{inner}"
    return _rename_module(key, TOP_MODULES)


def hf_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF / ComfyUI umT5 encoder keys -> official Wan keys (tensors are not copied)."""
    sd = dict(sd)
    tied = sd.pop(_HF_TIED_EMBEDDING, None)
    if tied is not None and "shared.weight" not in sd:
        sd["shared.weight"] = tied
    return _convert(sd, _hf_name_to_official, "HF -> official")


def official_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Wan umT5 keys -> HF ``UMT5EncoderModel`` / ComfyUI keys (``shared.weight`` only)."""
    return _convert(sd, _official_name_to_hf, "official -> HF")
