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

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..wan import ops
from .errors import CheckpointError, CorruptCheckpointError, StorageChoiceError, WrongModelError
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
        raise StorageChoiceError(f"storage dtype {value} is not supported; expected one of "
                         f"{sorted(STORAGE_DTYPES)}")
    name = str(value).lower()
    if name in ("default", "auto", "file", ""):
        return None
    if name not in STORAGE_DTYPES:
        raise StorageChoiceError(f"storage dtype {value!r} is unknown; expected 'default' or one of "
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


class Converter:
    """Converts tensors to their storage dtype through reusable fp32 scratch buffers.

    Each result is allocated once, in its final dtype; intermediates live in one scratch buffer
    that grows to the largest tensor and is reused. Allocating and freeing a temporary per tensor
    instead would interleave short- and long-lived blocks on the heap, which the allocator cannot
    give back to the OS (measured: 2.4x the weights for bf16 -> fp8 at load time).
    """

    def __init__(self) -> None:
        self._scratch = torch.empty(0, dtype=torch.float32)
        self._raw = torch.empty(0, dtype=torch.uint8)

    def read(self, ckpt: Checkpoint, key: str) -> torch.Tensor:
        """Read a tensor that is about to be converted into a reusable buffer."""
        nbytes = ckpt.info(key).nbytes
        if self._raw.numel() < nbytes:
            self._raw = torch.empty(nbytes, dtype=torch.uint8)
        return ckpt.read_into(key, self._raw)

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` made safe to keep: a copy if it still lives in a scratch buffer."""
        pointer = tensor.untyped_storage().data_ptr()
        for scratch in (self._raw, self._scratch):
            if scratch.numel() and pointer == scratch.untyped_storage().data_ptr():
                return tensor.clone()
        return tensor

    def wide(self, tensor: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tensor`` (times ``scale``) in fp32, held in the scratch buffer (valid until next call)."""
        if self._scratch.numel() < tensor.numel():
            self._scratch = torch.empty(tensor.numel(), dtype=torch.float32)
        out = self._scratch[: tensor.numel()].view(tensor.shape)
        out.copy_(tensor)
        if scale is not None:
            out.mul_(scale.to(torch.float32))
        return out

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype,
             scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tensor`` (dequantised with ``scale``) as a new tensor of ``dtype``."""
        if scale is None and tensor.dtype not in FP8_DTYPES:
            return tensor.to(dtype)
        wide = self.wide(tensor, scale)
        return wide.clone() if dtype == torch.float32 else wide.to(dtype)

    def quantize_fp8(self, tensor: torch.Tensor, dtype: torch.dtype, scaled: bool,
                     scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """fp8 copy of ``tensor`` (dequantised with ``scale`` first); with ``scaled`` also the
        per-tensor fp32 scale such that ``q * new_scale`` approximates the weight."""
        fp8_max = torch.finfo(dtype).max
        wide = self.wide(tensor, scale)
        new_scale = None
        if scaled:
            low, high = torch.aminmax(wide)
            amax = torch.maximum(low.abs(), high.abs())
            new_scale = (amax / fp8_max if amax > 0 else torch.ones(())).to(torch.float32).reshape(())
            wide.div_(new_scale)
        return wide.clamp_(-fp8_max, fp8_max).to(dtype), new_scale


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype,
                 scaled: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``weight`` in fp8; with ``scaled`` also the fp32 scale so that ``q * scale ~ weight``."""
    return Converter().quantize_fp8(weight, dtype, scaled)


def _cast_weight(convert: Converter, tensor: torch.Tensor, scale: Optional[torch.Tensor],
                 storage: Optional[StorageDtype]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A storage-dtype layer's weight (and scale) in the chosen storage dtype; block-quantized
    (GGUF) weights arrive as raw bytes and stay as they are."""
    if storage is None or not tensor.is_floating_point():
        return tensor, scale
    if storage.is_fp8:
        if tensor.dtype == storage.dtype and (scale is not None or not storage.scaled):
            return tensor, scale  # already stored as asked: re-quantising only loses accuracy
        return convert.quantize_fp8(tensor, storage.dtype, storage.scaled, scale)
    return convert.cast(tensor, storage.dtype, scale), None


def _cast_other(convert: Converter, tensor: torch.Tensor, scale: Optional[torch.Tensor],
                storage: Optional[StorageDtype], wants_float32: bool) -> torch.Tensor:
    """Any other tensor: plain modules cannot compute with fp8, some params must stay fp32."""
    if not tensor.is_floating_point():
        return tensor
    if wants_float32:
        return convert.cast(tensor, torch.float32, scale)
    if scale is not None or tensor.dtype in FP8_DTYPES:
        target = storage.dtype if storage is not None and not storage.is_fp8 else torch.bfloat16
        return convert.cast(tensor, target, scale)
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

    for key, target in targets.items():
        info = ckpt.info(key)
        if info.shape != tuple(target.shape):
            raise WrongModelError(f"{ckpt.name}: {key!r} has shape {list(info.shape)}, but "
                                  f"{expected} expects {list(target.shape)}.")
        if target.dtype.is_floating_point and not info.dtype.is_floating_point:
            raise CorruptCheckpointError(f"{ckpt.name}: {key!r} is stored as {str(info.dtype).replace('torch.', '')}; "
                                         f"expected floating-point weights.")
    _check_scales(ckpt, scales, targets)

    modules = dict(model.named_modules())
    convert = Converter()
    state: dict[str, torch.Tensor] = {}
    layer_scales: dict[str, torch.Tensor] = {}
    for key, tensor in _read_all(ckpt, list(targets), convert, storage):
        owner_name, _, param = key.rpartition(".")
        owner = modules[owner_name]
        scale_key = scales.scales.get(owner_name) if param == "weight" else None
        scale = ckpt[scale_key].to(torch.float32) if scale_key else None
        castable = isinstance(owner, ops.CastWeights) and not keep_float32(key)
        if castable and param == "weight":
            tensor, scale = _cast_weight(convert, tensor, scale, storage)
            if scale is not None:
                layer_scales[owner_name] = scale
        elif castable and param == "bias":
            if tensor.dtype in FP8_DTYPES or (storage is not None and not storage.is_fp8):
                tensor = _cast_other(convert, tensor, None, storage, wants_float32=False)
        else:
            tensor = _cast_other(convert, tensor, scale, storage, keep_float32(key))
        state[key] = convert.keep(tensor)

    model.requires_grad_(False)
    model.load_state_dict(state, strict=True, assign=True)
    for name, scale in layer_scales.items():
        modules[name].set_scale_weight(scale)  # type: ignore[union-attr]
    for name, module in modules.items():
        if isinstance(module, ops.CastWeights) and name not in layer_scales:
            module.set_scale_weight(None)


def _check_scales(ckpt: Checkpoint, scales: WeightScales, targets: Mapping[str, torch.Tensor]) -> None:
    """A weight scale is one float, or one per output row of its weight (read before any data)."""
    for owner, scale_key in scales.scales.items():
        weight = targets.get(f"{owner}.weight")
        if weight is None:
            continue
        info = ckpt.info(scale_key)
        count = math.prod(info.shape)
        if not info.dtype.is_floating_point or count not in (1, weight.shape[0]):
            raise CorruptCheckpointError(
                f"{ckpt.name}: {scale_key!r} is {str(info.dtype).replace('torch.', '')} {list(info.shape)}; "
                f"expected one float or one per output row ({weight.shape[0]}) of {owner}.weight.")


def _read_all(ckpt: Checkpoint, keys: list[str], convert: Converter,
              storage: Optional[StorageDtype]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` in order. Kept as stored: each tensor in its own final buffer, several
    reads in flight. Converted: one at a time through the converter's reused buffer, so the
    tensors that are thrown away after conversion never each take fresh memory."""
    if storage is None:
        return ckpt.read_ahead(keys)
    return ((key, convert.read(ckpt, key)) for key in keys)


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
