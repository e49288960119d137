"""Helpers for the DiT tests: a diffusers twin of a tiny WanDiT with identical random weights."""
from __future__ import annotations

import torch
import torch.nn as nn

from wanflow.model_loaders import dit_keys
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig


def randomize_(model: nn.Module, seed: int) -> None:
    """Give every parameter random, well-scaled values (norm scales near 1, others ~ 1/sqrt(fan-in))
    so no layer is an identity or a zero (default inits leave norms at 1 and pos tables at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim >= 2 and name.endswith("weight"):
                fan_in = p[0].numel()
                p.copy_(noise / fan_in ** 0.5)
            else:
                p.copy_(0.3 * noise)


def diffusers_twin(cfg: WanDiTConfig, seed: int = 0) -> tuple[WanDiT, nn.Module]:
    """A diffusers transformer with random weights and our WanDiT loaded from it via the key map."""
    import diffusers

    reference = getattr(diffusers, dit_keys.diffusers_class_name(cfg))(**dit_keys.diffusers_config(cfg))
    randomize_(reference, seed)
    reference.eval()
    ours = WanDiT(cfg).eval()
    ours.load_state_dict(dit_keys.diffusers_to_official(reference.state_dict()), strict=True)
    return ours, reference
