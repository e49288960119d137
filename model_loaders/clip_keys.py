"""CLIP vision state-dict names: HF ``CLIPVision*`` / ComfyUI <-> official Wan (our modules).

Our ``wan.clip_vision.CLIPVisionTower`` uses the official open-clip names *without* the
``visual.`` prefix of the official ``.pth``; :func:`official_visual` strips it. HF / ComfyUI
files (``clip_vision_h.safetensors``) store ``vision_model.*`` plus ``visual_projection.weight``;
transformers 5 drops ``vision_model.`` in a bare ``CLIPVisionModel``, so both spellings are read.

    official (ours)                   HF (after ``vision_model.``)
    patch_embedding.weight            embeddings.patch_embedding.weight
    cls_embedding        [1, 1, D]    embeddings.class_embedding           [D]
    pos_embedding        [1, T, D]    embeddings.position_embedding.weight [T, D]
    pre_norm                          pre_layrnorm   (sic)
    transformer.{i}.norm1 / norm2     encoder.layers.{i}.layer_norm1 / layer_norm2
    transformer.{i}.attn.to_qkv       encoder.layers.{i}.self_attn.{q,k,v}_proj  (rows q | k | v)
    transformer.{i}.attn.proj         encoder.layers.{i}.self_attn.out_proj
    transformer.{i}.mlp.0 / mlp.2     encoder.layers.{i}.mlp.fc1 / mlp.fc2
    post_norm                         post_layernorm
    head                 [D, E]       visual_projection.weight [E, D]  (top level, transposed)

``embeddings.position_ids`` (a buffer some older HF files carry) is dropped. Unknown keys raise a
ValueError naming them. Outputs own their storage where a tensor is split or transposed, so the
result can be written with safetensors directly.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

HF_PREFIX = "vision_model."
HF_PROJECTION = "visual_projection.weight"
_DROPPED_HF_KEYS = ("embeddings.position_ids",)

# whole-tensor renames, official -> HF (without the vision_model. prefix)
TOP_TENSORS: dict[str, str] = {
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",
    "pre_norm.bias": "pre_layrnorm.bias",
    "post_norm.weight": "post_layernorm.weight",
    "post_norm.bias": "post_layernorm.bias",
}

# module renames inside block i, official -> HF; the tensor name (weight / bias) is kept
BLOCK_MODULES: dict[str, str] = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_HF_BLOCK_MODULES = {hf: official for official, hf in BLOCK_MODULES.items()}
_HF_TOP_TENSORS = {hf: official for official, hf in TOP_TENSORS.items()}
_QKV = ("q_proj", "k_proj", "v_proj")

_OFFICIAL_BLOCK = re.compile(r"transformer\.(\d+)\.(.+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def official_visual(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual tower of an official open-clip ``.pth`` with the ``visual.`` prefix removed.

    ``textual.*`` and ``log_scale`` (text tower, logit scale) are not used by Wan and are dropped.
    """
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if not visual:
        raise ValueError("no 'visual.*' keys found: not an official open-clip checkpoint")
    return visual


def hf_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF / ComfyUI CLIP vision keys -> our official names (q/k/v fused into ``to_qkv``)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        if key == HF_PROJECTION:
            out["head"] = value.t().contiguous()
            continue
        name = key[len(HF_PREFIX):] if key.startswith(HF_PREFIX) else key
        if name in _DROPPED_HF_KEYS:
            continue
        if name == "embeddings.class_embedding":
            out["cls_embedding"] = value.reshape(1, 1, -1)
        elif name == "embeddings.position_embedding.weight":
            out["pos_embedding"] = value.unsqueeze(0)
        elif name in _HF_TOP_TENSORS:
            out[_HF_TOP_TENSORS[name]] = value
        elif (match := _HF_BLOCK.fullmatch(name)) is not None:
            layer, module, tensor = match.groups()
            if module.startswith("self_attn.") and module[len("self_attn."):] in _QKV:
                qkv.setdefault((layer, tensor), {})[module[len("self_attn."):]] = value
            elif module in _HF_BLOCK_MODULES:
                out[f"transformer.{layer}.{_HF_BLOCK_MODULES[module]}.{tensor}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"CLIP vision HF -> official: {len(unknown)} unrecognised key(s), "
                         f"e.g. {unknown[:5]}")
    for (layer, tensor), parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ValueError(f"CLIP vision layer {layer}: self_attn {tensor} lacks {missing}")
        out[f"transformer.{layer}.attn.to_qkv.{tensor}"] = torch.cat([parts[p] for p in _QKV])
    return out


def official_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = HF_PREFIX) -> dict[str, torch.Tensor]:
    """Our official CLIP vision keys -> HF names (``vision_model.*`` as on disk by default).

    ``head`` becomes the top-level ``visual_projection.weight`` (as in
    ``CLIPVisionModelWithProjection`` and ComfyUI files). Pass ``prefix=""`` for the keys of a
    bare transformers-5 ``CLIPVisionModel``.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key == "head":
            out[HF_PROJECTION] = value.t().contiguous()
        elif key == "cls_embedding":
            out[prefix + "embeddings.class_embedding"] = value.reshape(-1)
        elif key == "pos_embedding":
            out[prefix + "embeddings.position_embedding.weight"] = value.squeeze(0)
        elif key in TOP_TENSORS:
            out[prefix + TOP_TENSORS[key]] = value
        elif (match := _OFFICIAL_BLOCK.fullmatch(key)) is not None:
            layer, module, tensor = match.groups()
            hf_block = f"{prefix}encoder.layers.{layer}"
            if module == "attn.to_qkv":
                # clone: separate storage per part, so the dict can be saved with safetensors
                for part, chunk in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{hf_block}.self_attn.{part}.{tensor}"] = chunk.clone()
            elif module in BLOCK_MODULES:
                out[f"{hf_block}.{BLOCK_MODULES[module]}.{tensor}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"CLIP vision official -> HF: {len(unknown)} unrecognised key(s), "
                         f"e.g. {unknown[:5]}")
    return out
