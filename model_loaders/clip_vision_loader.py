"""Load the CLIP ViT-H/14 vision tower used by Wan 2.1 I2V / FLF2V.

Accepted: the official open-clip ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``
(``visual.*``, text tower ignored), kijai's fp16 safetensors of it, and HF/ComfyUI
``clip_vision_h.safetensors`` (``vision_model.*``). HF files fuse q/k/v while converting, so those
tensors are computed once in memory (about 0.6 GB for ViT-H in fp16); the others are renamed only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..wan.clip_vision import CLIPVisionConfig, CLIPVisionTower
from . import clip_keys
from .detect import classify, wrong_model_error
from .errors import WrongModelError, names_the_file
from .files import Checkpoint, PathLike, open_checkpoint
from .finite_check import warn_if_non_finite
from .storage import StorageChoice, ensure_no_meta, load_into, parse_storage_dtype

HEAD_WIDTH = 80  # open-clip ViT-H/14: 1280 wide, 16 heads


@dataclass
class LoadedCLIPVision:
    model: CLIPVisionTower
    file_format: str
    path: str


@names_the_file
def load_clip_vision(path: PathLike, storage_dtype: StorageChoice = None) -> LoadedCLIPVision:
    storage = parse_storage_dtype(storage_dtype)  # a bad choice fails before any file work
    ckpt, layout = open_clip_checkpoint(path)
    config = config_from_shapes(ckpt)
    with torch.device("meta"):
        model = CLIPVisionTower(config)
    load_into(model, ckpt, storage, expected=f"a CLIP vision tower ({config.num_layers} layers)")
    ensure_no_meta(model, str(path))
    warn_if_non_finite(model, str(path))
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    return LoadedCLIPVision(model.eval(), f"{layout}, {', '.join(dtypes)}", str(path))


def open_clip_checkpoint(path: PathLike) -> tuple[Checkpoint, str]:
    """The visual tower with our (official open-clip) key names, and the layout it came in."""
    ckpt = open_checkpoint(path)
    kind = classify(ckpt.shapes())
    if kind.kind != "clip_vision":
        raise wrong_model_error(ckpt.name, ckpt.shapes(), "a CLIP vision model")
    if any(k.startswith("visual.") for k in ckpt):
        return ckpt.converted(clip_keys.official_visual), "open-clip keys"
    return ckpt.converted(clip_keys.hf_to_official), "HF/ComfyUI keys"


def config_from_shapes(ckpt: Checkpoint) -> CLIPVisionConfig:
    shapes = ckpt.shapes()
    dim, _, patch, _ = shapes["patch_embedding.weight"]
    tokens = shapes["pos_embedding"][1]
    side = round((tokens - 1) ** 0.5)
    if side * side != tokens - 1:
        raise WrongModelError(f"{ckpt.name}: {tokens} position embeddings is not 1 + a square "
                              "number of patches; expected a ViT vision tower.")
    if dim % HEAD_WIDTH:
        raise WrongModelError(f"{ckpt.name}: width {dim} is not a multiple of ViT-H's head width "
                              f"{HEAD_WIDTH}; expected open-clip ViT-H/14.")
    layers = len({k.split(".")[1] for k in shapes if k.startswith("transformer.")})
    return CLIPVisionConfig(image_size=side * patch, patch_size=patch, dim=dim, num_layers=layers,
                            num_heads=dim // HEAD_WIDTH,
                            mlp_ratio=shapes["transformer.0.mlp.0.weight"][0] // dim,
                            embed_dim=shapes["head"][1])
