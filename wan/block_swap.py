"""Block swap: run a DiT bigger than the GPU by streaming its transformer blocks from RAM.

A Wan 14B expert in bf16 is 28 GB; many cards have 12-24 GB. :class:`BlockSwap` keeps everything
that is not a transformer block (patch/text/time embeddings, head) and as many blocks as a byte
budget allows on the device, and streams the rest: while block ``i`` computes, block ``i+1`` is
copied to the device on a side CUDA stream, the compute stream waits on that copy's event before
using it, and block ``i`` is dropped from the device once the next one starts.

RAM holds one copy of the weights. The host tensors of the streamed blocks are replaced *in
place* by pinned ones the first time (``param.data = pinned``), so no pageable copy is kept
next to them and every later transfer is a real asynchronous copy. Device copies only live while
their block is in flight; at most two streamed blocks are on the device at a time, and the plan
(:func:`plan_residency`) counts them in the budget.

It implements the expert parking protocol of ``samplers/expert_residency.py`` (``park()`` /
``restore(device)``), so the sampler moves a swapped expert like any other. Inference only
(streamed parameters are swapped under autograd's feet). Works with ``wan/ops.py``'s storage
dtypes (fp8 weights and ``scale_weight`` buffers travel as stored) and with run-time LoRA
adapters: they are child modules of their Linear (``wan/lora.py``), so their buffers are part
of the block and stream with it.

On the CPU the "device copies" are plain clones, so the hook logic runs (and is tested) the same
way without a GPU.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, Union

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device]
GIB = 1024 ** 3


class BudgetTooSmall(ValueError):
    """The budget cannot hold the parts that never stream plus the blocks in flight."""


class _Parking(Protocol):
    """Another parking (``model_loaders.parking.DiskBacked``) that brings the weights to RAM."""

    def park(self) -> None: ...

    def restore(self, device: torch.device) -> nn.Module: ...


def format_bytes(n: int) -> str:
    """``n`` bytes as a short human size (binary units, as nvidia-smi counts)."""
    for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------------------------
# The plan (pure)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResidencyPlan:
    """Which blocks stay on the device and which stream from RAM, by index in execution order."""

    resident: tuple[int, ...]
    streamed: tuple[int, ...]
    other_bytes: int        # parts that are not blocks: always on the device
    resident_bytes: int     # blocks kept on the device
    in_flight_bytes: int    # room for the streamed blocks on the device at once (the two largest)
    budget: int

    @property
    def device_bytes(self) -> int:
        """Most weight bytes on the device at any time under this plan."""
        return self.other_bytes + self.resident_bytes + self.in_flight_bytes

    @property
    def swapping(self) -> bool:
        return bool(self.streamed)


def plan_residency(block_bytes: Sequence[int], other_bytes: int, budget: int) -> ResidencyPlan:
    """Keep the longest prefix of blocks resident such that the non-block part, those blocks and
    the two largest streamed blocks (current + prefetched) fit in ``budget`` bytes.

    Everything fits: nothing streams. Not even the non-block part plus two blocks fits:
    :class:`BudgetTooSmall`, saying how much is needed.
    """
    sizes = [int(b) for b in block_bytes]
    budget, other_bytes = int(budget), int(other_bytes)
    if other_bytes + sum(sizes) <= budget:
        return ResidencyPlan(tuple(range(len(sizes))), (), other_bytes, sum(sizes), 0, budget)
    for keep in range(len(sizes) - 1, -1, -1):
        flight = sum(sorted(sizes[keep:], reverse=True)[:2])
        if other_bytes + sum(sizes[:keep]) + flight <= budget:
            return ResidencyPlan(tuple(range(keep)), tuple(range(keep, len(sizes))), other_bytes,
                                 sum(sizes[:keep]), flight, budget)
    flight = sum(sorted(sizes, reverse=True)[:2])
    raise BudgetTooSmall(
        f"a budget of {format_bytes(budget)} cannot hold this model's parts that never stream "
        f"(embeddings and head: {format_bytes(other_bytes)}) plus two transformer blocks in flight "
        f"({format_bytes(flight)}); it needs at least {format_bytes(other_bytes + flight)}")


# --------------------------------------------------------------------------------------------
# Tensor slots: a parameter or buffer of one module, read and replaced in place
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Slot:
    owner: nn.Module
    name: str
    is_param: bool

    def get(self) -> torch.Tensor:
        if self.is_param:
            return self.owner._parameters[self.name].data  # type: ignore[union-attr]
        return self.owner._buffers[self.name]  # type: ignore[return-value]

    def set(self, value: torch.Tensor) -> None:
        if self.is_param:
            self.owner._parameters[self.name].data = value  # type: ignore[union-attr]
        else:
            self.owner._buffers[self.name] = value


def _slots(module: nn.Module) -> list[_Slot]:
    """Every parameter and buffer under ``module`` (LoRA adapters and fp8 scales included)."""
    out = []
    for owner in module.modules():
        out += [_Slot(owner, n, True) for n, p in owner._parameters.items() if p is not None]
        out += [_Slot(owner, n, False) for n, b in owner._buffers.items() if b is not None]
    return out


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _resolve(device: DeviceLike) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def device_free_bytes(device: torch.device, model: Optional[nn.Module] = None) -> int:
    """Bytes a model could use on a CUDA ``device``: free memory, memory PyTorch caches but does
    not use, and what ``model`` itself already holds there."""
    device = _resolve(device)
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    here = 0
    if model is not None:
        here = sum(_nbytes(s.get()) for s in _slots(model) if s.get().device == device)
    return int(free + cached + here)


@dataclass(eq=False)
class _Unit:
    """One transformer block (main or VACE): the thing that is kept or streamed."""

    name: str
    module: nn.Module
    streamed: bool = False
    slots: list[_Slot] = field(default_factory=list)
    hosts: list[torch.Tensor] = field(default_factory=list)
    copies: Optional[list[torch.Tensor]] = None     # device copies while loaded
    ready: Optional[torch.cuda.Event] = None        # the copies' event (CUDA)
    installed: bool = False                          # slots point at the copies

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(s.get()) for s in _slots(self.module))


def _units(model: nn.Module) -> list[_Unit]:
    """Blocks in the order a forward uses them: each VACE block right after its main block."""
    blocks = list(model.blocks)  # type: ignore[arg-type]
    vace = list(getattr(model, "vace_blocks", None) or [])
    layers = tuple(getattr(getattr(model, "config", None), "vace_layers", ()) or ())
    after = {layer: j for j, layer in enumerate(layers) if j < len(vace)}
    units: list[_Unit] = []
    for i, block in enumerate(blocks):
        units.append(_Unit(f"blocks.{i}", block))
        if i in after:
            units.append(_Unit(f"vace_blocks.{after[i]}", vace[after[i]]))
    placed = set(after.values())
    units += [_Unit(f"vace_blocks.{j}", b) for j, b in enumerate(vace) if j not in placed]
    return units


# --------------------------------------------------------------------------------------------
# BlockSwap
# --------------------------------------------------------------------------------------------

class BlockSwap:
    """Parking for a DiT (``model.blocks``, optional ``model.vace_blocks``) that streams the
    blocks that do not fit ``budget`` bytes of device memory.

    ``budget=None`` measures it at each :meth:`restore`: the device's free memory (plus what
    PyTorch caches and what the model already holds there) minus ``reserve`` bytes left for
    activations. ``inner``: a parking that holds the weights while parked (e.g. ``DiskBacked``);
    it is restored to the CPU first and parked after.
    """

    def __init__(self, model: nn.Module, budget: Optional[int] = None, *, reserve: int = 0,
                 inner: Optional[_Parking] = None, name: str = "DiT") -> None:
        if not isinstance(getattr(model, "blocks", None), nn.ModuleList):
            raise TypeError(f"BlockSwap needs a model with a 'blocks' ModuleList; got {type(model).__name__}")
        if budget is not None and budget <= 0:
            raise ValueError(f"BlockSwap: budget must be a positive number of bytes, got {budget}")
        self.model, self.budget, self.reserve, self.inner, self.name = model, budget, reserve, inner, name
        self.units = _units(model)
        self.plan: Optional[ResidencyPlan] = None
        self.device: Optional[torch.device] = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._side: Optional[torch.cuda.Stream] = None
        self._pin = False
        self._plain = [u for u in self.units if u.name.startswith("blocks.")]
        self._vace = ([u for u in self.units if u.name == "vace_blocks.0"] + self.units
                      if len(self._plain) < len(self.units) else self._plain)
        self._sequence = self._plain
        self._cursor = 0

    # ---- the parking protocol -------------------------------------------------------------

    @torch.no_grad()
    def restore(self, device: DeviceLike) -> nn.Module:
        """Non-block parts and the resident blocks to ``device``; the rest pinned in RAM and
        streamed by forward hooks. Returns the model."""
        device = _resolve(device)
        self._detach()
        if self.inner is not None:
            self.inner.restore(torch.device("cpu"))
        slots = _slots(self.model)
        if any(slot.get().device.type == "meta" for slot in slots):
            raise ValueError(f"{self.name}: the weights are not loaded (meta tensors: parked on disk?); "
                             "give that parking to BlockSwap as inner= so it reads them back first")
        budget = self._budget_for(device)
        self.plan = plan = self.plan_for(budget)
        self.device = device
        self._pin = device.type == "cuda"
        for i, unit in enumerate(self.units):
            unit.streamed = i in plan.streamed
        streamed = {id(m) for u in self.units if u.streamed for m in u.module.modules()}
        for slot in slots:  # streamed blocks leave the device first, making room for the rest
            if id(slot.owner) in streamed:
                self._host(slot)
        for slot in slots:
            if id(slot.owner) not in streamed and slot.get().device != device:
                slot.set(slot.get().to(device))
        if plan.swapping:
            self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
            self._attach()
        log.info("%s: %d of %d blocks on %s, %d streamed from pinned RAM (%s on the device of a "
                 "%s budget)", self.name, len(plan.resident), len(self.units), device,
                 len(plan.streamed), format_bytes(plan.device_bytes), format_bytes(budget))
        return self.model

    @torch.no_grad()
    def park(self) -> None:
        """Remove the hooks and bring every weight back to the CPU (streamed blocks are there
        already, pinned: they stay so for the next restore)."""
        self._detach()
        for slot in _slots(self.model):
            tensor = slot.get()
            if tensor.device.type not in ("cpu", "meta"):
                slot.set(tensor.to("cpu"))
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # the side stream's cached blocks are not reusable by others
        self.device, self._side = None, None
        if self.inner is not None:
            self.inner.park()

    # ---- introspection ---------------------------------------------------------------------

    def plan_for(self, budget: int) -> ResidencyPlan:
        """What :meth:`restore` would keep and stream under ``budget`` (raises BudgetTooSmall)."""
        sizes = [u.nbytes for u in self.units]
        total = sum(_nbytes(slot.get()) for slot in _slots(self.model))
        return plan_residency(sizes, total - sum(sizes), budget)

    @property
    def loaded(self) -> list[str]:
        """Names of the streamed blocks on the device right now (at most two)."""
        return [u.name for u in self.units if u.streamed and u.copies is not None]

    @property
    def hooked(self) -> bool:
        return bool(self._hooks)

    # ---- placement helpers -----------------------------------------------------------------

    def _budget_for(self, device: torch.device) -> int:
        if self.budget is not None:
            return self.budget
        if device.type != "cuda":
            raise ValueError(f"{self.name}: BlockSwap without a budget measures a CUDA device's free "
                             f"memory; give a budget for {device}")
        return max(0, device_free_bytes(device, self.model) - self.reserve)

    def _host(self, slot: _Slot) -> torch.Tensor:
        """The slot's RAM tensor, pinned once in place when pinning is possible."""
        tensor = slot.get()
        if tensor.device.type == "cpu" and (not self._pin or tensor.is_pinned()):
            return tensor
        try:
            if tensor.device.type == "cpu":
                host = tensor.pin_memory()
            else:
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self._pin).copy_(tensor)
        except RuntimeError as exc:  # no page-locked memory left (ulimit -l, WSL): stream pageable
            if not self._pin:
                raise
            log.warning("%s: cannot pin RAM (%s); streaming from pageable memory, which is slower",
                        self.name, str(exc).splitlines()[0])
            self._pin = False
            return self._host(slot)
        slot.set(host)
        return host

    # ---- hooks ------------------------------------------------------------------------------

    def _attach(self) -> None:
        model = self.model
        self._hooks.append(model.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._end, always_call=True))
        for unit in self.units:
            self._hooks.append(unit.module.register_forward_pre_hook(self._enter_hook(unit)))
        first_vace = next((u for u in self.units if u.name == "vace_blocks.0"), None)
        before = getattr(first_vace.module, "before_proj", None) if first_vace else None
        if isinstance(before, nn.Module):  # VaceBlock.start() runs before_proj outside forward()
            self._hooks.append(before.register_forward_pre_hook(self._enter_hook(first_vace)))

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._release_all()
        if self._side is not None:
            self._side.synchronize()

    def _enter_hook(self, unit: _Unit):
        def hook(module: nn.Module, args: tuple) -> None:
            self._enter(unit)
        return hook

    def _begin(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Model forward starts: pick this forward's block order, prefetch its first block."""
        self._release_all()
        vace = kwargs.get("vace_context")
        with_vace = vace is not None and (torch.is_tensor(vace) or len(vace) > 0)
        self._sequence, self._cursor = (self._vace if with_vace else self._plain), 0
        if self._sequence and self._sequence[0].streamed:
            self._load(self._sequence[0])

    def _end(self, module: nn.Module, args: tuple, output: object) -> None:
        self._release_all()
        self._cursor = 0

    def _enter(self, unit: _Unit) -> None:
        """A block starts: keep it and the next one, drop the others, wait for it, prefetch next."""
        position = self._find(unit)
        sequence = self._sequence
        following = (sequence[position + 1]
                     if position is not None and position + 1 < len(sequence) else None)
        for other in self.units:
            if other.copies is not None and other is not unit and other is not following:
                self._release(other)
        if unit.streamed:
            self._use(unit)
        if following is not None and following.streamed and following.copies is None:
            self._load(following)

    def _find(self, unit: _Unit) -> Optional[int]:
        n = len(self._sequence)
        for position in itertools.chain(range(self._cursor, n), range(0, self._cursor)):
            if self._sequence[position] is unit:
                self._cursor = position
                return position
        return None

    # ---- moving one block ---------------------------------------------------------------------

    def _load(self, unit: _Unit) -> None:
        """Start copying ``unit`` to the device (side stream on CUDA)."""
        assert self.device is not None
        unit.slots = _slots(unit.module)
        unit.hosts = [self._host(slot) for slot in unit.slots]
        if self._side is not None:
            # Memory of released blocks is reused by this stream only: wait until the compute
            # stream is done with them before overwriting it.
            self._side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._side):
                unit.copies = [h.to(self.device, non_blocking=True) for h in unit.hosts]
            unit.ready = torch.cuda.Event()
            unit.ready.record(self._side)
        elif self.device.type == "cpu":
            unit.copies = [h.clone() for h in unit.hosts]
        else:
            unit.copies = [h.to(self.device) for h in unit.hosts]

    def _use(self, unit: _Unit) -> None:
        """Make the compute stream wait for ``unit``'s copy and point its weights at it."""
        if unit.copies is None:
            self._load(unit)
        if unit.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(unit.ready)
            unit.ready = None
        if not unit.installed:
            for slot, copy in zip(unit.slots, unit.copies or ()):
                slot.set(copy)
            unit.installed = True

    def _release(self, unit: _Unit) -> None:
        """Point ``unit``'s weights back at RAM and drop its device copies."""
        if unit.installed:
            for slot, host, copy in zip(unit.slots, unit.hosts, unit.copies or ()):
                now = slot.get()
                if now.device == copy.device and now.data_ptr() == copy.data_ptr():
                    slot.set(host)
                else:  # replaced while on the device (a merged LoRA re-baked): keep the new value
                    self._host(slot)
        unit.slots, unit.hosts, unit.copies, unit.ready, unit.installed = [], [], None, None, False

    def _release_all(self) -> None:
        for unit in self.units:
            if unit.copies is not None:
                self._release(unit)
