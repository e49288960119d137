"""Drop a loaded model's weights from RAM and read them back from its file later.

Wan 2.2 A14B samples with one expert, then the other. With ``DiskBacked`` the inactive expert
costs no RAM: its weights are replaced by meta tensors (shapes only) and read back from the
file, through the same loader path and storage dtype, when it is needed again. Run-time LoRA
adapters are not weights of the file (they hold non-persistent buffers) and stay as they are.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch
import torch.nn as nn

from ..wan import ops

log = logging.getLogger("wanflow")


def park(model: nn.Module) -> None:
    """Replace every weight the file provides (persistent parameters and buffers, fp8 scales)
    with a meta tensor of the same shape and dtype, so its memory is freed."""
    for module in model.modules():
        if isinstance(module, ops.CastWeights):
            module.set_scale_weight(None)
        for name, param in list(module._parameters.items()):
            if param is not None and param.device.type != "meta":
                module._parameters[name] = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device="meta"),
                                                        requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and name not in module._non_persistent_buffers_set and buffer.device.type != "meta":
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device="meta")


def is_parked(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


class DiskBacked:
    """A model whose weights live in its file while it waits: ``park()`` frees them, ``restore()``
    reads them back (``reload(model)`` fills a parked model, e.g. ``dit_loader.reload_dit``)."""

    def __init__(self, model: nn.Module, reload: Callable[[nn.Module], None], name: str) -> None:
        self.model, self.reload, self.name = model, reload, name
        self.after_restore: list[Callable[[], None]] = []
        """Called after the weights are read back (a LoRA stack re-bakes the tensors it changes)."""

    def park(self) -> None:
        if not is_parked(self.model):
            park(self.model)
            log.info("%s: weights released from memory (read back from the file when needed)", self.name)

    def restore(self, device: torch.device) -> nn.Module:
        if is_parked(self.model):
            began = time.perf_counter()
            self.reload(self.model)
            log.info("%s: weights read back from the file in %.1f s", self.name, time.perf_counter() - began)
            self.model.to(device)
            for hook in self.after_restore:
                hook()
        return self.model.to(device)
