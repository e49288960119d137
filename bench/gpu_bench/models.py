"""Random-weight models at real sizes, built on meta and filled on the device (or left on meta).

Weights are drawn on the device itself in their storage dtype, so a 14B expert takes seconds and
never exists in float32 or in host RAM. Values are scaled like trained ones (norm scales near 1,
matrices ~ 1/sqrt(fan-in)) so activations stay finite through the timed blocks.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from wanflow.wan import ops
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.vae2_1 import WAN21_VAE, WanVAE21, WanVAE21Config

from .plan import TEXT_TOKENS, Resolution

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def materialize_(module: nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Replace every meta parameter/buffer by a random tensor on ``device`` (no-op on meta)."""
    if device.type == "meta":
        return module.to(dtype)
    gen = torch.Generator(device).manual_seed(seed)
    for name, sub in module.named_modules():
        for key, p in list(sub._parameters.items()):
            if p is None:
                continue
            value = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
            if "norm" in f"{name}.{key}" and p.ndim == 1:
                value = 1.0 + 0.1 * value
            elif p.ndim >= 2:
                value = value / max(1, p[0].numel()) ** 0.5
            else:
                value = 0.1 * value
            sub._parameters[key] = nn.Parameter(value.to(dtype), requires_grad=False)
        for key, b in list(sub._buffers.items()):
            if b is not None and b.device.type == "meta":
                sub._buffers[key] = torch.zeros(b.shape, dtype=b.dtype, device=device)
    return module


def random_dit(cfg: WanDiTConfig, device: torch.device, dtype: torch.dtype = torch.bfloat16,
               seed: int = 0) -> WanDiT:
    with torch.device("meta"):
        model = WanDiT(cfg)
    return materialize_(model, device, dtype, seed).eval()


def random_vae(device: torch.device, config: WanVAE21Config = WAN21_VAE,
               dtype: torch.dtype = torch.bfloat16) -> WanVAE21:
    """A Wan 2.1 VAE (the full-size one by default: base width 96)."""
    with torch.device("meta"):
        vae = WanVAE21(config)
    return materialize_(vae, device, dtype).eval()


def latent(res: Resolution, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A Wan 2.1 latent (16 channels) of a clip at ``res``."""
    make = torch.empty if device.type == "meta" else torch.randn
    return make(1, 16, *res.latent, device=device, dtype=dtype)


def dit_inputs(cfg: WanDiTConfig, res: Resolution, batch: int, device: torch.device,
               dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """One step's DiT inputs: a batch of latents (2 = cond + uncond), timesteps, padded text."""
    make = torch.empty if device.type == "meta" else torch.randn
    return dict(x=make(batch, cfg.in_dim, *res.latent, device=device, dtype=dtype),
                t=torch.full((batch,), 900.0, device=device),
                context=make(batch, TEXT_TOKENS, cfg.text_dim, device=device, dtype=dtype))


def quantize_blocks_fp8_(model: WanDiT) -> int:
    """Store every block Linear's weight as scaled float8_e4m3fn (ComfyUI's fp8_scaled files);
    returns how many layers changed."""
    count = 0
    for module in model.blocks.modules():
        if isinstance(module, ops.Linear):
            wide = module.weight.detach().float()
            scale = wide.abs().amax().clamp(min=1e-12) / FP8_MAX
            module.weight = nn.Parameter((wide / scale).to(torch.float8_e4m3fn), requires_grad=False)
            module.set_scale_weight(scale.reshape(()))
            count += 1
    return count


@contextlib.contextmanager
def without_blocks(model: WanDiT) -> Iterator[WanDiT]:
    """The model with no transformer blocks: what a step costs besides them."""
    blocks, model.blocks = model.blocks, nn.ModuleList()
    try:
        yield model
    finally:
        model.blocks = blocks
