"""Optional check for NaN/Inf weights after a load (``WANFLOW_CHECK_WEIGHTS=1`` or ``wanflow run
--check-weights``).

Off by default: reading every weight once more costs seconds on a 14B model, and a file that
loads with the right names and shapes is almost always sound. When a video comes out black or
as noise, this names the tensors that hold non-finite values (a damaged download, or a model
saved from a training run that diverged).
"""
from __future__ import annotations

import itertools
import logging
import os

import torch
import torch.nn as nn

CHECK_ENV = "WANFLOW_CHECK_WEIGHTS"
CHUNK = 1 << 22
"""Elements checked at once: fp8 and bf16 weights are widened a piece at a time, never whole."""

log = logging.getLogger("wanflow")


def check_requested() -> bool:
    return os.environ.get(CHECK_ENV, "").strip() not in ("", "0")


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` that hold NaN or Inf."""
    found = []
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.detach().reshape(-1)
            if any(not torch.isfinite(part.float()).all() for part in flat.split(CHUNK)):
                found.append(name)
    return found


def warn_if_non_finite(model: nn.Module, name: str) -> list[str]:
    """When the check is requested, log a warning naming the file and the bad tensors."""
    if not check_requested():
        return []
    bad = non_finite_tensors(model)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("%s: %d tensor(s) hold NaN or Inf values (%s%s); the file is damaged or was saved from a "
                    "training run that diverged, and its outputs will be black or noise", name, len(bad),
                    ", ".join(bad[:5]), more)
    return bad
