"""CLIP ViT-H/14 image tower (open-clip XLM-RoBERTa-large ViT-H/14) for Wan 2.1 I2V / FLF2V.

Wan uses only the visual tower, and from it the hidden states after block 31 of 32 (the
penultimate block): no post norm, no projection head. The result ``[N, 257, 1280]`` is the DiT's
``clip_fea`` (FLF2V concatenates two of them). Wan 2.2 models use no CLIP.

Our state-dict keys are the official names **without** the ``visual.`` prefix of the official
``.pth`` (``model_loaders/clip_keys.py`` strips it, and converts HF ``vision_model.*`` files)::

    patch_embedding.weight           [dim, 3, patch, patch] (no bias)
    cls_embedding                    [1, 1, dim]
    pos_embedding                    [1, 1 + patches, dim]
    pre_norm.{weight,bias}
    transformer.{i}.norm1 / norm2    LayerNorm
    transformer.{i}.attn.to_qkv      Linear(dim, 3 dim), rows q | k | v
    transformer.{i}.attn.proj        Linear(dim, dim)
    transformer.{i}.mlp.0 / mlp.2    Linear(dim, 4 dim) / Linear(4 dim, dim), exact GELU between
    post_norm.{weight,bias}          unused by Wan, kept so complete files load strictly
    head                             [dim, embed_dim], unused by Wan

The model computes in the dtype of the pixels it is given (official Wan: fp16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .attention import attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """Shape of the visual tower. The defaults are ViT-H/14 as used by Wan 2.1."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_ratio: int = 4
    embed_dim: int = 1024  # output size of the (unused) projection head
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"CLIPVisionConfig.image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"CLIPVisionConfig.dim {self.dim} is not divisible by num_heads "
                             f"{self.num_heads}")
        if self.num_layers < 2:
            raise ValueError(f"CLIPVisionConfig.num_layers must be >= 2 (Wan reads the "
                             f"penultimate block), got {self.num_layers}")

    @classmethod
    def vit_h_14(cls) -> "CLIPVisionConfig":
        """open-clip ViT-H/14 (632 M parameters in the visual tower)."""
        return cls()

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (as official Wan)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q|k|v projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = ops.Linear(dim, 3 * dim)
        self.proj = ops.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.to_qkv(x).view(b, length, 3, self.num_heads, dim // self.num_heads).unbind(2)
        return self.proj(attention(q, k, v).reshape(b, length, dim))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x += attn(norm1(x))``, ``x += mlp(norm2(x))``."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        hidden = config.dim * config.mlp_ratio
        self.norm1 = LayerNorm(config.dim, eps=config.eps)
        self.attn = SelfAttention(config.dim, config.num_heads)
        self.norm2 = LayerNorm(config.dim, eps=config.eps)
        self.mlp = nn.Sequential(ops.Linear(config.dim, hidden), nn.GELU(),
                                 ops.Linear(hidden, config.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPVisionTower(nn.Module):
    """Normalised pixels ``[N, 3, S, S]`` -> penultimate hidden states ``[N, 1 + patches, dim]``."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.dim, config.patch_size
        self.patch_embedding = ops.Conv2d(3, d, kernel_size=p, stride=p, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.num_tokens, d))
        self.pre_norm = LayerNorm(d, eps=config.eps)
        self.transformer = nn.ModuleList(AttentionBlock(config) for _ in range(config.num_layers))
        self.post_norm = LayerNorm(d, eps=config.eps)
        self.head = nn.Parameter(torch.zeros(d, config.embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden states after the second-to-last block (what Wan feeds the DiT)."""
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2:] != (size, size):
            raise ValueError(f"CLIP vision expects pixels [N, 3, {size}, {size}] (see "
                             f"preprocess()), got {tuple(pixels.shape)}")
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.cls_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding.to(x.dtype)
        x = self.pre_norm(x)
        for block in self.transformer[:-1]:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

def _normalise(images01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
    return (images01 - mean) / std


def preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Official Wan preprocessing: ``[N, 3, H, W]`` in [-1, 1] -> normalised ``[N, 3, size, size]``.

    The whole image is resized (bicubic, aspect ratio *not* kept, no crop), mapped to [0, 1]
    and normalised with the CLIP mean / std.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"CLIP preprocess expects images [N, 3, H, W] in [-1, 1], got "
                         f"{tuple(images.shape)}")
    images = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return _normalise(images * 0.5 + 0.5)


def preprocess_comfy(images: torch.Tensor, size: int = 224, crop: bool = True) -> torch.Tensor:
    """ComfyUI ``CLIPVisionEncode`` preprocessing of a ComfyUI IMAGE ``[N, H, W, C]`` in [0, 1].

    ``crop=True``: antialiased bicubic resize of the short side to ``size``, then centre crop;
    ``crop=False``: antialiased resize of the whole image to ``size`` x ``size``. Pixels are then
    quantised to 1/255 steps and normalised. Returns ``[N, 3, size, size]``.
    """
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"ComfyUI IMAGE must be [N, H, W, 3 or 4] in [0, 1], got "
                         f"{tuple(images.shape)}")
    x = images[..., :3].movedim(-1, 1).float()
    height, width = x.shape[2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = (x * 255.0).clamp(0, 255).round() / 255.0
    return _normalise(x)
