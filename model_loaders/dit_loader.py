"""Load any Wan DiT file users have into :class:`~..wan.dit.WanDiT`, unchanged on disk.

Accepted: official safetensors (single, or sharded with an ``index.json``) and ``.pth``; ComfyUI
repackaged files (``model.diffusion_model.`` prefix or bare keys), ComfyUI ``fp8_scaled``; kijai
``fp8_e4m3fn`` / bf16 / scaled (``weight_scale``) files; diffusers transformers (folder with
``config.json`` and shards, or a single file); city96's GGUF files (``gguf_files.py``: quantized
weights stay packed and are dequantized per layer at run time); VACE and FLF2V extras in all of them.

The model is built on the meta device and filled with the file's own tensors (see
``storage.load_into``), so loading costs the weights' bytes once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..wan.dit import WanDiT
from . import dit_keys, gguf_files
from .detect import WanVariant, classify, detect_dit_variant, wrong_model_error
from .errors import CheckpointError, CorruptCheckpointError, names_the_file
from .files import Checkpoint, PathLike, common_prefix, open_checkpoint, strip_prefix
from .finite_check import warn_if_non_finite
from .storage import (FP8_DTYPES, INPUT_SCALE_SUFFIX, SCALED_FP8_MARKER, StorageChoice,
                      ensure_no_meta, find_weight_scales, load_into, parse_storage_dtype)

COMFY_PREFIX = "model.diffusion_model."
EXPERT_FOLDERS = {"high": ("high_noise_model", "transformer"), "low": ("low_noise_model", "transformer_2")}


@dataclass
class LoadedDiT:
    """A ready model, what it is, and how the file was stored (for logs and UIs)."""

    model: WanDiT
    variant: WanVariant
    file_format: str
    path: str


@names_the_file
def load_dit(path: PathLike, storage_dtype: StorageChoice = None, *,
             expert: Optional[str] = None) -> LoadedDiT:
    """Load a Wan DiT from a file or folder; ``storage_dtype`` optionally converts the weights.

    ``expert`` ("high"/"low") picks a Wan 2.2 A14B expert from an official or diffusers folder
    holding both, and overrides the expert read from the file name.
    """
    storage = parse_storage_dtype(storage_dtype)  # a bad choice fails before any file work
    path = resolve_dit_path(path, expert)
    ckpt, file_format = open_dit_checkpoint(path)
    variant = detect_variant(ckpt, path, expert)
    with torch.device("meta"):
        model = WanDiT(variant.config)
    _fill(model, ckpt, storage, variant.name)
    ensure_no_meta(model, str(path))
    warn_if_non_finite(model, str(path))
    # The nano models' 80 video tokens would spend half their time on the 512 padded text rows;
    # the collapsed padding gives the same result (wan/text_padding.py). Large models gain nothing.
    model.collapse_text_padding = variant.size == "nano"
    return LoadedDiT(model.eval(), variant, file_format, str(path))


@names_the_file
def reload_dit(path: PathLike, model: WanDiT, storage_dtype: StorageChoice = None, *,
               expert: Optional[str] = None) -> None:
    """Fill a parked ``model`` (``parking.park``) from its file again, exactly as :func:`load_dit`
    did (same storage dtype): the file may not have changed in between."""
    path = resolve_dit_path(path, expert)
    ckpt, _ = open_dit_checkpoint(path)
    _fill(model, ckpt, parse_storage_dtype(storage_dtype), detect_variant(ckpt, path, expert).name)
    ensure_no_meta(model, str(path))


def _fill(model: WanDiT, ckpt: Checkpoint, storage: StorageChoice, expected: str) -> None:
    """``storage.load_into``; a GGUF file's quantized layers are planned first (kept packed)."""
    if gguf_files.is_gguf(ckpt):
        ckpt = gguf_files.prepare_model(model, ckpt, expected)
    load_into(model, ckpt, storage, expected=expected)


@names_the_file
def peek_dit_variant(path: PathLike, *, expert: Optional[str] = None) -> WanVariant:
    """The variant of a DiT file from its header (names and shapes) alone, without reading the
    weights: lets a graph be checked against its models before any long load starts."""
    path = resolve_dit_path(path, expert)
    ckpt, _ = open_dit_checkpoint(path)
    return detect_variant(ckpt, path, expert)


def resolve_dit_path(path: PathLike, expert: Optional[str] = None) -> Path:
    """Step into the expert's subfolder of an official A14B folder or a diffusers pipeline."""
    path = Path(path)
    if not path.is_dir():
        return path
    present = [name for names in EXPERT_FOLDERS.values() for name in names if (path / name).is_dir()]
    if not present:
        return path
    if expert is None:
        if present == ["transformer"]:
            return path / "transformer"
        raise CheckpointError(f"{path}: holds the experts {present}; choose one with "
                              "expert='high' or expert='low'.")
    if expert not in EXPERT_FOLDERS:
        raise ValueError(f"expert={expert!r}; expected 'high' or 'low'")
    for name in EXPERT_FOLDERS[expert]:
        if (path / name).is_dir():
            return path / name
    raise CheckpointError(f"{path}: no {expert}-noise expert folder (found {present}).")


def open_dit_checkpoint(path: PathLike) -> tuple[Checkpoint, str]:
    """Open a DiT file with official key names, whatever its layout; also describe the format."""
    ckpt = open_checkpoint(path)
    ckpt, prefix = _strip_dit_prefix(ckpt)
    if gguf_files.is_gguf(ckpt):
        gguf_files.check_patch_embedding(ckpt)
    shapes = ckpt.shapes()
    kind = classify(shapes)
    if kind.kind == "wan_dit_diffusers":
        ckpt = _diffusers_to_official(ckpt)
    elif kind.kind != "wan_dit":
        raise wrong_model_error(ckpt.name, shapes, "a Wan diffusion model (DiT)")
    return ckpt, describe_format(ckpt, prefix, kind.kind == "wan_dit_diffusers")


def detect_variant(ckpt: Checkpoint, path: PathLike, expert: Optional[str] = None) -> WanVariant:
    """Variant of an opened DiT checkpoint (scale keys ignored). The weights' shapes decide; of a
    config.json only the head count (shapes cannot tell it) and the VACE layers are read."""
    scales = find_weight_scales(ckpt)
    ignore = set(scales.extra_keys) | set(scales.scales.values())
    shapes = {k: s for k, s in ckpt.shapes().items() if k not in ignore}
    config = ckpt.config or {}
    num_heads = config.get("num_heads") or config.get("num_attention_heads")
    vace_layers = config.get("vace_layers")
    dim = shapes.get("patch_embedding.weight", (0,))[0]
    if num_heads is not None and not (_is_count(num_heads, minimum=1) and dim % num_heads == 0):
        raise CorruptCheckpointError(f"{path}: config.json gives {_heads_key(config)} = {num_heads!r:.80}; "
                                     f"expected a positive integer that divides the model width {dim}.")
    if vace_layers is not None and not (isinstance(vace_layers, list) and all(_is_count(i) for i in vace_layers)):
        raise CorruptCheckpointError(f"{path}: config.json gives vace_layers = {vace_layers!r:.80}; "
                                     "expected a list of block indices.")
    return detect_dit_variant(shapes, path, num_heads=num_heads,
                              vace_layers=tuple(vace_layers) if vace_layers else None,
                              expert=expert)


def _is_count(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _heads_key(config: dict) -> str:
    return "num_heads" if config.get("num_heads") else "num_attention_heads"


def describe_format(ckpt: Checkpoint, prefix: str, diffusers: bool) -> str:
    """A short human description such as "ComfyUI, scaled fp8 (float8_e4m3fn)"."""
    if gguf_files.is_gguf(ckpt):
        return gguf_files.describe_gguf(ckpt)
    scales = find_weight_scales(ckpt)
    dtypes = {ckpt.info(k).dtype for k in ckpt if k.endswith(".weight")}
    fp8 = sorted(str(d).replace("torch.", "") for d in dtypes & set(FP8_DTYPES))
    layout = "diffusers" if diffusers else ("ComfyUI" if prefix == COMFY_PREFIX else "official keys")
    if scales.is_scaled:
        storage = f"scaled fp8 ({', '.join(fp8) or 'fp8'})"
    elif fp8:
        storage = ", ".join(fp8)
    else:
        storage = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
    return f"{layout}, {storage}"


def _strip_dit_prefix(ckpt: Checkpoint) -> tuple[Checkpoint, str]:
    """Remove ComfyUI/other wrappers; in a full checkpoint keep only the diffusion model."""
    keys = list(ckpt)
    if any(k.startswith(COMFY_PREFIX) for k in keys):
        # A full ComfyUI checkpoint may also hold "vae." / "text_encoders." keys: drop them,
        # but keep the top-level scaled-fp8 marker.
        def keep(key: str) -> Optional[str]:
            if key.startswith(COMFY_PREFIX):
                return key[len(COMFY_PREFIX):]
            return key if key == SCALED_FP8_MARKER else None

        return ckpt.map_keys(keep), COMFY_PREFIX
    prefix = common_prefix(keys)
    return strip_prefix(ckpt, prefix), prefix


def _diffusers_to_official(ckpt: Checkpoint) -> Checkpoint:
    """Rename diffusers keys with the shared key table, moving names only (no tensor is read)."""
    marker = {SCALED_FP8_MARKER} & set(ckpt)
    weights = ckpt.map_keys(lambda k: None if k in marker or k.endswith(INPUT_SCALE_SUFFIX) else k)
    return weights.converted(dit_keys.diffusers_to_official).joined(
        ckpt.renamed({k: k for k in marker}))
