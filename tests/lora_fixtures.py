"""LoRA test files written with the real key names of every dialect in the wild.

A :class:`Spec` is a set of low-rank deltas on official Wan targets. Each ``write_*`` function
writes the same deltas the way one tool does (key names, alpha handling), so every dialect must
give the same model change. Key layouts follow the shared reference, ecosystem-formats.md §7.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from wanflow.model_loaders import dit_keys
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS, WanDiTConfig

Tensors = dict[str, torch.Tensor]

# Linear targets a typical Wan LoRA trains (DiffSynth / musubi defaults) plus the I/O layers.
BLOCK_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
TOP_TARGETS = ("text_embedding.0", "time_embedding.2", "time_projection.1", "head.head")


@dataclass
class LowRankDelta:
    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    alpha: float

    @property
    def delta(self) -> torch.Tensor:
        return self.up @ self.down * (self.alpha / self.down.shape[0])


Spec = dict[str, LowRankDelta]  # official target path -> delta


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def tiny_config(kind: str = "t2v") -> WanDiTConfig:
    return TINY_PRESETS[kind]


def random_dit(kind: str = "t2v", seed: int = 0) -> WanDiT:
    """A tiny WanDiT with every parameter random (default init zeroes the head)."""
    model = WanDiT(tiny_config(kind)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim >= 2 and name.endswith("weight"):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * noise)
    return model


def dit_inputs(cfg: WanDiTConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(x=torch.randn(1, cfg.in_dim, 2, 4, 4, generator=gen),
                  t=torch.tensor([700.0]),
                  context=torch.randn(1, 6, cfg.text_dim, generator=gen))
    if cfg.has_image_input:
        inputs["clip_fea"] = torch.randn(1, 257, cfg.clip_dim, generator=gen)
    return inputs


def run(model: WanDiT, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        x, t, context = inputs["x"], inputs["t"], inputs["context"]
        rest = {k: v for k, v in inputs.items() if k not in ("x", "t", "context")}
        return model(x, t, context, **rest)


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def make_spec(model: nn.Module, targets: list[str], rank: int = 4, alpha: float = 8.0,
              seed: int = 2, magnitude: float = 0.3) -> Spec:
    """Random low-rank deltas on ``targets`` whose size is ``magnitude`` times the weight's scale."""
    gen = torch.Generator().manual_seed(seed)
    shapes = linear_shapes(model)
    spec: Spec = {}
    for target in targets:
        out_f, in_f = shapes[target]
        down = torch.randn(rank, in_f, generator=gen) / in_f ** 0.5
        up = torch.randn(out_f, rank, generator=gen) * magnitude / (alpha / rank) / rank ** 0.5
        spec[target] = LowRankDelta(down, up, alpha)
    return spec


def default_targets(cfg: WanDiTConfig, blocks: Optional[list[int]] = None) -> list[str]:
    blocks = list(range(cfg.num_layers)) if blocks is None else blocks
    return [f"blocks.{i}.{t}" for i in blocks for t in BLOCK_TARGETS] + list(TOP_TARGETS)


def patched_copy(model: WanDiT, spec: Spec, strength: float = 1.0) -> WanDiT:
    """Ground truth: a copy of ``model`` with ``strength · ΔW`` added to its fp32 weights."""
    patched = WanDiT(model.config).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for target, d in spec.items():
        sd[f"{target}.weight"] += strength * d.delta
    patched.load_state_dict(sd)
    return patched


# --------------------------------------------------------------------------------------------
# Writers: the same Spec in each dialect
# --------------------------------------------------------------------------------------------

def _flat(target: str) -> str:
    return target.replace(".", "_")


def _baked(d: LowRankDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """down/up with alpha/rank folded into up (files that carry no alpha)."""
    return d.down, d.up * (d.alpha / d.down.shape[0])


def write_comfyui_ab(spec: Spec) -> Tensors:
    """diffusion-pipe / ai-toolkit "original": diffusion_model.<path>.lora_A/B.weight + .alpha."""
    out: Tensors = {}
    for t, d in spec.items():
        out[f"diffusion_model.{t}.lora_A.weight"] = d.down
        out[f"diffusion_model.{t}.lora_B.weight"] = d.up
        out[f"diffusion_model.{t}.alpha"] = torch.tensor(d.alpha)
    return out


def write_comfyui_updown(spec: Spec) -> Tensors:
    """lightx2v / Civitai "original": diffusion_model.<path>.lora_down/lora_up.weight + .alpha."""
    out: Tensors = {}
    for t, d in spec.items():
        out[f"diffusion_model.{t}.lora_down.weight"] = d.down
        out[f"diffusion_model.{t}.lora_up.weight"] = d.up
        out[f"diffusion_model.{t}.alpha"] = torch.tensor(d.alpha)
    return out


def write_kohya(spec: Spec) -> Tensors:
    """musubi-tuner networks.lora_wan: lora_unet_<path with _>.lora_down/up.weight + .alpha."""
    out: Tensors = {}
    for t, d in spec.items():
        out[f"lora_unet_{_flat(t)}.lora_down.weight"] = d.down
        out[f"lora_unet_{_flat(t)}.lora_up.weight"] = d.up
        out[f"lora_unet_{_flat(t)}.alpha"] = torch.tensor(d.alpha)
    return out


def write_wan_fun(spec: Spec) -> Tensors:
    """VideoX-Fun: lora_unet__<path with _> (double underscore)."""
    return {k.replace("lora_unet_", "lora_unet__", 1): v for k, v in write_kohya(spec).items()}


def write_diffusers(spec: Spec) -> Tensors:
    """diffusers training scripts: transformer.<diffusers path>.lora_A/B.weight, alpha baked in."""
    names = dit_keys.official_to_diffusers({f"{t}.weight": t for t in spec})
    out: Tensors = {}
    for key, t in names.items():
        module = key[: -len(".weight")]
        down, up = _baked(spec[t])
        out[f"transformer.{module}.lora_A.weight"] = down
        out[f"transformer.{module}.lora_B.weight"] = up
    return out


def write_peft(spec: Spec) -> Tensors:
    """Raw PEFT save of the official model: base_model.model.<path>.lora_A/B.weight (no alpha)."""
    out: Tensors = {}
    for t, d in spec.items():
        down, up = _baked(d)
        out[f"base_model.model.{t}.lora_A.weight"] = down
        out[f"base_model.model.{t}.lora_B.weight"] = up
    return out


def write_diffsynth(spec: Spec) -> Tensors:
    """DiffSynth-Studio after --remove_prefix_in_ckpt: <path>.lora_A/B.default.weight (scale 1)."""
    out: Tensors = {}
    for t, d in spec.items():
        down, up = _baked(d)
        out[f"{t}.lora_A.default.weight"] = down
        out[f"{t}.lora_B.default.weight"] = up
    return out


def write_diffsynth_pipe(spec: Spec) -> Tensors:
    """Older DiffSynth: pipe.dit.<path>.lora_A/B.default.weight."""
    return {f"pipe.dit.{k}": v for k, v in write_diffsynth(spec).items()}


def write_loha(spec: Spec) -> Tensors:
    """LyCORIS LoHa (lycoris_ prefix): w1 = the low-rank pair, w2 = an all-ones rank-1 product."""
    out: Tensors = {}
    for t, d in spec.items():
        name = f"lycoris_{_flat(t)}"
        out[f"{name}.hada_w1_a"] = d.up
        out[f"{name}.hada_w1_b"] = d.down
        out[f"{name}.hada_w2_a"] = torch.ones(d.up.shape[0], 1)
        out[f"{name}.hada_w2_b"] = torch.ones(1, d.down.shape[1])
        out[f"{name}.alpha"] = torch.tensor(d.alpha)
    return out


def write_lokr(spec: Spec) -> Tensors:
    """LyCORIS LoKr (lycoris_ prefix): kron([[1]], w2_a @ w2_b) with alpha / rank of w2."""
    out: Tensors = {}
    for t, d in spec.items():
        name = f"lycoris_{_flat(t)}"
        out[f"{name}.lokr_w1"] = torch.ones(1, 1)
        out[f"{name}.lokr_w2_a"] = d.up
        out[f"{name}.lokr_w2_b"] = d.down
        out[f"{name}.alpha"] = torch.tensor(d.alpha)
    return out


WRITERS: dict[str, Callable[[Spec], Tensors]] = {
    "comfyui_ab": write_comfyui_ab,
    "comfyui_updown": write_comfyui_updown,
    "kohya": write_kohya,
    "wan_fun": write_wan_fun,
    "diffusers": write_diffusers,
    "peft": write_peft,
    "diffsynth": write_diffsynth,
    "diffsynth_pipe": write_diffsynth_pipe,
    "lycoris_loha": write_loha,
    "lycoris_lokr": write_lokr,
}


def write_lightx2v_diffs(model: WanDiT, seed: int = 3, magnitude: float = 0.05) -> tuple[Tensors, Tensors]:
    """lightx2v distill extras: .diff_b on Linear biases, .diff/.diff_b on norm3, .diff on q/k
    norms, blocks.N.diff_m on the modulation, head.head.diff. Returns (file, official deltas)."""
    gen = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    deltas: Tensors = {}
    for i in range(model.config.num_layers):
        for key in (f"blocks.{i}.cross_attn.k.bias", f"blocks.{i}.ffn.0.bias", f"blocks.{i}.norm3.weight",
                    f"blocks.{i}.norm3.bias", f"blocks.{i}.self_attn.norm_q.weight",
                    f"blocks.{i}.cross_attn.norm_k.weight", f"blocks.{i}.modulation"):
            deltas[key] = magnitude * torch.randn(sd[key].shape, generator=gen)
    deltas["head.head.weight"] = magnitude * torch.randn(sd["head.head.weight"].shape, generator=gen)
    out: Tensors = {}
    for key, d in deltas.items():
        if key.endswith(".modulation"):
            out[f"diffusion_model.{key[: -len('.modulation')]}.diff_m"] = d
        elif key.endswith(".bias"):
            out[f"diffusion_model.{key[: -len('.bias')]}.diff_b"] = d
        else:
            out[f"diffusion_model.{key[: -len('.weight')]}.diff"] = d
    return out, deltas


def add_to_copy(model: WanDiT, deltas: Tensors, strength: float = 1.0) -> WanDiT:
    """Ground truth for full deltas: a copy of ``model`` with ``strength · Δ`` added by key."""
    patched = WanDiT(model.config).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key, d in deltas.items():
        sd[key] += strength * d
    patched.load_state_dict(sd)
    return patched


def to_fp8(model: nn.Module, scaled: bool) -> None:
    """Store every ops.Linear weight as float8_e4m3fn, optionally ComfyUI-scaled (scale_weight)."""
    from wanflow.wan import ops

    for module in model.modules():
        if isinstance(module, ops.Linear):
            w = module.weight.data.float()
            if scaled:
                scale = w.abs().max() / 448.0
                module.weight.data = (w / scale).to(torch.float8_e4m3fn)
                module.set_scale_weight(scale.reshape(()))
            else:
                module.weight.data = w.to(torch.float8_e4m3fn)


def dequantized_copy(model: WanDiT) -> WanDiT:
    """An fp32 WanDiT holding exactly the values an fp8 model computes with."""
    from wanflow.wan import ops

    copy = WanDiT(model.config).eval()
    sd = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            if pname == "weight" and isinstance(module, ops.CastWeights):
                sd[key] = module.compute_weight(torch.float32)
            else:
                sd[key] = p.detach().float()
    copy.load_state_dict(sd)
    return copy
