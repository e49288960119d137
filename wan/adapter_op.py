"""A Linear's run-time LoRA adapters as one opaque op, so compiled graphs never see them.

``torch.compile`` guards on the Python state it traces. Traced adapters would make every LoRA
strength a guarded constant and the stack's structure (which layers, ranks, LoHa or LoKr) part
of the graph, so moving a strength slider or adding a LoRA would recompile every block.

Inside a compiled region, :class:`~.ops.Linear` therefore calls the custom op
``<namespace>::run_adapters_(x, y, key)`` instead: it receives the layer's input, its fresh
output (mutated in place, as the adapters do in eager mode) and a 0-d int64 CPU tensor naming
the layer in a registry. The op runs the layer's current adapters eagerly. The graph holds the
same op whatever the stack is, and a tensor's value is never guarded, so one graph serves every
block, every strength and every stack. Keys stay on the CPU (a plain attribute, not a buffer:
``model.to("cuda")`` leaves it), so reading one never waits for the GPU.

Only inference is served: the op has no autograd formula, and :mod:`.compile` runs blocks
eagerly whenever autograd is on.
"""
from __future__ import annotations

import itertools
import re
import weakref
from typing import Optional

import torch
import torch.nn as nn

KEY_ATTR = "adapter_key"
"""Attribute of a registered Linear: its key, a 0-d int64 CPU tensor."""

_registry: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_next_key = itertools.count(1)

# The pack may be imported under another name (ComfyUI imports it by folder name); each copy
# gets its own op namespace so the two never share a registry.
_NAMESPACE = re.sub(r"\W", "_", (__package__ or "wanflow").split(".")[0])
_OP_NAME = f"{_NAMESPACE}::run_adapters_"


def register(linear: nn.Module) -> None:
    """Give ``linear`` a key its compiled calls can name it by (again, if it was copied)."""
    key = getattr(linear, KEY_ATTR, None)
    if key is not None and _registry.get(int(key)) is linear:
        return
    number = next(_next_key)
    _registry[number] = linear
    # a plain attribute, not a buffer; explicit device: models are often built on "meta"
    setattr(linear, KEY_ATTR, torch.tensor(number, dtype=torch.int64, device="cpu"))


def registered(linear: nn.Module) -> bool:
    key = getattr(linear, KEY_ATTR, None)
    return key is not None and _registry.get(int(key)) is linear


def _run_adapters(x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> None:
    linear = _registry.get(int(key))
    if linear is None:
        raise RuntimeError("a compiled WanFlow block called a Linear layer that is no longer "
                           "registered; compile the model again (wan.compiled_blocks.compile_blocks)")
    out = y
    for adapter in linear.adapters:  # type: ignore[attr-defined]
        out = adapter(x, out)
    if out is not y:  # an adapter that could not add in place (non-contiguous output)
        y.copy_(out)


def _run_adapters_fake(x: torch.Tensor, y: torch.Tensor, key: torch.Tensor) -> None:
    return None


# Defined with torch.library.Library rather than the custom_op decorator: a call costs about 5 us
# instead of 25, which matters on small models (ten calls per block per step).
_LIBRARY = torch.library.Library(_NAMESPACE, "FRAGMENT")
_LIBRARY.define("run_adapters_(Tensor x, Tensor(a!) y, Tensor key) -> ()")
_LIBRARY.impl("run_adapters_", _run_adapters, "CompositeExplicitAutograd")
torch.library.register_fake(_OP_NAME, _run_adapters_fake, lib=_LIBRARY)
run_adapters_ = getattr(torch.ops, _NAMESPACE).run_adapters_.default


def apply_adapters(linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` with every adapter's delta added: inline in eager mode, through the op when traced."""
    key: Optional[torch.Tensor] = getattr(linear, KEY_ATTR, None)
    if key is not None and torch.compiler.is_compiling():
        run_adapters_(x, y, key)
        return y
    for adapter in linear.adapters:  # type: ignore[attr-defined]
        y = adapter(x, y)
    return y
