"""Load a Wan 2.1 or 2.2 VAE from official ``.pth``, ComfyUI safetensors or diffusers files.

The version (2.1 z16 / 2.2 z48) and the widths are read from the weights; diffusers key names go
through ``vae_keys.diffusers_to_official``. The model is built on the meta device and takes the
file's tensors as they are (see ``storage.load_into``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

from ..wan.vae2_1 import WanVAE21
from ..wan.vae2_2 import WanVAE22, WanVAE22Config
from . import vae_keys
from .detect import classify, wrong_model_error
from .errors import names_the_file
from .files import Checkpoint, PathLike, open_checkpoint, prefix_holding, strip_prefix
from .finite_check import warn_if_non_finite
from .storage import (StorageChoice, ensure_no_meta, find_weight_scales, load_into,
                      parse_storage_dtype)

VAE_PREFIXES = ("vae.", "first_stage_model.", "model.", "module.")
VAE_MARKERS = ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma")

WanVAE = Union[WanVAE21, WanVAE22]


@dataclass
class LoadedVAE:
    model: WanVAE
    version: str        # "2.1" or "2.2"
    file_format: str
    path: str


@names_the_file
def load_vae(path: PathLike, storage_dtype: StorageChoice = None) -> LoadedVAE:
    """Load a Wan VAE file or diffusers ``vae/`` folder."""
    storage = parse_storage_dtype(storage_dtype)  # a bad choice fails before any file work
    ckpt, layout = open_vae_checkpoint(path)
    scales = find_weight_scales(ckpt)
    shapes = {k: v for k, v in ckpt.meta_tensors().items()
              if k not in scales.extra_keys and k not in scales.scales.values()}
    config = vae_keys.config_from_official(shapes)
    version = "2.2" if isinstance(config, WanVAE22Config) else "2.1"
    with torch.device("meta"):
        model = WanVAE22(config) if isinstance(config, WanVAE22Config) else WanVAE21(config)
    load_into(model, ckpt, storage, expected=f"a Wan {version} VAE ({config})")
    ensure_no_meta(model, str(path))
    warn_if_non_finite(model, str(path))
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    return LoadedVAE(model.eval(), version, f"{layout}, {', '.join(dtypes)}", str(path))


def open_vae_checkpoint(path: PathLike) -> tuple[Checkpoint, str]:
    """A VAE checkpoint with official key names, and the layout it came in."""
    ckpt = open_checkpoint(path)
    prefix = prefix_holding(ckpt, VAE_MARKERS, VAE_PREFIXES)
    if prefix is None:
        raise wrong_model_error(ckpt.name, ckpt.shapes(), "a Wan VAE")
    ckpt = strip_prefix(ckpt, prefix, keep_unprefixed=False)
    kind = classify(ckpt.shapes())
    if not kind.kind.startswith("wan_vae"):
        raise wrong_model_error(ckpt.name, ckpt.shapes(), "a Wan VAE")
    if vae_keys.detect_layout(ckpt.meta_tensors()) == "diffusers":
        return ckpt.converted(vae_keys.diffusers_to_official), "diffusers"
    return ckpt, "official keys"


