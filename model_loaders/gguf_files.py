"""GGUF model files (city96's ComfyUI-GGUF layout), read through the ``gguf`` package.

What a Wan GGUF file holds (facts from ComfyUI-GGUF's converter and loader):

* ``general.architecture = "wan"``; tensor names are the official Wan keys (a
  ``model.diffusion_model.`` prefix, when present, is stripped like any other wrapper);
* GGUF lists dimensions innermost first: the torch shape is the reversed list, unless the file
  stores ``comfy.gguf.orig_shape.<name>`` (an INT32 array) for a tensor it had to flatten;
* the Linear weights of the blocks are quantized (Q8_0 … Q3_K, one type per tensor, K-quant
  "mixes" vary the type by layer); 1-D tensors, ``modulation`` parameters, the embeddings,
  ``head`` and ``img_emb`` stay F32, F16 or BF16; the 5-D ``patch_embedding.weight`` is F32 and
  only present once ComfyUI-GGUF's ``tools/fix_5d_tensors.py`` put it back after quantizing.

A :class:`GGUFFile` is a tensor source for :class:`~.files.Checkpoint`: the header is parsed by
``gguf.GGUFReader`` (its memory map is dropped right after), and each tensor is then read with one
``readinto`` into a buffer we own, as for safetensors. A quantized tensor is read as its raw block
bytes; its :class:`BlockQuantInfo` gives the shape the model sees (``model_shape``), so variant
detection runs on the same shapes as for any other file. :func:`prepare_model` turns the model's
Linear layers whose weights are quantized into ``wan.gguf_ops.QuantizedLinear`` before
``storage.load_into`` fills it, so the blocks stay packed in memory and are unpacked per call.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..wan import gguf_ops, ops
from .errors import CheckpointError, CorruptCheckpointError, WrongModelError
from .files import Checkpoint, PathLike, TensorInfo, _first_line, _short, _sniff_foreign

MAGIC = b"GGUF"
ARCHITECTURE_KEY = "general.architecture"
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
WAN_ARCHITECTURES = ("wan", "pig")
"""Accepted ``general.architecture`` values: city96 writes "wan"; "pig" (and no value at all) are
compatibility modes of the same loader in which the tensor names decide."""
MAX_DIMS = 8

PLAIN_DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED_TYPES = tuple(PLAIN_DTYPES) + tuple(gguf_ops.FORMATS)


@dataclass(frozen=True)
class BlockQuantInfo(TensorInfo):
    """A block-quantized tensor: ``dtype``/``shape`` describe its raw bytes (``uint8``), ``values_shape``
    the float tensor the blocks encode, ``quant_format`` the block type (``gguf_ops.FORMATS``)."""

    quant_format: str = ""
    values_shape: tuple[int, ...] = ()

    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.values_shape


@dataclass(frozen=True)
class _Entry:
    name: str
    type_name: str
    offset: int
    nbytes: int
    info: TensorInfo


def _gguf():
    try:
        import gguf
    except ImportError as exc:  # a runtime dependency; only missing in a hand-made environment
        raise CheckpointError("reading .gguf files needs the Python package 'gguf' "
                              f"(pip install gguf): {exc}") from None
    return gguf


class GGUFFile:
    """One ``.gguf`` file: header parsed and checked on open, tensors read on demand."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.architecture: Optional[str] = None
        self._entries = self._read_header()
        self.infos: dict[str, TensorInfo] = {name: e.info for name, e in self._entries.items()}
        self.types: dict[str, str] = {name: e.type_name for name, e in self._entries.items()}

    def _fail(self, found: str, expected: str = "a complete GGUF file") -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.path}: {found}; expected {expected}.")

    # ----------------------------------------------------------------------- header

    def _read_header(self) -> dict[str, _Entry]:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(4096)
        if not head.startswith(MAGIC):
            foreign = _sniff_foreign(head)
            found = f"this is {foreign}" if foreign else f"it starts with {_short(head[:8])}"
            raise self._fail(found, "a GGUF file (it starts with the bytes 'GGUF')")
        if size < 24:
            raise self._fail(f"the file has only {size} bytes (truncated download?)")
        version = int.from_bytes(head[4:8], "little")
        if version not in (2, 3):
            raise self._fail(f"the header gives GGUF version {version}" if version < 1 << 16 else
                             "a big-endian header", "a little-endian GGUF file of version 2 or 3")
        reader = self._open_reader(size)
        try:
            self._read_metadata(reader)
            return self._read_tensors(reader, size)
        finally:
            del reader  # drops the file mapping: only our own buffers hold tensor data

    def _open_reader(self, size: int):
        gguf = _gguf()
        try:
            return gguf.GGUFReader(self.path, "r")
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError,
                MemoryError) as exc:
            raise self._fail(f"the gguf package cannot read its header or tensor table ({_first_line(exc)}); "
                             f"the file has {size} bytes",
                             "a complete GGUF file (truncated or damaged download?)") from None

    def _read_metadata(self, reader) -> None:
        gguf = _gguf()
        for name, field in reader.fields.items():
            if field.types == [gguf.GGUFValueType.STRING]:
                self.metadata[name] = self._contents(field, name)
        arch_field = reader.fields.get(ARCHITECTURE_KEY)
        if arch_field is not None and ARCHITECTURE_KEY not in self.metadata:
            raise self._fail(f"{ARCHITECTURE_KEY} is a {[t.name for t in arch_field.types]} value", "a string")
        self.architecture = self.metadata.get(ARCHITECTURE_KEY)

    def _contents(self, field, name: str):
        try:
            return field.contents()
        except (ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise self._fail(f"metadata {_short(name)} cannot be decoded ({_first_line(exc)})") from None

    def _orig_shape(self, reader, name: str) -> Optional[tuple[int, ...]]:
        """ComfyUI-GGUF's ``comfy.gguf.orig_shape.<name>``: the shape before it flattened a tensor."""
        gguf = _gguf()
        key = ORIG_SHAPE_PREFIX + name
        field = reader.fields.get(key)
        if field is None:
            return None
        if field.types != [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]:
            raise self._fail(f"{_short(key)} is a {[t.name for t in field.types]} value", "an array of INT32")
        shape = tuple(int(v) for v in self._contents(field, key))
        if not shape or len(shape) > MAX_DIMS or min(shape) < 1:
            raise self._fail(f"{_short(key)} = {_short(list(shape))}", "a list of positive dimensions")
        return shape

    def _read_tensors(self, reader, size: int) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for tensor in reader.tensors:
            name = tensor.name
            type_name = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
            if type_name not in SUPPORTED_TYPES:
                raise self._fail(f"tensor {_short(name)} is stored as {type_name}",
                                 f"one of the types {', '.join(SUPPORTED_TYPES)} (WanFlow reads these GGUF types)")
            dims = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            if not dims or len(dims) > MAX_DIMS or min(dims) < 1:
                raise self._fail(f"tensor {_short(name)} has dimensions {_short(list(dims))}",
                                 f"1 to {MAX_DIMS} positive dimensions")
            offset, nbytes = int(tensor.data_offset), int(tensor.n_bytes)
            if offset + nbytes > size:
                raise self._fail(f"tensor {_short(name)} needs bytes up to {offset + nbytes} but the file has "
                                 f"only {size}", "a complete GGUF file (truncated or incomplete download?)")
            model_shape = self._orig_shape(reader, name) or dims
            if math.prod(model_shape) != math.prod(dims):
                raise self._fail(f"{_short(ORIG_SHAPE_PREFIX + name)} = {list(model_shape)} for a tensor of "
                                 f"{math.prod(dims)} values", "a shape with as many values as the tensor")
            entries[name] = _Entry(name, type_name, offset, nbytes,
                                   self._info(type_name, dims, model_shape, tuple(tensor.data.shape)))
        if not entries:
            raise self._fail("the file holds no tensors", "a GGUF model file")
        return entries

    @staticmethod
    def _info(type_name: str, dims: tuple[int, ...], model_shape: tuple[int, ...],
              raw_shape: tuple[int, ...]) -> TensorInfo:
        if type_name in PLAIN_DTYPES:
            return TensorInfo(PLAIN_DTYPES[type_name], model_shape)
        return BlockQuantInfo(torch.uint8, raw_shape, quant_format=type_name, values_shape=model_shape)

    # ----------------------------------------------------------------------- data

    def read(self, key: str) -> torch.Tensor:
        """One tensor as described by ``infos[key]``: a float tensor, or raw ``uint8`` blocks."""
        entry = self._entries[key]
        buffer = torch.empty(entry.nbytes, dtype=torch.uint8)
        if entry.nbytes:
            with open(self.path, "rb") as f:
                f.seek(entry.offset)
                got = f.readinto(memoryview(buffer.numpy()))
            if got != entry.nbytes:
                raise self._fail(f"tensor {key!r} ends after {got} of {entry.nbytes} bytes "
                                 "(the file changed or was truncated while reading)")
        return buffer.view(entry.info.dtype).reshape(entry.info.shape)


def open_gguf(path: PathLike) -> Checkpoint:
    """A lazy :class:`Checkpoint` over a ``.gguf`` file (its keys as stored in the file).

    A file that names another architecture than Wan is refused here, with what it holds."""
    source = GGUFFile(path)
    arch = source.architecture
    if arch is not None and arch not in WAN_ARCHITECTURES:
        raise WrongModelError(f"{path}: this GGUF file holds a {arch!r} model ({ARCHITECTURE_KEY}); "
                              "expected a Wan diffusion model (architecture 'wan'), the only GGUF models "
                              "WanFlow reads.")
    return Checkpoint(str(path), {k: (source, k) for k in source.infos}, dict(source.metadata))


# --------------------------------------------------------------------------- loading into a model


def is_gguf(ckpt: Checkpoint) -> bool:
    return any(isinstance(ckpt.source(k), GGUFFile) for k in ckpt)


def quantized_keys(ckpt: Checkpoint) -> dict[str, BlockQuantInfo]:
    return {k: info for k in ckpt if isinstance(info := ckpt.info(k), BlockQuantInfo)}


class _Adjusted:
    """Some of a checkpoint's tensors seen differently (reshaped, or dequantized once), lazily."""

    def __init__(self, ckpt: Checkpoint, infos: dict[str, TensorInfo],
                 convert: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.metadata: dict[str, str] = {}
        self.infos, self._ckpt, self._convert = infos, ckpt, convert

    def read(self, key: str) -> torch.Tensor:
        return self._convert[key](self._ckpt[key])


def prepare_model(model: nn.Module, ckpt: Checkpoint, expected: str = "the model") -> Checkpoint:
    """Plan ``model`` (built on the meta device, or parked) for ``ckpt``'s quantized tensors; return
    the checkpoint to hand to ``storage.load_into``.

    * a quantized ``ops.Linear`` weight: the layer becomes a ``QuantizedLinear`` taking the raw
      blocks as its weight (packed in memory, dequantized per call);
    * any other quantized tensor (a norm or modulation quantized by another tool): dequantized
      once, here, to float32;
    * a plain tensor whose shape differs from the model's only by dimensions of size 1 (a
      ``modulation`` written by llama.cpp's quantizer without its leading 1): reshaped.

    A quantized tensor of the wrong shape raises :class:`WrongModelError` (in the shapes the model
    sees); other names and shapes that do not fit are left for ``load_into`` to report.
    """
    targets = model.state_dict(keep_vars=True)
    modules = dict(model.named_modules())
    infos: dict[str, TensorInfo] = {}
    convert: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for key in ckpt:
        info, target = ckpt.info(key), targets.get(key)
        if target is None:
            continue
        owner_name, _, param = key.rpartition(".")
        owner = modules.get(owner_name)
        wanted = _model_shape(owner, param, target)
        if isinstance(info, BlockQuantInfo):
            if info.values_shape != wanted:
                raise WrongModelError(f"{ckpt.name}: {key!r} has shape {list(info.values_shape)} "
                                      f"({info.quant_format}), but {expected} expects {list(wanted)}.")
            if isinstance(owner, ops.Linear) and param == "weight":
                gguf_ops.quantize_layer(owner, info.quant_format, info.shape)
            else:
                infos[key] = TensorInfo(torch.float32, wanted)
                convert[key] = _dequantizer(info)
        elif info.shape != wanted and _squeezed(info.shape) == _squeezed(wanted):
            infos[key] = TensorInfo(info.dtype, wanted)
            convert[key] = _reshaper(wanted)
    if not infos:
        return ckpt
    adjusted = _Adjusted(ckpt, infos, convert)
    return ckpt.without(set(infos)).joined(Checkpoint(ckpt.name, {k: (adjusted, k) for k in infos}))


def _model_shape(owner: Optional[nn.Module], param: str, target: torch.Tensor) -> tuple[int, ...]:
    if isinstance(owner, gguf_ops.QuantizedWeights) and param == "weight":  # planned by an earlier load
        return tuple(owner.weight_shape)
    return tuple(target.shape)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _dequantizer(info: BlockQuantInfo) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda raw: gguf_ops.dequantize(raw, info.quant_format, torch.float32, info.values_shape)


def _reshaper(shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tensor: tensor.reshape(shape)


def describe_gguf(ckpt: Checkpoint) -> str:
    """``"GGUF, Q4_K (240), F32 (301), ..."``: the storage types and how many tensors use each."""
    counts = Counter(ckpt.source(k).types[ckpt.source_key(k)] for k in ckpt if isinstance(ckpt.source(k), GGUFFile))
    order = sorted(counts, key=lambda t: (t not in gguf_ops.FORMATS, -counts[t], t))
    return "GGUF, " + ", ".join(f"{t} ({counts[t]})" for t in order)


def check_patch_embedding(ckpt: Checkpoint) -> None:
    """Name what is wrong when a Wan GGUF file lacks a 5-D patch embedding weight (that of the
    model, or VACE's): ComfyUI-GGUF's converter leaves 5-D tensors out and re-inserts them in a
    separate step. Their biases, which it does write, show where one is missing."""
    keys = set(ckpt)
    missing = sorted(k[:-len("bias")] + "weight" for k in keys
                     if k.endswith("patch_embedding.bias") and k[:-len("bias")] + "weight" not in keys)
    if missing:
        raise CorruptCheckpointError(
            f"{ckpt.name}: the GGUF file has no {' or '.join(missing)} (found {len(keys)} tensors, "
            f"e.g. {sorted(keys)[:3]}); expected the 5-D patch embedding, which ComfyUI-GGUF's converter "
            "writes to a side file: put it back with its tools/fix_5d_tensors.py, or download a file "
            "made after that step.")
