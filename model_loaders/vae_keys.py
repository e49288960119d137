"""Wan VAE state-dict keys: official (``Wan2.1_VAE.pth``, ``Wan2.2_VAE.pth``, ComfyUI files) ↔
diffusers ``AutoencoderKLWan``, for both VAE versions.

Keys are converted module path by module path; the parameter name at the end (``weight``,
``bias``, ``gamma``, a ComfyUI ``scale_weight``) is kept. Renames are listed in the tables
below; the block-level rules are (X = a residual part from RESIDUAL_PARTS, R = a resample part):

    2.1  encoder.downsamples.i.X|R              ↔ encoder.down_blocks.i.X'|R
    2.1  decoder.upsamples.i.X   (i % 4 < 3)    ↔ decoder.up_blocks.{i // 4}.resnets.{i % 4}.X'
    2.1  decoder.upsamples.i.R   (i % 4 == 3)   ↔ decoder.up_blocks.{i // 4}.upsamplers.0.R
    2.2  encoder.downsamples.b.downsamples.j.X  ↔ encoder.down_blocks.b.resnets.j.X'   (last j: .downsampler.R)
    2.2  decoder.upsamples.b.upsamples.j.X      ↔ decoder.up_blocks.b.resnets.j.X'     (last j: .upsampler.R)

(4 = residual blocks per decoder level + 1, read from the keys.)
"""
from __future__ import annotations

import re
from typing import Mapping, Union

import torch

from ..wan.latent_stats import stats_for_channels
from ..wan.vae2_1 import WanVAE21Config
from ..wan.vae2_2 import WanVAE22Config

StateDict = Mapping[str, torch.Tensor]
VAEConfig = Union[WanVAE21Config, WanVAE22Config]

# Module paths that are renamed as a whole (both versions). official → diffusers.
FIXED_MODULES: dict[str, str] = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}

# Middle attention blocks: prefix → prefix (inside: norm, to_qkv, proj in both layouts).
MIDDLE_ATTENTIONS: dict[str, str] = {
    "encoder.middle.1": "encoder.mid_block.attentions.0",
    "decoder.middle.1": "decoder.mid_block.attentions.0",
}

# Middle residual blocks: official prefix → diffusers prefix (their insides use RESIDUAL_PARTS).
MIDDLE_RESIDUALS: dict[str, str] = {
    "encoder.middle.0": "encoder.mid_block.resnets.0",
    "encoder.middle.2": "encoder.mid_block.resnets.1",
    "decoder.middle.0": "decoder.mid_block.resnets.0",
    "decoder.middle.2": "decoder.mid_block.resnets.1",
}

# Inside a residual block. official → diffusers.
RESIDUAL_PARTS: dict[str, str] = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
RESIDUAL_PARTS_BACK = {v: k for k, v in RESIDUAL_PARTS.items()}

# Inside a Resample block the names are the same in both layouts.
RESAMPLE_PARTS = ("resample.1", "time_conv")


def _split(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


def _is_resample(part: str) -> bool:
    return part in RESAMPLE_PARTS


def _residual_to_diffusers(part: str, key: str) -> str:
    if part not in RESIDUAL_PARTS:
        raise KeyError(f"VAE key {key!r}: {part!r} is not a residual-block part ({sorted(RESIDUAL_PARTS)})")
    return RESIDUAL_PARTS[part]


def _residual_to_official(part: str, key: str) -> str:
    if part not in RESIDUAL_PARTS_BACK:
        raise KeyError(f"VAE key {key!r}: {part!r} is not a residual-block part ({sorted(RESIDUAL_PARTS_BACK)})")
    return RESIDUAL_PARTS_BACK[part]


# --- detection --------------------------------------------------------------------------------
def detect_layout(sd: StateDict) -> str:
    """``"official"`` or ``"diffusers"``, from the decoder's first middle norm."""
    if "decoder.middle.0.residual.0.gamma" in sd:
        return "official"
    if "decoder.mid_block.resnets.0.norm1.gamma" in sd:
        return "diffusers"
    raise ValueError("not a Wan VAE state dict: neither 'decoder.middle.0.residual.0.gamma' (official) nor "
                     "'decoder.mid_block.resnets.0.norm1.gamma' (diffusers) is present; strip any prefix first")


def detect_version(sd: StateDict) -> str:
    """``"2.1"`` or ``"2.2"`` for a state dict in either layout (2.2 has nested residual blocks)."""
    detect_layout(sd)  # fails early on a state dict that is no Wan VAE at all
    nested = ("decoder.upsamples.0.upsamples.", "encoder.down_blocks.0.resnets.")
    return "2.2" if any(k.startswith(nested) for k in sd) else "2.1"


# --- official → diffusers ---------------------------------------------------------------------
def _official_blocks_per_level(sd: StateDict) -> int:
    """Entries per level of Wan 2.1's flat ``decoder.upsamples`` list (resblocks + 1 resample)."""
    resample_indices = sorted({int(m.group(1)) for k in sd
                               if (m := re.match(r"decoder\.upsamples\.(\d+)\.(resample|time_conv)\.", k))})
    if not resample_indices:
        raise ValueError("Wan 2.1 VAE: no upsample layer found under 'decoder.upsamples.N.resample'")
    return resample_indices[0] + 1


def _official_module_to_diffusers(module: str, key: str, version: str, per_level: int) -> str:
    if module in FIXED_MODULES:
        return FIXED_MODULES[module]
    for old, new in MIDDLE_ATTENTIONS.items():
        if module.startswith(old + "."):
            return new + module[len(old):]
    for old, new in MIDDLE_RESIDUALS.items():
        if module.startswith(old + "."):
            return f"{new}.{_residual_to_diffusers(module[len(old) + 1:], key)}"
    if version == "2.1":
        if m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", module):
            i, part = m.groups()
            part = part if _is_resample(part) else _residual_to_diffusers(part, key)
            return f"encoder.down_blocks.{i}.{part}"
        if m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", module):
            i, part = int(m.group(1)), m.group(2)
            level, j = divmod(i, per_level)
            if _is_resample(part):
                return f"decoder.up_blocks.{level}.upsamplers.0.{part}"
            return f"decoder.up_blocks.{level}.resnets.{j}.{_residual_to_diffusers(part, key)}"
    else:
        if m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.(.+)", module):
            level, j, part = m.groups()
            if _is_resample(part):
                return f"encoder.down_blocks.{level}.downsampler.{part}"
            return f"encoder.down_blocks.{level}.resnets.{j}.{_residual_to_diffusers(part, key)}"
        if m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)", module):
            level, j, part = m.groups()
            if _is_resample(part):
                return f"decoder.up_blocks.{level}.upsampler.{part}"
            return f"decoder.up_blocks.{level}.resnets.{j}.{_residual_to_diffusers(part, key)}"
    raise KeyError(f"Wan {version} VAE key {key!r} has no diffusers equivalent")


def official_to_diffusers(sd: StateDict) -> dict[str, torch.Tensor]:
    """Official-layout keys (either version) → diffusers ``AutoencoderKLWan`` keys."""
    if detect_layout(sd) != "official":
        raise ValueError("official_to_diffusers: the state dict is already in diffusers layout")
    version = detect_version(sd)
    per_level = _official_blocks_per_level(sd) if version == "2.1" else 0
    out = {}
    for key, value in sd.items():
        module, param = _split(key)
        out[f"{_official_module_to_diffusers(module, key, version, per_level)}.{param}"] = value
    return out


# --- diffusers → official ---------------------------------------------------------------------
def _count_resnets(sd: StateDict, prefix: str) -> int:
    """How many ``{prefix}.resnets.N`` blocks exist."""
    pattern = re.compile(re.escape(prefix) + r"\.resnets\.(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    if not found:
        raise ValueError(f"Wan VAE (diffusers layout): no residual blocks under {prefix!r}")
    return max(found) + 1


def _diffusers_module_to_official(module: str, key: str, version: str, sd: StateDict) -> str:
    for official, diffusers in FIXED_MODULES.items():
        if module == diffusers:
            return official
    for official, diffusers in MIDDLE_ATTENTIONS.items():
        if module.startswith(diffusers + "."):
            return official + module[len(diffusers):]
    for official, diffusers in MIDDLE_RESIDUALS.items():
        if module.startswith(diffusers + "."):
            return f"{official}.{_residual_to_official(module[len(diffusers) + 1:], key)}"
    if version == "2.1":
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", module):
            i, part = m.groups()
            part = part if _is_resample(part) else _residual_to_official(part, key)
            return f"encoder.downsamples.{i}.{part}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", module):
            level, _, j, part = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            per_level = _count_resnets(sd, "decoder.up_blocks.0") + 1
            if j is None:
                return f"decoder.upsamples.{level * per_level + per_level - 1}.{part}"
            return f"decoder.upsamples.{level * per_level + int(j)}.{_residual_to_official(part, key)}"
    else:
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsampler)\.(.+)", module):
            level, _, j, part = m.groups()
            if j is None:
                j = str(_count_resnets(sd, f"encoder.down_blocks.{level}"))
                return f"encoder.downsamples.{level}.downsamples.{j}.{part}"
            return f"encoder.downsamples.{level}.downsamples.{j}.{_residual_to_official(part, key)}"
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsampler)\.(.+)", module):
            level, _, j, part = m.groups()
            if j is None:
                j = str(_count_resnets(sd, f"decoder.up_blocks.{level}"))
                return f"decoder.upsamples.{level}.upsamples.{j}.{part}"
            return f"decoder.upsamples.{level}.upsamples.{j}.{_residual_to_official(part, key)}"
    raise KeyError(f"Wan {version} VAE key {key!r} has no official equivalent")


def diffusers_to_official(sd: StateDict) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKLWan`` keys (either version) → official Wan keys."""
    if detect_layout(sd) != "diffusers":
        raise ValueError("diffusers_to_official: the state dict is already in official layout")
    version = detect_version(sd)
    out = {}
    for key, value in sd.items():
        module, param = _split(key)
        out[f"{_diffusers_module_to_official(module, key, version, sd)}.{param}"] = value
    return out


# --- configs ----------------------------------------------------------------------------------
def config_from_official(sd: StateDict) -> VAEConfig:
    """The config of an official-layout VAE file, read from tensor shapes (standard 4-level layout)."""
    version = detect_version(sd)
    dim = sd["encoder.conv1.weight"].shape[0]
    z_dim = sd["conv2.weight"].shape[0]
    if version == "2.1":
        return WanVAE21Config(dim=dim, z_dim=z_dim)
    decoder_dim = sd["decoder.conv1.weight"].shape[0] // WanVAE22Config().dim_mult[-1]
    return WanVAE22Config(dim=dim, decoder_dim=decoder_dim, z_dim=z_dim)


def diffusers_config(cfg: VAEConfig) -> dict[str, object]:
    """Keyword arguments for diffusers ``AutoencoderKLWan(**kwargs)`` building the same VAE."""
    kwargs: dict[str, object] = dict(
        base_dim=cfg.dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(cfg.temporal_downsample),  # (sic) diffusers' spelling
        dropout=cfg.dropout,
        scale_factor_temporal=4,
        scale_factor_spatial=cfg.spatial_factor,
    )
    if isinstance(cfg, WanVAE22Config):
        kwargs.update(decoder_base_dim=cfg.decoder_dim, is_residual=True, in_channels=12, out_channels=12,
                      patch_size=2)
    else:
        kwargs.update(is_residual=False, in_channels=3, out_channels=3, patch_size=None)
    try:
        stats = stats_for_channels(cfg.z_dim)
        kwargs.update(latents_mean=list(stats.mean), latents_std=list(stats.std))
    except ValueError:
        pass  # a test-sized latent: diffusers' own defaults are fine (the VAE never uses them)
    return kwargs

