"""Storage dtypes: keep each weight as the file stores it, or convert it once while loading.

Real files hold bf16, fp16, fp32, fp8 (e4m3fn / e5m2) or ComfyUI "scaled fp8": fp8 weights plus a
per-layer fp32 ``<layer>.scale_weight`` (kijai writes ``<layer>.weight_scale``) and a ``scaled_fp8``
marker key. Our ``wan/ops.py`` layers compute with whatever they hold, so by default nothing is
converted. A user may also choose a storage dtype (e.g. bf16 file -> fp8 in memory); each tensor is
then converted right after it is read, so at most one extra tensor is alive at a time.

:func:`load_into` fills a model built on the meta device from a lazy :class:`Checkpoint` with
``load_state_dict(assign=True)``: the tensors read from disk become the parameters, no copies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from ..wan import ops
from .errors import CheckpointError, WrongModelError
from .files import Checkpoint

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALED_FP8_MARKER = "scaled_fp8"
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # ComfyUI, kijai
INPUT_SCALE_SUFFIX = ".scale_input"                          # only used by fp8 matmul kernels


@dataclass(frozen=True)
class StorageDtype:
    """The dtype a loader should keep weights in; ``scaled`` adds a per-layer fp8 scale."""

    dtype: torch.dtype
    scaled: bool = False

    @property
    def is_fp8(self) -> bool:
        return self.dtype in FP8_DTYPES


STORAGE_DTYPES: dict[str, StorageDtype] = {
    "bf16": StorageDtype(torch.bfloat16),
    "fp16": StorageDtype(torch.float16),
    "fp32": StorageDtype(torch.float32),
    "fp8_e4m3fn": StorageDtype(torch.float8_e4m3fn),
    "fp8_e5m2": StorageDtype(torch.float8_e5m2),
    "fp8_e4m3fn_scaled": StorageDtype(torch.float8_e4m3fn, scaled=True),
    "fp8_e5m2_scaled": StorageDtype(torch.float8_e5m2, scaled=True),
}

StorageChoice = Union[None, str, torch.dtype, StorageDtype]


def parse_storage_dtype(value: StorageChoice) -> Optional[StorageDtype]:
    """``None``/"default" keeps the file's dtypes; otherwise one of :data:`STORAGE_DTYPES`."""
    if value is None or isinstance(value, StorageDtype):
        return value
    if isinstance(value, torch.dtype):
        for choice in STORAGE_DTYPES.values():
            if choice.dtype == value and not choice.scaled:
                return choice
        raise ValueError(f"storage dtype {value} is not supported; expected one of "
                         f"{sorted(STORAGE_DTYPES)}")
    name = str(value).lower()
    if name in ("default", "auto", "file", ""):
        return None
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {value!r} is unknown; expected 'default' or one of "
                         f"{sorted(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


# --------------------------------------------------------------------------- scaled fp8 files


@dataclass(frozen=True)
class WeightScales:
    """Where a scaled-fp8 file keeps its scales (empty for other files)."""

    scales: dict[str, str]   # layer path -> key of its weight scale
    extra_keys: frozenset    # marker and input scales: present in the file, not model tensors
    marker_dtype: Optional[torch.dtype] = None

    @property
    def is_scaled(self) -> bool:
        return bool(self.scales) or self.marker_dtype is not None


def find_weight_scales(ckpt: Checkpoint) -> WeightScales:
    """Collect ``<layer>.scale_weight`` / ``<layer>.weight_scale`` keys and the marker."""
    scales: dict[str, str] = {}
    extra: set[str] = set()
    marker_dtype = None
    for key in ckpt:
        if key == SCALED_FP8_MARKER or key.endswith("." + SCALED_FP8_MARKER):
            extra.add(key)
            marker = ckpt.info(key).dtype
            marker_dtype = marker if marker in FP8_DTYPES else torch.float8_e4m3fn
        elif key.endswith(INPUT_SCALE_SUFFIX):
            extra.add(key)
        else:
            for suffix in WEIGHT_SCALE_SUFFIXES:
                if key.endswith(suffix):
                    scales[key[: -len(suffix)]] = key
    return WeightScales(scales, frozenset(extra), marker_dtype)


# --------------------------------------------------------------------------- conversions


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype,
                 scaled: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``weight`` in fp8; with ``scaled`` also the fp32 scale so that ``q * scale ~ weight``."""
    fp8_max = torch.finfo(dtype).max
    if not scaled:
        return weight.clamp(-fp8_max, fp8_max).to(dtype), None
    wide = weight.to(torch.float32)
    amax = wide.abs().max()
    scale = (amax / fp8_max) if amax > 0 else torch.ones((), dtype=torch.float32)
    return (wide / scale).clamp(-fp8_max, fp8_max).to(dtype), scale.reshape(())


def _cast_weight(tensor: torch.Tensor, scale: Optional[torch.Tensor],
                 storage: Optional[StorageDtype]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A storage-dtype layer's weight (and scale) in the chosen storage dtype."""
    if storage is None:
        return tensor, scale
    if storage.is_fp8:
        if tensor.dtype == storage.dtype and (scale is not None or not storage.scaled):
            return tensor, scale  # already stored as asked: re-quantising only loses accuracy
        wide = ops.dequantize(tensor, torch.float32 if scale is not None else tensor.dtype, scale)
        if wide.dtype in FP8_DTYPES:
            wide = wide.to(torch.float32)
        return quantize_fp8(wide, storage.dtype, storage.scaled)
    return ops.dequantize(tensor, storage.dtype, scale), None


def _cast_other(tensor: torch.Tensor, scale: Optional[torch.Tensor], storage: Optional[StorageDtype],
                wants_float32: bool) -> torch.Tensor:
    """Any other tensor: plain modules cannot compute with fp8, some params must stay fp32."""
    if not tensor.is_floating_point():
        return tensor
    if scale is not None or tensor.dtype in FP8_DTYPES:
        tensor = ops.dequantize(tensor, torch.float32 if wants_float32 else torch.bfloat16, scale)
    if wants_float32:
        return tensor.to(torch.float32)
    if storage is not None and not storage.is_fp8:
        return tensor.to(storage.dtype)
    return tensor


# --------------------------------------------------------------------------- filling a model


def load_into(model: nn.Module, ckpt: Checkpoint, storage: StorageChoice = None,
              keep_float32: Callable[[str], bool] = lambda key: False,
              expected: str = "the model") -> None:
    """Fill ``model`` (built on the meta device) with ``ckpt``'s tensors, without copies.

    ``ckpt`` must already use the model's own key names (scale keys and the scaled-fp8 marker
    may be present). ``keep_float32(key)`` marks parameters the model needs in fp32.
    Raises :class:`WrongModelError` naming missing and unexpected keys.
    """
    storage = parse_storage_dtype(storage)
    scales = find_weight_scales(ckpt)
    targets = model.state_dict(keep_vars=True)
    provided = set(ckpt) - scales.extra_keys - set(scales.scales.values())
    _check_keys(ckpt.name, set(targets), provided, expected)

    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    layer_scales: dict[str, torch.Tensor] = {}
    for key in targets:
        owner_name, _, param = key.rpartition(".")
        owner = modules[owner_name]
        tensor = ckpt[key]
        if tuple(tensor.shape) != tuple(targets[key].shape):
            raise WrongModelError(f"{ckpt.name}: {key!r} has shape {list(tensor.shape)}, but "
                                  f"{expected} expects {list(targets[key].shape)}.")
        scale_key = scales.scales.get(owner_name) if param == "weight" else None
        scale = ckpt[scale_key].to(torch.float32) if scale_key else None
        if isinstance(owner, ops.CastWeights) and param == "weight" and not keep_float32(key):
            tensor, scale = _cast_weight(tensor, scale, storage)
            if scale is not None:
                layer_scales[owner_name] = scale
        elif isinstance(owner, ops.CastWeights) and param == "bias" and not keep_float32(key):
            if tensor.dtype in FP8_DTYPES or (storage is not None and not storage.is_fp8):
                tensor = _cast_other(tensor, None, storage, wants_float32=False)
        else:
            tensor = _cast_other(tensor, scale, storage, keep_float32(key))
        state[key] = tensor

    model.requires_grad_(False)
    model.load_state_dict(state, strict=True, assign=True)
    for name, scale in layer_scales.items():
        modules[name].set_scale_weight(scale)  # type: ignore[union-attr]
    for name, module in modules.items():
        if isinstance(module, ops.CastWeights) and name not in layer_scales:
            module.set_scale_weight(None)


def _check_keys(name: str, wanted: set[str], provided: set[str], expected: str) -> None:
    missing = sorted(wanted - provided)
    unexpected = sorted(provided - wanted)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    raise WrongModelError(f"{name}: the weights do not match {expected}: " + "; ".join(parts) + ".")


def leftover_meta_tensors(model: nn.Module) -> list[str]:
    """Names of parameters/buffers still on the meta device (a loader forgot to fill them)."""
    names = [n for n, p in model.named_parameters() if p.is_meta]
    names += [n for n, b in model.named_buffers() if b.is_meta]
    return names


def ensure_no_meta(model: nn.Module, name: str) -> None:
    left = leftover_meta_tensors(model)
    if left:
        raise CheckpointError(f"{name}: after loading, {len(left)} tensors were still unset "
                              f"(e.g. {left[:5]}); this is a WanFlow loader bug, please report it.")
