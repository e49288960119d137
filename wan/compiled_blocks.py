"""Regional ``torch.compile`` of the DiT: one compiled function serves every transformer block.

Compiling the whole DiT takes minutes and recompiles on any change; the blocks are where the time
goes and they are all alike. :func:`compile_blocks` gives each block of ``model.blocks`` (and
``model.vace_blocks``) an instance-level ``forward`` that calls one shared compiled function,
``type(block).forward(block, ...)``. Block parameters are graph inputs (never constants), so the
first block's graph serves the other 39; a VACE model adds one graph for its VACE blocks.

What never recompiles, and why:

* **LoRA strengths and stacks.** Adapters run inside the opaque op of :mod:`.adapter_op`; the graph
  holds one op call per Linear whatever the stack, and never reads a strength.
* **Merged LoRAs and the low-RAM reload** change weight values, not shapes or dtypes.
* **Expert switches.** Both Wan 2.2 experts have identical block shapes, and the graph is
  shared, so the second expert reuses the first one's code.

What does recompile: a new latent size, batch (batched CFG or not) or compute dtype, since
dynamic shapes are off by default (one specialised graph per size is fastest; dynamo keeps up to
``torch._dynamo.config.recompile_limit`` of them, 8, then runs new sizes eagerly). Pass
``CompileSettings(dynamic=True)`` for a session that changes sizes often.

Compiled blocks serve inference only: with autograd on (LoRA training), blocks run eagerly.
Hooks registered on a block (block swap, ComfyUI's partial loading) stay outside the graph, since
only ``forward`` is replaced.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from . import adapter_op, ops

BLOCK_LISTS = ("blocks", "vace_blocks")
"""The ``nn.ModuleList`` attributes of a WanDiT whose blocks are compiled."""

COMPILE_ENV = "WANFLOW_COMPILE"
"""``wanflow run --compile`` sets it to 1: every model loader then compiles its DiT's blocks."""


@dataclass(frozen=True)
class CompileSettings:
    """How the blocks are compiled. ``backend``/``mode``/``dynamic``/``fullgraph`` go to
    ``torch.compile`` as they are (``mode`` only for inductor; "reduce-overhead" is refused:
    CUDA graphs would capture the adapter op's CPU keys)."""

    backend: Union[str, Callable[..., Any]] = "inductor"  # or a dynamo backend (tests count with one)
    mode: Optional[str] = None
    dynamic: bool = False
    fullgraph: bool = False

    def __post_init__(self) -> None:
        if self.mode == "reduce-overhead":
            raise ValueError("compile: mode='reduce-overhead' (CUDA graphs) is not supported for WanFlow "
                             "blocks; use None or 'max-autotune-no-cudagraphs'")


def compile_requested() -> bool:
    """Whether ``WANFLOW_COMPILE`` asks every loaded DiT to be compiled."""
    return os.environ.get(COMPILE_ENV, "").strip() not in ("", "0")


def compile_problem(device: Union[str, torch.device], backend: object = "inductor") -> Optional[str]:
    """Why compiled blocks cannot run on ``device`` here, or None when they can."""
    if not torch._dynamo.is_dynamo_supported():
        return (f"torch.compile is not supported by this Python/torch ({torch.__version__}); "
                "leave compile off")
    if backend != "inductor":
        return None
    kind = torch.device(device).type
    if kind == "cpu":
        candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++", "cl"]
        if not any(name and shutil.which(name) for name in candidates):
            return ("torch.compile on the CPU needs a C++ compiler (inductor builds C++ kernels); none of "
                    "g++, c++, clang++ or cl is on PATH. Install one (e.g. 'apt install g++') or leave "
                    "compile off")
    elif kind == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return ("torch.compile on a CUDA GPU needs Triton: 'pip install triton' (on Windows "
                    "'pip install triton-windows'), or leave compile off")
    return None


def _call_block(block: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The region that is compiled: the block's own class ``forward`` (not the instance override)."""
    return type(block).forward(block, *args, **kwargs)


@functools.lru_cache(maxsize=None)
def compiled_function(settings: CompileSettings) -> Callable[..., torch.Tensor]:
    """The one compiled block function per settings, shared by every block of every model."""
    options: dict[str, Any] = dict(backend=settings.backend, dynamic=settings.dynamic,
                                   fullgraph=settings.fullgraph)
    if settings.mode is not None:
        options["mode"] = settings.mode
    return torch.compile(_call_block, **options)


class CompiledForward:
    """A block's instance-level ``forward``: the shared compiled function when inference runs,
    the eager class ``forward`` while autograd is on."""

    def __init__(self, block: nn.Module, settings: CompileSettings) -> None:
        self.block = block
        self.settings = settings
        self.linears = [m for m in block.modules() if isinstance(m, ops.Linear)]
        for linear in self.linears:
            adapter_op.register(linear)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return type(self.block).forward(self.block, x, *args, **kwargs)
        for linear in self.linears:  # a copied model shares its original's keys: re-key it
            adapter_op.register(linear)
        # block 0 receives the patch embedding as a transposed view; the rest get contiguous
        # tensors. One layout for all keeps a single graph.
        return compiled_function(self.settings)(self.block, x.contiguous(), *args, **kwargs)


def _blocks(model: nn.Module) -> list[nn.Module]:
    found = [block for name in BLOCK_LISTS for block in getattr(model, name, None) or ()]
    if not found:
        raise ValueError(f"compile: {type(model).__name__} has no 'blocks' list to compile; expected a "
                         "WanDiT (wan/dit.py)")
    return found


def compile_blocks(model: nn.Module, settings: CompileSettings = CompileSettings()) -> int:
    """Compile every block of ``model`` (lazily: the first forward compiles); returns how many.

    Calling it again replaces the settings. Nothing is compiled until a forward runs, so this is
    cheap; the first forward at a new size takes the compile time (seconds to a minute).
    """
    blocks = _blocks(model)
    for block in blocks:
        block.forward = CompiledForward(block, settings)
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> int:
    """Give every block its eager ``forward`` back; returns how many were compiled."""
    count = 0
    for block in _blocks(model):
        if isinstance(block.__dict__.get("forward"), CompiledForward):
            del block.forward
            count += 1
    return count


def is_compiled(model: nn.Module) -> bool:
    return any(isinstance(block.__dict__.get("forward"), CompiledForward)
               for name in BLOCK_LISTS for block in getattr(model, name, None) or ())
