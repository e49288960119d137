"""Keep exactly one expert on the compute device; the others wait in CPU RAM.

Wan 2.2 A14B has two 14B experts. Holding both on the GPU does not fit most cards, and holding
extra copies in RAM (a pinned copy next to a CPU copy, a deepcopy per sampler) is what makes
other packs run out of system memory. Here every expert is a single ``nn.Module`` that is moved
in place with ``module.to(device)``: the old storage is released by the move, nothing is copied
or cached on the side. Moves are timed and logged.

An expert can also wait on disk instead of in RAM (the two-expert low-RAM mode): give its
:class:`Parking` (``model_loaders.parking.DiskBacked``), and offloading it frees its weights,
activating it reads them back from the file.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping, Optional, Protocol, Union

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device]


class Parking(Protocol):
    """Frees an expert's weights (``park``) and reads them back onto a device (``restore``)."""

    def park(self) -> None: ...

    def restore(self, device: torch.device) -> nn.Module: ...


def module_device(module: nn.Module) -> Optional[torch.device]:
    """Device of a module's first parameter or buffer (None for a module without tensors)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


class ExpertResidency:
    """Moves experts so only the active one sits on ``device``.

    ``experts`` maps names ("high", "low") to modules. Plain callables without tensors (test
    models, already-placed wrappers) are left alone. Where each module sits is tracked here,
    starting from its parameters' device, so the bookkeeping does not need to re-scan weights.
    """

    def __init__(self, experts: Mapping[str, nn.Module], device: DeviceLike,
                 offload_device: DeviceLike = "cpu", parking: Optional[Mapping[str, Parking]] = None) -> None:
        self.experts = dict(experts)
        self.parking = dict(parking or {})
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.location: dict[str, Optional[torch.device]] = {
            name: module_device(m) if isinstance(m, nn.Module) else None
            for name, m in self.experts.items()}
        self.active: Optional[str] = None
        self.move_seconds: list[tuple[str, str, float]] = []   # (expert, target, seconds)

    def activate(self, name: str) -> nn.Module:
        """Make ``name`` the resident expert: offload the others first, then load it."""
        if name not in self.experts:
            raise KeyError(f"unknown expert {name!r}; have {sorted(self.experts)}")
        if self.active != name:
            target = self.experts[name]
            for other, module in self.experts.items():
                if other != name and module is not target:   # same module wired twice
                    self._leave(other)
            self._arrive(name)
            self.active = name
        return self.experts[name]

    def offload_all(self) -> None:
        """Send every expert to the offload device, or to the disk (e.g. after sampling)."""
        for name in self.experts:
            self._leave(name)
        self.active = None

    def _leave(self, name: str) -> None:
        if name not in self.parking:
            self._move(name, self.offload_device)
            return
        start = time.perf_counter()
        self.parking[name].park()
        self.location[name] = None
        self.move_seconds.append((name, "disk", time.perf_counter() - start))

    def _arrive(self, name: str) -> None:
        if name not in self.parking:
            self._move(name, self.device)
            return
        start = time.perf_counter()
        self.parking[name].restore(self.device)
        self.location[name] = self.device
        self.move_seconds.append((name, str(self.device), time.perf_counter() - start))

    def _move(self, name: str, target: torch.device) -> None:
        where = self.location.get(name)
        if where is None or _same_device(where, target):
            return
        start = time.perf_counter()
        module = self.experts[name]
        module.to(target)
        _synchronize(target, where)
        seconds = time.perf_counter() - start
        for alias, other in self.experts.items():
            if other is module:
                self.location[alias] = target
        self.move_seconds.append((name, str(target), seconds))
        logger.info("moved expert %s from %s to %s in %.3f s", name, where, target, seconds)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        index_a = a.index if a.index is not None else torch.cuda.current_device()
        index_b = b.index if b.index is not None else torch.cuda.current_device()
        return index_a == index_b
    return True


def _synchronize(*devices: torch.device) -> None:
    """Wait for the copy so the logged time is the real transfer time."""
    for device in devices:
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(device)
