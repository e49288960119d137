"""Open model files lazily: safetensors (single or sharded), and ``.pth`` pickles safely.

A :class:`Checkpoint` is a read-only mapping ``key -> tensor`` whose tensors are read from disk
only when asked for, straight into their final buffer in the file's dtype. Renaming keys or
stripping prefixes only rewrites the index, never the data, so a loader can convert a 30 GB
file's key names and feed the model one tensor at a time without ever holding two copies.

Safetensors files are parsed by our own small header reader instead of ``safe_open``: it lets us
check every offset up front (truncated downloads, HTML error pages and LFS pointers saved as
``.safetensors`` get a clear message) and read each tensor with one ``readinto`` into a tensor we
own, so no file mapping stays resident next to the loaded weights. (Zero-copy views of a memory
map load faster, but tensor offsets in safetensors files are not 64-byte aligned and CPU kernels
then round differently than on normally allocated weights: the same model would give slightly
different outputs depending on which file it came from.) Most of such a read's time is the kernel
zeroing the fresh buffer's pages, so :meth:`Checkpoint.read_ahead` keeps a few reads in flight.

``.pth``/``.pt``/``.ckpt``/``.bin`` are pickles: they are opened only with
``torch.load(weights_only=True)``; anything that needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

import torch

from .errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

PathLike = Union[str, os.PathLike]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
GGUF_SUFFIX = ".gguf"  # model_loaders/gguf_files.py
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
MAX_HEADER_ENTRIES = 100_000
"""Most tensors one safetensors file may list. A whole Wan 14B with fp8 scales has about 2 500,
a LoRA a few thousand; a header with hundreds of thousands of entries is damaged or hostile and
would take minutes to check."""

# Reads in flight at once. Most of a read's time is the kernel faulting in and zeroing the fresh
# buffer's pages, not the copy; that work runs in parallel on other cores (measured on 2 cores,
# 2.84 GB bf16 from the page cache: 1.6 s one at a time, 0.8 s with two reads in flight).
READ_WORKERS = max(1, min(4, os.cpu_count() or 1))

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


@dataclass(frozen=True)
class TensorInfo:
    """What the file says about one tensor, known without reading its data."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The shape the tensor has in the model: ``shape``, except for block-quantized GGUF
        tensors, whose ``shape`` counts their raw bytes (``gguf_files.BlockQuantInfo``)."""
        return self.shape


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _count(value: object) -> bool:
    """A non-negative JSON integer (``true``/``false`` are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _short(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters, for messages about untrusted header values."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- safetensors


def _sniff_foreign(head: bytes) -> Optional[str]:
    """Name the format of a file that is clearly not safetensors, from its first bytes."""
    text = head.lstrip()[:64].lower()
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch .pth/.ckpt pickle?)"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] in (2, 3, 4, 5):
        return "a raw pickle (legacy PyTorch .pth/.ckpt)"
    if head.startswith(b"GGUF"):
        return "a GGUF file (give it a .gguf name to load it as one)"
    if text.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull` or download the file itself)"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    return None


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked on open, tensors read on demand."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.infos, self.metadata, self._offsets, self._data_start = self._read_header()

    def _fail(self, found: str, expected: str = "a safetensors file") -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.path}: {found}; expected {expected}.")

    def _read_header(self):
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(min(size, 4096))
        foreign = _sniff_foreign(head)
        if foreign:
            raise self._fail(f"this is {foreign}")
        if size < 8:
            raise self._fail(f"the file has only {size} bytes (empty or truncated)")
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > MAX_HEADER_BYTES:
            raise self._fail(f"the first 8 bytes give a header length of {header_len} bytes",
                             "a safetensors header of at most 100 MB (is this a safetensors file?)")
        if 8 + header_len > size:
            raise self._fail(f"the header needs {header_len} bytes but the file has only "
                             f"{size - 8} after the length field (truncated download?)")
        with open(self.path, "rb") as f:
            f.seek(8)
            raw = f.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"the header is not valid UTF-8 JSON ({exc})") from None
        except RecursionError:
            raise self._fail("the header JSON is nested too deeply to read", "a flat JSON object") from None
        if not isinstance(header, dict):
            raise self._fail(f"the header is a JSON {type(header).__name__}", "a JSON object")
        entries = len(header) - ("__metadata__" in header)
        if entries > MAX_HEADER_ENTRIES:
            raise self._fail(f"the header lists {entries} entries",
                             f"at most {MAX_HEADER_ENTRIES} tensors")

        metadata = self._check_metadata(header.pop("__metadata__", None))
        data_start = 8 + header_len
        data_size = size - data_start
        infos: dict[str, TensorInfo] = {}
        offsets: dict[str, tuple[int, int]] = {}
        for key, entry in header.items():
            infos[key], offsets[key] = self._check_entry(key, entry)
        self._check_layout(offsets, data_size)
        return infos, metadata, offsets, data_start

    def _check_metadata(self, metadata: object) -> dict[str, str]:
        """``__metadata__`` is optional; when present the format allows only string values."""
        if metadata is None:
            return {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._fail(f"__metadata__ is {_short(metadata)}", "a JSON object of strings")
        return metadata

    def _check_entry(self, key: str, entry: object) -> tuple[TensorInfo, tuple[int, int]]:
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise self._fail(f"header entry {_short(key)} is {_short(entry)}",
                             "entries with dtype, shape and data_offsets")
        name = entry["dtype"]
        dtype = SAFETENSORS_DTYPES.get(name) if isinstance(name, str) else None
        if dtype is None:
            raise self._fail(f"tensor {_short(key)} has dtype {_short(name)}",
                             f"one of {sorted(SAFETENSORS_DTYPES)}")
        shape, span = entry["shape"], entry["data_offsets"]
        if (not isinstance(shape, list) or not all(_count(d) for d in shape)
                or not isinstance(span, list) or len(span) != 2
                or not all(_count(o) for o in span) or span[1] < span[0]):
            raise self._fail(f"tensor {_short(key)} has shape {_short(shape)} and offsets {_short(span)}",
                             "non-negative integer shape and [begin, end] offsets")
        info = TensorInfo(dtype, tuple(shape))
        if span[1] - span[0] != info.nbytes:
            raise self._fail(f"tensor {_short(key)} ({name} {_short(shape)}) spans "
                             f"{span[1] - span[0]} bytes", f"{info.nbytes} bytes")
        return info, (span[0], span[1])

    def _check_layout(self, offsets: dict[str, tuple[int, int]], data_size: int) -> None:
        end = max((e for _, e in offsets.values()), default=0)
        if end > data_size:
            raise self._fail(f"the tensors need {end} bytes of data but the file holds only "
                             f"{data_size} (truncated or incomplete download)")
        previous_end, previous_key = 0, None
        for key, (begin, stop) in sorted(offsets.items(), key=lambda kv: kv[1]):
            if begin < previous_end:
                raise self._fail(f"tensors {_short(previous_key)} and {_short(key)} overlap",
                                 "non-overlapping tensor data")
            previous_end, previous_key = max(previous_end, stop), key

    def read(self, key: str, buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Read one tensor in its file dtype into a fresh buffer, or into ``buffer`` (uint8,
        large enough) when given; no other copy is made."""
        info = self.infos[key]
        begin, end = self._offsets[key]
        if buffer is None:
            buffer = torch.empty(end - begin, dtype=torch.uint8)
        else:
            buffer = buffer[: end - begin]
        if end > begin:
            with open(self.path, "rb") as f:
                f.seek(self._data_start + begin)
                got = f.readinto(memoryview(buffer.numpy()))
            if got != end - begin:
                raise self._fail(f"tensor {key!r} ends after {got} of {end - begin} bytes "
                                 "(the file changed or was truncated while reading)")
        return buffer.view(info.dtype).reshape(info.shape)


# --------------------------------------------------------------------------- pickles (.pth)

_STATE_DICT_WRAPPERS = ("state_dict", "model", "module", "model_state_dict")


class PickleFile:
    """A ``.pth``/``.ckpt``/``.bin`` state dict, opened only with ``torch.load(weights_only=True)``.

    New-style (zip) files are memory-mapped, so tensors cost memory only as they are used and are
    never copied on the way into a model.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._tensors = self._load()
        self.infos = {k: TensorInfo(t.dtype, tuple(t.shape)) for k, t in self._tensors.items()}

    def _load(self) -> dict[str, torch.Tensor]:
        with open(self.path, "rb") as f:
            head = f.read(4096)
        foreign = _sniff_foreign(head)
        if foreign and not foreign.startswith(("a zip", "a raw pickle")):
            raise CorruptCheckpointError(f"{self.path}: this is {foreign}; expected a PyTorch "
                                         "checkpoint (zip or pickle).")
        if len(head) > 8 and struct.unpack("<Q", head[:8])[0] < MAX_HEADER_BYTES and head[8:9] == b"{":
            raise CorruptCheckpointError(f"{self.path}: this is a safetensors file with a "
                                         f"{self.path.suffix} name; rename it to .safetensors.")
        obj = self._torch_load(mmap=zipfile.is_zipfile(self.path))
        return self._flatten(obj)

    def _torch_load(self, mmap: bool) -> object:
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            damaged = re.search(r"Unsupported operand \S+", message)
            if damaged:  # a byte that is no pickle opcode at all: a damaged stream, not a payload
                raise CorruptCheckpointError(f"{self.path}: torch.load failed (the pickle stream is damaged: "
                                             f"{damaged.group(0)}); expected a complete PyTorch checkpoint.") from None
            if "Weights only load failed" in message or "Unsupported global" in message:
                found = re.search(r"Unsupported global: (?:GLOBAL )?([^\s]+)", message)
                what = f"it references {found.group(1)}" if found else "it needs arbitrary code"
                raise UnsafeCheckpointError(
                    f"{self.path}: refused to unpickle: {what}, which torch.load(weights_only=True) "
                    "does not allow. We only load plain tensor state dicts from pickles; convert "
                    "the file to .safetensors, or use a safetensors release of this model.") from None
            raise CorruptCheckpointError(f"{self.path}: unreadable pickle ({_short(message, 200)}); expected "
                                         "a PyTorch state dict.") from None
        except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in any of torch's layers
            raise CorruptCheckpointError(
                f"{self.path}: torch.load failed ({_first_line(exc)}); "
                "expected a complete PyTorch checkpoint (truncated or damaged file?).") from None

    def _flatten(self, obj: object) -> dict[str, torch.Tensor]:
        if isinstance(obj, dict):
            for wrapper in _STATE_DICT_WRAPPERS:
                inner = obj.get(wrapper)
                if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                    obj = inner
                    break
        if not isinstance(obj, dict):
            raise CorruptCheckpointError(f"{self.path}: the pickle holds a {type(obj).__name__}; "
                                         "expected a state dict (mapping of names to tensors).")
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if not tensors:
            raise CorruptCheckpointError(f"{self.path}: the pickle holds no tensors (keys: "
                                         f"{list(obj)[:8]}); expected a state dict.")
        return tensors

    def read(self, key: str) -> torch.Tensor:
        return self._tensors[key]


class MemorySource:
    """Tensors already in memory (the result of a key map that had to compute new tensors)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.metadata: dict[str, str] = {}
        self._tensors = dict(tensors)
        self.infos = {k: TensorInfo(t.dtype, tuple(t.shape)) for k, t in self._tensors.items()}

    def read(self, key: str) -> torch.Tensor:
        return self._tensors[key]


TensorSource = Union[SafetensorsFile, PickleFile, MemorySource]


# --------------------------------------------------------------------------- checkpoint view


class Checkpoint(Mapping[str, torch.Tensor]):
    """A lazy, read-only ``key -> tensor`` view over one or more files.

    ``infos`` (dtype and shape per key) is known without reading data; indexing reads a tensor.
    Renaming returns a new view over the same files.
    """

    def __init__(self, name: str, entries: dict[str, tuple[TensorSource, str]],
                 metadata: Optional[dict[str, str]] = None, config: Optional[dict] = None) -> None:
        self.name = name
        self._entries = entries
        self.metadata = metadata or {}
        self.config = config  # a config.json found next to the weights (diffusers / official)

    def __getitem__(self, key: str) -> torch.Tensor:
        source, source_key = self._entries[key]
        return source.read(source_key)

    def read_into(self, key: str, buffer: torch.Tensor) -> torch.Tensor:
        """Like ``self[key]`` but a safetensors read lands in ``buffer`` (uint8, big enough);
        other sources already hold their tensor and return it."""
        source, source_key = self._entries[key]
        if isinstance(source, SafetensorsFile):
            return source.read(source_key, buffer)
        return source.read(source_key)

    def read_ahead(self, keys: Iterable[str],
                   workers: int = READ_WORKERS) -> Iterator[tuple[str, torch.Tensor]]:
        """``(key, self[key])`` for ``keys`` in order, with up to ``workers`` reads running ahead
        in threads (file reads release the GIL). Each tensor still gets its own buffer, so the
        result is the same as reading one by one; only the wall time differs."""
        if workers <= 1:
            yield from ((key, self[key]) for key in keys)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="wanflow-read") as pool:
            pending: deque[tuple[str, Future]] = deque()
            for key in keys:
                pending.append((key, pool.submit(self.__getitem__, key)))
                if len(pending) > workers:
                    done_key, future = pending.popleft()
                    yield done_key, future.result()
            while pending:
                done_key, future = pending.popleft()
                yield done_key, future.result()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, key: str) -> TensorInfo:
        source, source_key = self._entries[key]
        return source.infos[source_key]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape in the model (what variant detection reads)."""
        return {k: self.info(k).model_shape for k in self._entries}

    def nbytes(self) -> int:
        return sum(self.info(k).nbytes for k in self._entries)

    def source_key(self, key: str) -> str:
        return self._entries[key][1]

    def source(self, key: str) -> "TensorSource":
        """The file (or memory) object that holds ``key``."""
        return self._entries[key][0]

    def renamed(self, new_to_old: Mapping[str, str]) -> "Checkpoint":
        """A view whose keys are ``new_to_old``'s keys; keys not listed are dropped."""
        missing = [old for old in new_to_old.values() if old not in self._entries]
        if missing:
            raise KeyError(f"{self.name}: cannot rename missing keys {missing[:5]}")
        entries = {new: self._entries[old] for new, old in new_to_old.items()}
        return Checkpoint(self.name, entries, self.metadata, self.config)

    def map_keys(self, fn: Callable[[str], Optional[str]]) -> "Checkpoint":
        """A view with every key passed through ``fn`` (returning None drops the key)."""
        mapping: dict[str, str] = {}
        for old in self._entries:
            new = fn(old)
            if new is None:
                continue
            if new in mapping:
                raise CheckpointError(f"{self.name}: keys {mapping[new]!r} and {old!r} both "
                                      f"become {new!r}")
            mapping[new] = old
        return self.renamed(mapping)

    def without(self, keys: set[str]) -> "Checkpoint":
        return self.map_keys(lambda k: None if k in keys else k)

    def joined(self, other: "Checkpoint") -> "Checkpoint":
        """Both views' keys in one view (a key in both is an error)."""
        both = set(self._entries) & set(other._entries)
        if both:
            raise CheckpointError(f"{self.name}: keys {sorted(both)[:5]} present twice")
        return Checkpoint(self.name, {**self._entries, **other._entries}, self.metadata, self.config)

    def meta_tensors(self) -> dict[str, torch.Tensor]:
        """Data-free stand-ins (right dtype and shape) for code that only inspects keys/shapes."""
        return {k: torch.empty(self.info(k).shape, dtype=self.info(k).dtype, device="meta")
                for k in self._entries}

    def converted(self, convert: Callable[[dict], dict]) -> "Checkpoint":
        """Apply a state-dict key map (such as ``dit_keys.diffusers_to_official``) lazily.

        The map first runs on meta stand-ins: if it only renames (every output is one of its
        inputs), the result is a renamed view and nothing is read. If it computes new tensors
        (CLIP's fused q/k/v), it runs again on the real tensors and the result is held in memory.
        """
        stand_ins = self.meta_tensors()
        origin = {id(t): k for k, t in stand_ins.items()}
        out = convert(stand_ins)
        if all(id(t) in origin for t in out.values()):
            return self.renamed({new: origin[id(t)] for new, t in out.items()})
        real = convert({k: self[k] for k in self._entries})
        source = MemorySource(real)
        return Checkpoint(self.name, {k: (source, k) for k in real}, self.metadata, self.config)


# --------------------------------------------------------------------------- prefixes

# Prefixes that wrap a model's own keys in the files users have (most specific first).
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.model.", "net.",
                  "transformer.", "module.", "model.")


def common_prefix(keys: list[str], candidates: tuple[str, ...] = KNOWN_PREFIXES) -> str:
    """The known prefix carried by at least half of the keys (ComfyUI-style detection), or ''."""
    if not keys:
        return ""
    for prefix in candidates:
        carried = sum(k.startswith(prefix) for k in keys)
        if carried * 2 >= len(keys) and carried > 0:
            return prefix
    return ""


def prefix_holding(keys, markers: tuple[str, ...], candidates: tuple[str, ...]) -> Optional[str]:
    """The first of ``candidates`` ('' included) under which one of the ``markers`` keys exists.

    Finds one model inside a file that holds several (a full ComfyUI checkpoint keeps the DiT,
    the VAE and the text encoder under different prefixes), whichever holds the most keys.
    """
    keys = set(keys)
    for prefix in ("",) + tuple(candidates):
        if any(prefix + marker in keys for marker in markers):
            return prefix
    return None


def strip_prefix(ckpt: Checkpoint, prefix: str, keep_unprefixed: bool = True) -> Checkpoint:
    """Remove ``prefix`` from the keys that carry it.

    Unprefixed keys (such as ComfyUI's top-level ``scaled_fp8`` marker) are kept when
    ``keep_unprefixed``; otherwise they are dropped (other models in a full checkpoint).
    """
    if not prefix:
        return ckpt

    def rename(key: str) -> Optional[str]:
        if key.startswith(prefix):
            return key[len(prefix):]
        return key if keep_unprefixed else None

    return ckpt.map_keys(rename)


# --------------------------------------------------------------------------- opening


def open_checkpoint(path: PathLike) -> Checkpoint:
    """Open a single file, a sharded ``*.index.json``, or a folder holding either."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_folder(path)
    name = path.name.lower()
    if name.endswith(".index.json"):
        return _open_sharded(path)
    if name.endswith(SAFETENSORS_SUFFIXES):
        return _single(SafetensorsFile(path), path)
    if name.endswith(PICKLE_SUFFIXES):
        return _single(PickleFile(path), path)
    if name.endswith(GGUF_SUFFIX):
        from .gguf_files import open_gguf  # the gguf package is only imported for GGUF files
        return open_gguf(path)
    raise CheckpointError(f"{path}: unknown file type {path.suffix!r}; expected one of "
                          f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES + (GGUF_SUFFIX,)} or a *.index.json")


def _single(source: TensorSource, path: Path) -> Checkpoint:
    return Checkpoint(str(path), {k: (source, k) for k in source.infos}, dict(source.metadata),
                      _read_config(path.parent / "config.json"))


def _read_config(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({_first_line(exc)}); expected a model "
                                     "config.json.") from None
    if not isinstance(config, dict):
        raise CorruptCheckpointError(f"{path}: the JSON is a {type(config).__name__}; expected a model "
                                     "config.json object.")
    return config


def _open_sharded(index_path: Path) -> Checkpoint:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise CorruptCheckpointError(f"{index_path}: not a shard index; expected JSON with a "
                                     "'weight_map' object of tensor name -> shard file.") from None
    shards: dict[str, TensorSource] = {}
    for shard_name in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard_name
        if not shard_path.is_file():
            raise CorruptCheckpointError(f"{index_path}: lists shard {shard_name!r}, which is "
                                         f"missing from {index_path.parent}.")
        shards[shard_name] = (SafetensorsFile(shard_path) if shard_name.endswith(SAFETENSORS_SUFFIXES)
                              else PickleFile(shard_path))
    entries: dict[str, tuple[TensorSource, str]] = {}
    for key, shard_name in weight_map.items():
        source = shards[shard_name]
        if key not in source.infos:
            raise CorruptCheckpointError(f"{index_path}: says {key!r} is in {shard_name!r}, but "
                                         "that shard does not hold it.")
        entries[key] = (source, key)
    metadata: dict[str, str] = {}
    for source in shards.values():
        metadata.update(source.metadata)
    return Checkpoint(str(index_path), entries, metadata, _read_config(index_path.parent / "config.json"))


def _open_folder(folder: Path) -> Checkpoint:
    indexes = sorted(folder.glob("*.index.json"))
    if len(indexes) == 1:
        return _open_sharded(indexes[0])
    singles = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SAFETENSORS_SUFFIXES))
    if not indexes and len(singles) == 1:
        return _single(SafetensorsFile(singles[0]), singles[0])
    if not indexes and not singles:
        pickles = sorted(p for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
        if len(pickles) == 1:
            return _single(PickleFile(pickles[0]), pickles[0])
    found = [p.name for p in indexes + singles] or sorted(p.name for p in folder.iterdir())[:10]
    raise CheckpointError(f"{folder}: cannot tell which weights to load (found {found}); expected "
                          "one *.index.json with its shards, or exactly one weights file.")
