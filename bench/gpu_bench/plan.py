"""What the GPU suite measures and how much work it is: sizes, token counts, FLOPs, device peaks.

FLOPs count the matrix products only (2 per multiply-add), the way a roofline does: every Linear,
the patch-embedding convolution, and attention as ``4 * Lq * Lk * dim`` (QKᵀ and PV). Norms,
RoPE and the modulation are elementwise and left out. The dry run checks these formulas against
``torch.utils.flop_counter`` on a meta-device forward.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from wanflow.wan.dit_config import WAN22_T2V_A14B, WanDiTConfig
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WAN21_VAE, WanVAE21Config

EXPERT = WAN22_T2V_A14B
"""A Wan 2.2 A14B expert: dim 5120, 40 heads, ffn 13824, 40 blocks."""
STEPS = 40
TEXT_TOKENS = 512
GIB = 1024 ** 3
VAE_STRIDE = (4, 8, 8)


@dataclass(frozen=True)
class Resolution:
    name: str
    frames: int
    height: int
    width: int

    @property
    def latent(self) -> tuple[int, int, int]:
        """Wan 2.1 VAE latent (frames, height, width): 81x480x832 -> 21x60x104."""
        t, s, _ = VAE_STRIDE
        return (self.frames - 1) // t + 1, self.height // s, self.width // s

    def tokens(self, cfg: WanDiTConfig = EXPERT) -> int:
        """Video tokens of the DiT (all Wan DiTs patch by 1x2x2)."""
        return math.prod(n // p for n, p in zip(self.latent, cfg.patch_size))


RESOLUTIONS = (Resolution("480p", 81, 480, 832), Resolution("720p", 81, 720, 1280))


@dataclass(frozen=True)
class Plan:
    """The sizes one run measures: the real ones, or toy ones for the CPU smoke run."""

    name: str
    expert: WanDiTConfig
    resolutions: tuple[Resolution, ...]
    vae: WanVAE21Config
    swap_budget: int  # bytes of weights block swap may keep on the device
    cache_steps: int = STEPS  # steps of the nano runs that judge the step cache

    @property
    def swap_budget_text(self) -> str:
        return f"{self.swap_budget / GIB:g} GiB" if self.swap_budget >= GIB else f"{self.swap_budget // 1024} KiB"


A14B = Plan("Wan 2.2 A14B expert", EXPERT, RESOLUTIONS, WAN21_VAE, 24 * GIB)
SMOKE = Plan("toy DiT (CPU smoke run of the measuring code)",
             WanDiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=4, text_dim=32),
             (Resolution("toy-a", 9, 32, 48), Resolution("toy-b", 9, 48, 64)), TINY_WAN21_VAE, 320 * 1024,
             cache_steps=12)


def slice_config(cfg: WanDiTConfig, layers: int) -> WanDiTConfig:
    return dataclasses.replace(cfg, num_layers=layers)


def linear_flops(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention_flops(q_tokens: int, k_tokens: int, dim: int) -> int:
    return 4 * q_tokens * k_tokens * dim


def block_flops(cfg: WanDiTConfig, batch: int, tokens: int, text: int = TEXT_TOKENS) -> int:
    """One transformer block (T2V: no CLIP branch)."""
    d, f = cfg.dim, cfg.ffn_dim
    per_sample = (6 * linear_flops(tokens, d, d)            # self q k v o, cross q o
                  + 2 * linear_flops(text, d, d)            # cross k v over the text tokens
                  + linear_flops(tokens, d, f) + linear_flops(tokens, f, d)
                  + attention_flops(tokens, tokens, d) + attention_flops(tokens, text, d))
    return batch * per_sample


def other_flops(cfg: WanDiTConfig, batch: int, tokens: int, text: int = TEXT_TOKENS) -> int:
    """Everything outside the blocks: patch embedding, text and time embeddings, head."""
    d, patch = cfg.dim, math.prod(cfg.patch_size)
    per_sample = (linear_flops(tokens, cfg.in_dim * patch, d)
                  + linear_flops(text, cfg.text_dim, d) + linear_flops(text, d, d)
                  + linear_flops(1, cfg.freq_dim, d) + linear_flops(1, d, d) + linear_flops(1, d, 6 * d)
                  + linear_flops(tokens, d, patch * cfg.out_dim))
    return batch * per_sample


def forward_flops(cfg: WanDiTConfig, batch: int, tokens: int) -> int:
    return cfg.num_layers * block_flops(cfg, batch, tokens) + other_flops(cfg, batch, tokens)


def block_bytes(cfg: WanDiTConfig, bytes_per_weight: int = 2) -> int:
    """Weights of one block: 8 dim x dim projections, the FFN, small vectors ignored."""
    return bytes_per_weight * (8 * cfg.dim ** 2 + 2 * cfg.dim * cfg.ffn_dim)


# Dense (non-sparse) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched
# against torch.cuda.get_device_name() in this order (most specific first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4),
    ("H100", 989.4), ("H200", 989.4), ("H800", 989.4), ("H20", 148.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0),
    ("RTX 4090", 165.2), ("RTX 5090", 209.5), ("RTX 3090", 71.0), ("A10", 125.0),
)
DRY_RUN_PEAK = 989.4
"""The peak a dry run pretends to have (an H100/H200 SXM), so its roofline figures are the H100's."""


def peak_tflops(device_name: str) -> Optional[float]:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None
