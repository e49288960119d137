"""Reading LoRA files from disk: safetensors (preferred) or weights-only torch pickles.

Also reads PEFT's ``adapter_config.json`` when it sits next to the weights, because PEFT keeps
``lora_alpha`` there and not in the tensors (a bare PEFT file otherwise loads at scale 1).
"""
from __future__ import annotations

import json
import math
import pathlib
import re
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch

from .files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, PickleFile, SafetensorsFile

PathLike = Union[str, pathlib.Path]
Expert = Literal["high", "low"]


@dataclass
class LoraFile:
    """The raw tensors of one LoRA file, plus the alpha its PEFT config implies (if any)."""

    path: pathlib.Path
    state_dict: dict[str, torch.Tensor]
    default_alpha: Optional[float] = None

    @property
    def name(self) -> str:
        return self.path.stem


def read_lora_file(path: PathLike) -> LoraFile:
    """Load a LoRA's tensors to CPU; clear errors for missing, empty or unreadable files."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    suffix = path.suffix.lower()
    # the model files' own readers: checked headers, weights-only pickles, and errors
    # (CorruptCheckpointError / UnsafeCheckpointError, both ValueErrors) that name the file
    if suffix in SAFETENSORS_SUFFIXES:
        source: Union[SafetensorsFile, PickleFile] = SafetensorsFile(path)
    elif suffix in PICKLE_SUFFIXES:
        source = PickleFile(path)
    else:
        raise ValueError(f"LoRA file {path}: unsupported extension {suffix!r}; "
                         "expected .safetensors (or .pt/.pth/.ckpt/.bin)")
    tensors = {k: source.read(k) for k in source.infos}
    if not tensors:
        raise ValueError(f"LoRA file {path} holds no tensors")
    return LoraFile(path=path, state_dict=tensors, default_alpha=peft_alpha(path.parent))


def peft_alpha(folder: pathlib.Path) -> Optional[float]:
    """``lora_alpha`` from a PEFT ``adapter_config.json`` in ``folder``, as a plain alpha.

    rsLoRA (``use_rslora``) scales by ``alpha / sqrt(r)``; returned as ``alpha · sqrt(r)`` so the
    usual ``alpha / rank`` rule gives the same scale.
    """
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"PEFT config {config_path} (read for the LoRA's lora_alpha) is not "
                         f"readable JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"PEFT config {config_path}: expected a JSON object, found "
                         f"{type(config).__name__}")
    alpha, rank = config.get("lora_alpha"), config.get("r")
    if alpha is None:
        return None
    for name, value in (("lora_alpha", alpha), ("r", rank)):
        if value is not None and not (_is_number(value) and value > 0):
            raise ValueError(f"PEFT config {config_path}: {name} is {value!r:.80}; expected a positive number")
    if config.get("use_rslora") and rank:
        return float(alpha) * math.sqrt(float(rank))
    return float(alpha)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_HIGH = re.compile(r"(^|[^a-z])(high[_-]?noise|high)([^a-z]|$)", re.IGNORECASE)
_LOW = re.compile(r"(^|[^a-z])(low[_-]?noise|low)([^a-z]|$)", re.IGNORECASE)


def guess_expert(path: PathLike) -> Optional[Expert]:
    """Which Wan 2.2 A14B expert a file is for (``…high_noise…``, ``HIGH``), or None.

    The file name decides; only when it names neither (or both) does its own folder's name
    (``high_noise_model/…``). Folders further up (a user's models root) are never read.
    """
    path = pathlib.Path(path)
    for text in (path.stem, path.parent.name):
        high, low = bool(_HIGH.search(text)), bool(_LOW.search(text))
        if high != low:
            return "high" if high else "low"
    return None
