"""Applying LoRA stacks to a live Wan model, unmerged (run-time adapters) or merged.

* **Unmerged** (default): each patched ``ops.Linear`` gets a callable in ``Linear.adapters``
  (also a child module, so ``.to()`` moves it) that adds ``Σ strength · scale · up(down(x))``
  over the stack's LoRAs to its output, accumulated in place into that output. The base weight is never copied or touched, so it works
  on bf16, fp8 and scaled-fp8 weights alike, and a strength change is read at the next call.
* **Merged**: the deltas are added into the stored weights (dequantised to fp32, patched,
  stored back in the weight's own dtype; fp8 is re-quantised with round-to-nearest, growing
  ``scale_weight`` if a patched value would leave the fp8 range). The original tensors are
  backed up (on CPU by default) and restored bit-exactly by :meth:`AppliedLoras.remove`.
  Block-quantized (GGUF) layers always take run-time adapters: re-quantising them would lose
  the LoRA in the rounding.

Targets that are not ``ops.Linear`` (norms, ``modulation`` parameters, convs) are always baked
with a backup, in both modes; they are small.

A model sharded across ranks (FSDP2, ``distributed/fsdp.py``) takes both: adapters sit outside
the sharded weights, and a baked tensor is patched in place in this rank's shard (the backup is
that shard), so the shards FSDP gathers carry the patch.

A :class:`LoraStack` holds any number of LoRAs, each with a strength for the Wan 2.2 high-noise
expert and one for the low-noise expert (single-expert models use the ``"high"`` slot). Changing
a strength with :meth:`LoraStack.set_strength` updates every model the stack is applied to,
without reloading anything.

Every application reports, per LoRA, how many of its file keys matched this model. No match at
all raises :class:`LoraMismatchError` saying why; a partial match logs a warning listing the
keys that were not applied.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import logging
import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:  # sharded (FSDP2) weights are DTensors; a torch without them cannot shard, so nothing is one
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover - older or distributed-less torch builds
    class DTensor:  # type: ignore[no-redef]
        """Stand-in that no tensor is an instance of."""

from . import gguf_ops, ops
from ..model_loaders.lora_formats import (FullDiff, LowRank, ParsedLora, TargetPatch, WeightPatch,
                                          describe_foreign, lora_width, parse_lora, select_expert,
                                          width_name)

log = logging.getLogger(__name__)

Expert = Literal["high", "low"]
Mode = Literal["unmerged", "merged"]
EXPERTS: tuple[Expert, ...] = ("high", "low")
LoraSource = Union[ParsedLora, Mapping[str, torch.Tensor]]

# Modules that exist only in the Wan 2.1 CLIP image branch (absent from Wan 2.2 and T2V models).
_CLIP_BRANCH = re.compile(r"(cross_attn\.(k_img|v_img|norm_k_img)|^img_emb\.)")


class LoraMismatchError(ValueError):
    """A LoRA that matches no module of the model it is applied to."""


# --------------------------------------------------------------------------------------------
# Matching a parsed LoRA against a model
# --------------------------------------------------------------------------------------------

@dataclass
class MatchReport:
    """How much of one LoRA file applies to one model."""

    name: str
    matched_keys: int
    total_keys: int
    matched_targets: list[str]
    unmatched: dict[str, str]  # file key -> reason

    def __str__(self) -> str:
        return (f"LoRA {self.name!r}: {self.matched_keys}/{self.total_keys} keys matched "
                f"({len(self.matched_targets)} modules)")


def target_names(model: nn.Module) -> list[str]:
    """Every module and parameter path of ``model``: what a LoRA key may name."""
    return [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]


@dataclass
class _Slot:
    """One stored tensor a patch changes: ``getattr(owner, attr)``."""

    owner: nn.Module
    attr: str

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)


def _resolve(model: nn.Module, target: str) -> tuple[Optional[nn.Module], Optional[_Slot]]:
    """``(module, None)`` for a module path, ``(None, slot)`` for a bare parameter path."""
    try:
        return model.get_submodule(target), None
    except AttributeError:
        pass
    owner_path, _, attr = target.rpartition(".")
    try:
        owner = model.get_submodule(owner_path) if owner_path else model
    except AttributeError:
        return None, None
    if isinstance(getattr(owner, attr, None), torch.Tensor):
        return None, _Slot(owner, attr)
    return None, None


def _weight_mismatch(patch: WeightPatch, shape: tuple[int, ...]) -> Optional[str]:
    if tuple(patch.shape) == tuple(shape):
        return None
    if isinstance(patch, FullDiff) and patch.diff.numel() == math.prod(shape):
        return None
    return f"shape {tuple(patch.shape)} does not fit this model's {tuple(shape)}"


def _check(model: nn.Module, target: str, patch: TargetPatch) -> Optional[str]:
    """Why ``patch`` cannot apply to ``target`` of ``model``, or None when it can."""
    module, slot = _resolve(model, target)
    if module is None and slot is None:
        return f"this model has no module {target!r}"
    if slot is not None:
        if patch.bias is not None:
            return f"{target!r} is a parameter; it has no bias to patch"
        reasons = [_weight_mismatch(w, tuple(slot.tensor.shape)) for w in patch.weights]
        return next((r for r in reasons if r), None)
    if patch.weights:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return f"module {target!r} has no weight"
        for w in patch.weights:
            reason = _weight_mismatch(w, tuple(gguf_ops.weight_shape(module)))
            if reason:
                return f"{target}: {reason}"
    if patch.bias is not None:
        bias = getattr(module, "bias", None)
        if not isinstance(bias, torch.Tensor):
            return f"module {target!r} has no bias"
        if bias.numel() != patch.bias.numel():
            return f"{target}: bias delta of {patch.bias.numel()} values, the bias has {bias.numel()}"
    return None


def _model_width(model: nn.Module) -> Optional[int]:
    dim = getattr(getattr(model, "config", None), "dim", None)
    if dim is None:
        for name, module in model.named_modules():
            if name.endswith("self_attn.q") and hasattr(module, "weight"):
                return gguf_ops.weight_shape(module)[1]
    return dim


def _explain_no_match(model: nn.Module, name: str, parsed: ParsedLora,
                      unmatched: Mapping[str, str]) -> str:
    head = f"LoRA {name!r}: none of its {parsed.total_keys} keys apply to this model"
    foreign = describe_foreign(unmatched)
    if foreign:
        return f"{head}: {foreign}."
    made_for, model_dim = lora_width(parsed), _model_width(model)
    if made_for and model_dim and made_for != model_dim:
        return f"{head}: it was made for a {width_name(made_for)} model; this model is {width_name(model_dim)}."
    if parsed.patches and all(_CLIP_BRANCH.search(t) for t in parsed.patches):
        return (f"{head}: it only patches the Wan 2.1 CLIP image branch (k_img/v_img/img_emb), "
                "which this model does not have.")
    if parsed.patches and all(t.startswith("vace_") for t in parsed.patches):
        return f"{head}: it only patches VACE blocks (vace_blocks.N), and this is not a VACE model."
    sample = ", ".join(list(unmatched)[:5])
    reasons = sorted(set(unmatched.values()))[:3]
    return (f"{head}. Dialects seen: {', '.join(sorted(parsed.dialects))}. First keys: {sample}. "
            f"Reasons: {'; '.join(reasons)}.")


def match_lora(model: nn.Module, parsed: ParsedLora, name: str) -> tuple[dict[str, TargetPatch], MatchReport]:
    """The patches of ``parsed`` that fit ``model``, and the report; raises when none fit."""
    matched: dict[str, TargetPatch] = {}
    unmatched: dict[str, str] = dict(parsed.unparsed)
    for target, patch in parsed.patches.items():
        reason = _check(model, target, patch)
        if reason is None:
            matched[target] = patch
        else:
            unmatched.update({key: reason for key in patch.keys})
    if not matched:
        raise LoraMismatchError(_explain_no_match(model, name, parsed, unmatched))
    report = MatchReport(name=name, matched_keys=sum(len(p.keys) for p in matched.values()),
                         total_keys=parsed.total_keys, matched_targets=sorted(matched),
                         unmatched=unmatched)
    if unmatched:
        log.warning("%s; not applied:\n%s%s", report, _list_unmatched(unmatched),
                    _clip_branch_note(unmatched))
    else:
        log.info("%s", report)
    return matched, report


def _list_unmatched(unmatched: Mapping[str, str], limit: int = 40) -> str:
    lines = [f"  {key}: {reason}" for key, reason in list(unmatched.items())[:limit]]
    if len(unmatched) > limit:
        lines.append(f"  ... and {len(unmatched) - limit} more")
    return "\n".join(lines)


def _clip_branch_note(unmatched: Mapping[str, str]) -> str:
    if any(_CLIP_BRANCH.search(k) for k in unmatched):
        return ("\n  (k_img/v_img/norm_k_img/img_emb keys belong to the Wan 2.1 CLIP image branch; "
                "missing on Wan 2.2 and T2V models, so expected when using a Wan 2.1 I2V LoRA there)")
    return ""


# --------------------------------------------------------------------------------------------
# Run-time adapters (unmerged mode)
# --------------------------------------------------------------------------------------------

Strength = Callable[[], float]


def _add_product(y: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``y += a @ weightᵀ`` in place over the last dimension; ``y`` is a Linear's fresh output.

    One ``addmm_`` accumulates the product into ``y`` (a single GEMM with β = 1) instead of
    materialising it and adding it in a second pass over the output.
    """
    if not y.is_contiguous():
        y = y.contiguous()
    y.view(-1, y.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), weight.t())
    return y


class LowRankAdapter(nn.Module):
    """``y += Σᵢ strengthᵢ · scaleᵢ · upᵢ(downᵢ(x))`` for every low-rank patch on one Linear.

    The factors of all the stack's LoRAs on this layer are concatenated along the rank, so a
    stack costs two thin matmuls per layer however many LoRAs it holds; the second one
    accumulates straight into the layer's output (``addmm_``), so no output-sized temporary is
    made and no separate add pass runs. Strengths are read at each call (cheap: a per-rank scale
    vector is rebuilt only when they change).

    Adapters are also registered as child modules of their Linear (non-persistent buffers, so
    state dicts are unchanged): moving the model with ``.to()`` moves them along.
    """

    def __init__(self, patches: list[tuple[LowRank, Strength]], device: torch.device) -> None:
        super().__init__()
        downs = [p.down.flatten(1) for p, _ in patches]
        ups = [p.up.flatten(1) for p, _ in patches]
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in downs + ups])
        down = downs[0] if len(downs) == 1 else torch.cat([t.to(dtype) for t in downs])
        up = ups[0] if len(ups) == 1 else torch.cat([t.to(dtype) for t in ups], dim=1)
        self.register_buffer("down", down.to(device), persistent=False)
        self.register_buffer("up", up.to(device), persistent=False)
        self.ranks = [p.rank for p, _ in patches]
        self.scales = [p.scale for p, _ in patches]
        self.strengths = [strength for _, strength in patches]
        self._rank_scale: Optional[torch.Tensor] = None
        self._rank_scale_key: Optional[tuple] = None

    def rank_scale(self, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """``strength · scale`` of each LoRA, repeated over its rank; None when all are zero."""
        factors = tuple(strength() * scale for strength, scale in zip(self.strengths, self.scales))
        if not any(factors):
            return None
        key = (factors, device, dtype)
        if key != self._rank_scale_key:
            per_rank = torch.repeat_interleave(torch.tensor(factors), torch.tensor(self.ranks))
            self._rank_scale, self._rank_scale_key = per_rank.to(device, dtype), key
        return self._rank_scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rank_scale = self.rank_scale(x.device, x.dtype)
        if rank_scale is None:
            return y
        h = F.linear(x, self.down.to(x.device, x.dtype)).mul_(rank_scale)
        return _add_product(y, h, self.up.to(x.device, x.dtype))


class DenseAdapter(nn.Module):
    """``y += strength · x @ ΔWᵀ`` for LoHa, LoKr and full ``.diff`` patches on a Linear.

    The delta is rebuilt from the patch's own (small, for LoHa/LoKr) factors at each call rather
    than kept as a second full-size weight.
    """

    def __init__(self, patch: WeightPatch, strength: Strength, device: torch.device) -> None:
        super().__init__()
        self.template = patch
        self.tensor_fields = [f.name for f in dataclasses.fields(patch)
                              if isinstance(getattr(patch, f.name), torch.Tensor)]
        for name in self.tensor_fields:
            self.register_buffer(name, getattr(patch, name).to(device), persistent=False)
        self.strength = strength

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.strength()
        if s == 0:
            return y
        patch = dataclasses.replace(self.template, **{n: getattr(self, n) for n in self.tensor_fields})
        delta = patch.delta(x.device)
        return _add_product(y, x, (delta.reshape(delta.shape[0], -1) * s).to(x.dtype))


class BiasAdapter(nn.Module):
    """``y += strength · diff_b``: a bias delta, added to a Linear's output."""

    def __init__(self, diff_b: torch.Tensor, strength: Strength, device: torch.device) -> None:
        super().__init__()
        self.register_buffer("diff_b", diff_b.to(device).flatten(), persistent=False)
        self.strength = strength

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.strength()
        if s == 0:
            return y
        return y.add_(self.diff_b.to(x.device, x.dtype), alpha=s)


Adapter = Union[LowRankAdapter, DenseAdapter, BiasAdapter]


# --------------------------------------------------------------------------------------------
# Baking deltas into stored tensors (merged mode, and non-Linear targets in both modes)
# --------------------------------------------------------------------------------------------

# (strength, device -> fp32 delta without the strength)
Delta = tuple[Strength, Callable[[torch.device], torch.Tensor]]


@dataclass
class _Baked:
    """A stored tensor with deltas baked in, and what restores it exactly."""

    slot: _Slot
    deltas: list[Delta]
    original: torch.Tensor  # backup of the stored tensor
    original_scale: Optional[torch.Tensor]  # backup of ops' scaled-fp8 ``scale_weight``


def _scale_of(slot: _Slot) -> Optional[torch.Tensor]:
    if slot.attr == "weight" and isinstance(slot.owner, ops.CastWeights):
        return getattr(slot.owner, "scale_weight", None)
    return None


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a weight sharded across ranks (a ``DTensor``); a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _local_part(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (shaped like ``param``'s whole tensor) that this rank's shard holds."""
    if not isinstance(param, DTensor):
        return full
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return full[tuple(slice(start, start + size) for start, size in zip(offset, shape))]


def _write(param: torch.Tensor, value: torch.Tensor) -> None:
    """Replace a stored tensor's values; a shard in place, so FSDP's storage keeps them."""
    if isinstance(param, DTensor):
        with torch.no_grad():
            param.to_local().copy_(value)
    else:
        param.data = value


def _store(slot: _Slot, value: torch.Tensor, scale: Optional[torch.Tensor]) -> None:
    """Write fp32 ``value`` (this rank's part of the slot) into the slot in its storage dtype
    (re-quantising fp8)."""
    param = slot.tensor
    dtype = param.dtype
    if dtype in ops.FP8_DTYPES:
        fp8_max = torch.finfo(dtype).max
        if scale is not None:
            needed = (value.abs().amax() if value.numel() else value.new_zeros(())) / fp8_max  # a shard may be empty
            if isinstance(param, DTensor):  # one scale for the whole weight: every shard's largest
                dist.all_reduce(needed, op=dist.ReduceOp.MAX, group=param.device_mesh.get_group())
            if scale.numel() == 1 and bool(needed > scale):
                scale = needed.reshape(scale.shape).to(scale.dtype)
                slot.owner.set_scale_weight(scale)
            value = value / scale.to(value.device)
        value = value.clamp(-fp8_max, fp8_max)
    _write(param, value.to(dtype))


def _bake(baked: _Baked) -> None:
    """Recompute the slot from its backup plus the current strength-weighted deltas."""
    active = [(s, d) for strength, d in baked.deltas if (s := strength()) != 0]
    _restore(baked)
    if not active:
        return
    stored = baked.slot.tensor  # the backup, back on the model's device
    original = local_tensor(stored)
    scale = None if baked.original_scale is None else baked.original_scale.to(original.device)
    value = ops.dequantize(original, torch.float32, scale)
    for s, delta in active:
        value = value + s * _local_part(delta(original.device).reshape(stored.shape), stored)
    _store(baked.slot, value, scale)


def _restore(baked: _Baked) -> None:
    param = baked.slot.tensor
    _write(param, baked.original.to(local_tensor(param).device, copy=True))
    if baked.original_scale is not None:
        baked.slot.owner.set_scale_weight(baked.original_scale.to(param.device))


# --------------------------------------------------------------------------------------------
# Stacks and their applications
# --------------------------------------------------------------------------------------------

@dataclass
class StackedLora:
    """One LoRA in a stack: its patches for each expert and a strength for each."""

    name: str
    high: Optional[LoraSource]
    low: Optional[LoraSource]
    strength_high: float = 1.0
    strength_low: float = 1.0
    default_alpha: Optional[float] = None

    def source(self, expert: Expert) -> Optional[LoraSource]:
        return self.high if expert == "high" else self.low

    def strength(self, expert: Expert) -> float:
        return self.strength_high if expert == "high" else self.strength_low


# Set on a model while a stack is applied to it: baked backups only restore correctly when one
# application at a time owns the model.
_APPLIED_ATTR = "_wanflow_applied_loras"


class LoraStack:
    """Any number of LoRAs, each with a high-noise and a low-noise strength.

    ``add(name, high=sd, low=sd)`` takes one file for both experts (the same object twice), a
    high/low pair, or only one of them (the other expert gets nothing).
    """

    def __init__(self) -> None:
        self.loras: list[StackedLora] = []
        self._applied: list[AppliedLoras] = []

    def add(self, name: str, *, high: Optional[LoraSource], low: Optional[LoraSource],
            strength_high: float = 1.0, strength_low: float = 1.0,
            default_alpha: Optional[float] = None) -> StackedLora:
        if high is None and low is None:
            raise ValueError(f"LoRA {name!r}: give a LoRA for the high expert, the low expert or both")
        for expert, source in (("high", high), ("low", low)):
            if source is not None and not isinstance(source, (ParsedLora, collections.abc.Mapping)):
                raise TypeError(f"LoRA {name!r}: {expert}= must be a state dict of tensors (e.g. "
                                f"read_lora_file(path).state_dict) or a ParsedLora, got "
                                f"{type(source).__name__}")
        if any(entry.name == name for entry in self.loras):
            raise ValueError(f"LoRA {name!r} is already in the stack; names must be unique")
        entry = StackedLora(name, high, low, float(strength_high), float(strength_low), default_alpha)
        self.loras.append(entry)
        return entry

    def set_strength(self, name: str, *, high: Optional[float] = None, low: Optional[float] = None) -> None:
        """Change strengths in place; every live application picks them up without reloading."""
        entry = self._entry(name)
        if high is not None:
            entry.strength_high = float(high)
        if low is not None:
            entry.strength_low = float(low)
        for applied in self._applied:
            applied.refresh()

    def _entry(self, name: str) -> StackedLora:
        for entry in self.loras:
            if entry.name == name:
                return entry
        raise KeyError(f"no LoRA named {name!r} in the stack; have {[e.name for e in self.loras]}")

    def apply(self, model: nn.Module, expert: Expert = "high", mode: Mode = "unmerged",
              backup_device: Union[str, torch.device] = "cpu") -> AppliedLoras:
        """Patch ``model`` (the DiT of ``expert``) with every LoRA of the stack."""
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        if mode not in ("unmerged", "merged"):
            raise ValueError(f"mode must be 'unmerged' or 'merged', got {mode!r}")
        if getattr(model, _APPLIED_ATTR, None) is not None:
            raise RuntimeError("this model already has a LoRA stack applied; remove() it first "
                               "(one stack per model; a stack holds any number of LoRAs)")
        applied = AppliedLoras(self, model, expert, mode, torch.device(backup_device))
        self._applied.append(applied)
        setattr(model, _APPLIED_ATTR, applied)
        return applied


class AppliedLoras:
    """A stack applied to one model; :meth:`remove` undoes it exactly."""

    def __init__(self, stack: LoraStack, model: nn.Module, expert: Expert, mode: Mode,
                 backup_device: torch.device) -> None:
        self.stack, self.model, self.expert, self.mode = stack, model, expert, mode
        self.reports: list[MatchReport] = []
        self._adapters: list[tuple[ops.Linear, str, Adapter]] = []
        self._baked: dict[tuple[int, str], _Baked] = {}
        self._backup_device = backup_device
        names: Optional[list[str]] = None
        low_rank: dict[int, tuple[ops.Linear, list[tuple[LowRank, Strength]]]] = {}
        try:
            for entry in stack.loras:
                source = entry.source(expert)
                if source is None:
                    continue
                if not isinstance(source, ParsedLora):
                    names = names or target_names(model)
                    source = parse_lora(select_expert(source, expert), names, entry.default_alpha)
                patches, report = match_lora(model, source, entry.name)
                self.reports.append(report)
                strength = (lambda e=entry: e.strength(expert))
                for target, patch in patches.items():
                    self._install(target, patch, strength, low_rank)
            for module, stacked in low_rank.values():
                self._add_adapter(module, LowRankAdapter(stacked, module.weight.device))
            for baked in self._baked.values():
                _bake(baked)
        except Exception:
            self.remove()
            raise

    def _install(self, target: str, patch: TargetPatch, strength: Strength,
                 low_rank: dict[int, tuple[ops.Linear, list[tuple[LowRank, Strength]]]]) -> None:
        """Attach one LoRA's patch of ``target``; low-rank parts are collected in ``low_rank``
        (per Linear, across the stack) to become one :class:`LowRankAdapter` per layer."""
        module, slot = _resolve(self.model, target)
        if slot is not None:  # a bare parameter such as blocks.N.modulation
            for weight in patch.weights:
                self._add_delta(slot, strength, weight.delta)
            return
        as_adapter = isinstance(module, ops.Linear) and (self.mode == "unmerged" or gguf_ops.is_quantized(module))
        device = module.weight.device
        for weight in patch.weights:
            if not as_adapter:
                self._add_delta(_Slot(module, "weight"), strength, weight.delta)
            elif isinstance(weight, LowRank):
                low_rank.setdefault(id(module), (module, []))[1].append((weight, strength))
            else:
                self._add_adapter(module, DenseAdapter(weight, strength, device))
        if patch.bias is not None:
            if as_adapter:
                self._add_adapter(module, BiasAdapter(patch.bias, strength, device))
            else:
                bias = patch.bias
                self._add_delta(_Slot(module, "bias"), strength, lambda device: bias.to(device).float())

    def _add_adapter(self, module: ops.Linear, adapter: Adapter) -> None:
        index = 0
        while f"lora_adapter_{index}" in module._modules:
            index += 1
        name = f"lora_adapter_{index}"
        module.add_module(name, adapter)  # so module.to() moves it
        module.adapters.append(adapter)
        self._adapters.append((module, name, adapter))

    def _add_delta(self, slot: _Slot, strength: Strength,
                   delta: Callable[[torch.device], torch.Tensor]) -> None:
        key = (id(slot.owner), slot.attr)
        if key not in self._baked:
            scale = _scale_of(slot)
            self._baked[key] = _Baked(
                slot, [], local_tensor(slot.tensor).detach().to(self._backup_device, copy=True),
                None if scale is None else scale.detach().to(self._backup_device, copy=True))
        self._baked[key].deltas.append((strength, delta))

    def refresh(self) -> None:
        """Re-read the stack's strengths (adapters read them per call; baked tensors are redone)."""
        for baked in self._baked.values():
            _bake(baked)

    def remove(self) -> None:
        """Take every adapter out and restore every baked tensor bit-exactly."""
        for module, name, adapter in self._adapters:
            module.adapters[:] = [a for a in module.adapters if a is not adapter]
            del module._modules[name]
        self._adapters.clear()
        for baked in self._baked.values():
            _restore(baked)
        self._baked.clear()
        if self in self.stack._applied:
            self.stack._applied.remove(self)
        if getattr(self.model, _APPLIED_ATTR, None) is self:
            setattr(self.model, _APPLIED_ATTR, None)

    def __enter__(self) -> AppliedLoras:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
