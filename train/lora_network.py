"""Trainable LoRA adapters on a frozen :class:`~..wan.dit.WanDiT`, and their export.

The base model is never copied: every ``ops.Linear`` keeps its weight in the dtype it was loaded
in (bf16, fp8, scaled fp8), and while attached for training its forward runs through
:class:`_FrozenLinear`, which recasts the stored weight in backward instead of letting autograd
keep an upcast copy of every layer. Each adapter adds ``scale · up(down(x))``, computed in
float32, to its layer's output through ``Linear.adapters`` (the same hook ``wan/lora.py`` uses).

The export is ComfyUI's LoRA dialect (``diffusion_model.blocks.N.<module>.lora_A/lora_B.weight``
and ``.alpha``), which our own loader (``model_loaders/lora_formats.py``) and core ComfyUI read.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..wan import gguf_ops, ops
from ..wan.dit import WanDiT
from .nano_files import save_tensors

ATTENTION_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                     "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o")
FFN_TARGETS = ("ffn.0", "ffn.2")
DEFAULT_TARGETS = ATTENTION_TARGETS + FFN_TARGETS
"""The Linear layers of a block that Wan LoRA trainers adapt by default (attention and FFN)."""
CLIP_TARGETS = ("cross_attn.k_img", "cross_attn.v_img")
"""Wan 2.1 I2V/FLF2V only; opt-in, since other models do not have them."""
FILE_PREFIX = "diffusion_model."
TRAINER_NAME = "wanflow"


@dataclass(frozen=True)
class LoraConfig:
    """What to adapt: ``rank``, ``alpha`` (scale ``alpha / rank``), block-relative ``targets`` and
    the ``blocks`` to adapt (None: all of them)."""

    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    blocks: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoraConfig: rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoraConfig: alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("LoraConfig: targets is empty; name at least one Linear layer")
        allowed = DEFAULT_TARGETS + CLIP_TARGETS
        unknown = [t for t in self.targets if t not in allowed]
        if unknown:
            raise ValueError(f"LoraConfig: unknown targets {unknown}; choose from {list(allowed)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def target_paths(model: WanDiT, config: LoraConfig) -> list[str]:
    """Official module paths (``blocks.N.self_attn.q`` ...) that ``config`` adapts in ``model``."""
    layers = model.config.num_layers
    blocks = range(layers) if config.blocks is None else config.blocks
    bad = [b for b in blocks if not 0 <= b < layers]
    if bad:
        raise ValueError(f"LoRA blocks {bad} do not exist; this model has blocks 0..{layers - 1}")
    paths = [f"blocks.{b}.{t}" for b in sorted(set(blocks)) for t in config.targets]
    missing = [p for p in paths if not isinstance(_get(model, p), ops.Linear)]
    if missing:
        raise ValueError(f"LoRA targets missing from this {model.config.model_type} model: "
                         f"{missing[:4]}{' ...' if len(missing) > 4 else ''}")
    return paths


def _get(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------

class LoraAdapter(nn.Module):
    """``y + scale · up(down(x))`` with float32 factors; ``up`` starts at zero so training starts
    from the base model's own output."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        bound = in_features ** -0.5  # PEFT's kaiming-uniform(a=sqrt(5)) bound for the down factor
        down = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.linear(x.float(), self.down)
        if y.dtype == torch.float32:
            # one fused multiply-add: no output-sized temporaries for the product and its scaling
            # (at FFN width they are the largest tensors of a block)
            return torch.addmm(y.flatten(0, -2), h.flatten(0, -2), self.up.t(), alpha=self.scale).view(y.shape)
        return y + (F.linear(h, self.up) * self.scale).to(y.dtype)


def _module_key(path: str) -> str:
    """ModuleDict keys may not contain dots."""
    return path.replace(".", "__")


class LoraNetwork(nn.Module):
    """The adapters for one model, keyed by target path. Its ``state_dict`` holds only the LoRA
    factors, so the training loop checkpoints these and never the frozen base."""

    def __init__(self, config: LoraConfig, shapes: Mapping[str, tuple[int, int]], seed: int = 0) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.adapters = nn.ModuleDict({
            _module_key(path): LoraAdapter(in_f, out_f, config.rank, config.scale, generator)
            for path, (out_f, in_f) in shapes.items()})

    @classmethod
    def for_model(cls, model: WanDiT, config: LoraConfig, seed: int = 0) -> "LoraNetwork":
        """Adapters for the targets of ``config`` in ``model``, on the model's device."""
        shapes = {p: tuple(gguf_ops.weight_shape(model.get_submodule(p))) for p in target_paths(model, config)}
        network = cls(config, shapes, seed)
        return network.to(next(model.parameters()).device)

    def items(self) -> list[tuple[str, LoraAdapter]]:
        """``(official target path, adapter)`` pairs."""
        return [(key.replace("__", "."), adapter) for key, adapter in self.adapters.items()]


# --------------------------------------------------------------------------------------------
# The frozen base
# --------------------------------------------------------------------------------------------

CHUNK_BYTES = {"cpu": 2 * 1024 * 1024}
"""Largest piece of a frozen weight recast at once, per device type. A whole FFN weight of a 14B
model is 283 MB in float32; recasting it in row chunks keeps the transient (and the fp8 -> float
intermediate) small next to the stored model, whatever the layer size. On the CPU, where the
trainer's RAM is the budget, chunks are 2 MB (1 MB saves 0.01 of the 1.3x budget of the memory
bench but makes a step markedly slower); on accelerators :data:`ACCELERATOR_CHUNK_BYTES`, so a
14B layer is a few matmuls rather than hundreds of small ones."""

ACCELERATOR_CHUNK_BYTES = 64 * 1024 * 1024


def _weight_rows(layer: ops.Linear, dtype: torch.dtype):
    """``(rows, weight[rows] in dtype)`` chunks of ``layer``'s weight, each at most the device's chunk size."""
    out_features, in_features = gguf_ops.weight_shape(layer)
    budget = CHUNK_BYTES.get(layer.weight.device.type, ACCELERATOR_CHUNK_BYTES)
    step = max(1, budget // (in_features * max(4, torch.empty((), dtype=dtype).element_size())))
    scale = getattr(layer, "scale_weight", None)
    for start in range(0, out_features, step):
        rows = slice(start, min(start + step, out_features))
        if gguf_ops.is_quantized(layer):  # GGUF blocks: unpack these rows
            yield rows, gguf_ops.weight_rows(layer, rows, dtype)
            continue
        row_scale = scale[rows] if scale is not None and scale.numel() > 1 else scale
        yield rows, ops.dequantize(layer.weight[rows], dtype, row_scale)


class _FrozenLinear(torch.autograd.Function):
    """A frozen storage-dtype Linear and its LoRA adapters as one autograd node.

    Plain autograd would keep the upcast weight of every layer until backward (a wider copy of
    the whole model); here forward and backward recast the stored weight a few rows at a time
    (:data:`CHUNK_BYTES`), so no layer is ever held in the compute dtype as a whole. The adapters'
    deltas (float32 factors, ``scale · up(down(x))``) are added in place, and in backward every
    path's input gradient goes into one buffer: at FFN width an input-sized tensor is the largest
    of a block, and separate nodes would each make their own and then sum them.

    ``apply(x, layer, scales, down_1, up_1, down_2, up_2, ...)``; ``apply(x, layer)`` is the base alone.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: ops.Linear, scales: Sequence[float] = (),  # type: ignore[override]
                *factors: torch.Tensor) -> torch.Tensor:
        ctx.layer, ctx.scales = layer, tuple(scales)
        bias = layer.compute_bias(x.dtype)
        y = x.new_empty(*x.shape[:-1], layer.out_features)
        for rows, weight in _weight_rows(layer, x.dtype):
            y[..., rows] = F.linear(x, weight, None if bias is None else bias[rows])
        if not factors:
            return y
        x32, y_flat = x.reshape(-1, x.shape[-1]).float(), y.view(-1, y.shape[-1])
        lows = []
        for scale, down, up in zip(ctx.scales, factors[0::2], factors[1::2]):
            low = x32 @ down.t()
            if y.dtype == torch.float32:
                y_flat.addmm_(low, up.t(), alpha=scale)
            else:
                y_flat.add_((low @ up.t()).mul_(scale).to(y.dtype))
            lows.append(low)
        ctx.save_for_backward(x, *factors, *lows)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        flat = grad.reshape(-1, grad.shape[-1])
        grad_x: Optional[torch.Tensor] = None
        if ctx.needs_input_grad[0]:
            for rows, weight in _weight_rows(ctx.layer, grad.dtype):
                if grad_x is None:
                    grad_x = flat[:, rows] @ weight
                else:  # accumulate in place: a product per chunk would be an input-sized temporary
                    grad_x.addmm_(flat[:, rows], weight)
        if not ctx.scales:
            return _shaped(grad_x, grad), None, None
        x, *rest = ctx.saved_tensors
        count = len(ctx.scales)
        factors, lows = rest[:2 * count], rest[2 * count:]
        x32, grad32 = x.reshape(-1, x.shape[-1]).float(), flat.float()
        factor_grads: list[torch.Tensor] = []
        for scale, down, up, low in zip(ctx.scales, factors[0::2], factors[1::2], lows):
            grad_low = (grad32 @ up).mul_(scale)
            factor_grads += [grad_low.t() @ x32, (grad32.t() @ low).mul_(scale)]
            if grad_x is not None:
                if grad_x.dtype == torch.float32:
                    grad_x.addmm_(grad_low, down)
                else:
                    grad_x.add_((grad_low @ down).to(grad_x.dtype))
        return (_shaped(grad_x, grad), None, None, *factor_grads)


def _shaped(grad_x: Optional[torch.Tensor], grad: torch.Tensor) -> Optional[torch.Tensor]:
    return None if grad_x is None else grad_x.view(*grad.shape[:-1], grad_x.shape[-1])


def _frozen_forward(layer: ops.Linear, x: torch.Tensor) -> torch.Tensor:
    adapters = layer.adapters
    factors = [t for adapter in adapters for t in (adapter.down, adapter.up)]
    return _FrozenLinear.apply(x, layer, tuple(a.scale for a in adapters), *factors)


FFN_TOKEN_CHUNKS = 2
"""With gradient checkpointing, each block's feed-forward also runs on this many token slices,
each checkpointed: the FFN's hidden activations (4-6x the width) are then live for one slice at
a time during backward instead of for the whole sequence, which is where a block's backward
peaks. The FFN is token-wise, so the result is the same. It costs one more FFN forward a step;
on the CPU memory bench's short clip, where recasting the weights dominates, up to 1.5x the
time per step."""


def _chunked_ffn(forward, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled() or x.shape[1] < FFN_TOKEN_CHUNKS:
        return forward(x)
    return torch.cat([checkpoint(forward, part, use_reentrant=False)
                      for part in x.chunk(FFN_TOKEN_CHUNKS, dim=1)], dim=1)


def _checkpointed_forward(forward, *args, **kwargs) -> torch.Tensor:
    """Run a block and recompute it in backward instead of keeping its activations."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


class LoraAttachment:
    """A network attached to a model for training; :meth:`remove` undoes every change.

    Attaching freezes every base parameter, routes each ``ops.Linear`` through
    :class:`_FrozenLinear`, appends the adapters to their layers and, with
    ``gradient_checkpointing``, makes each block recompute its activations in backward (and its
    feed-forward a token slice at a time, :data:`FFN_TOKEN_CHUNKS`).
    """

    def __init__(self, model: WanDiT, network: LoraNetwork, gradient_checkpointing: bool = False) -> None:
        self.model, self.network = model, network
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._patched: list[nn.Module] = []
        self._adapted: list[tuple[ops.Linear, LoraAdapter]] = []
        try:
            model.requires_grad_(False)
            for module in model.modules():
                if isinstance(module, ops.Linear):
                    self._override(module, partial(_frozen_forward, module))
            for path, adapter in network.items():
                layer = model.get_submodule(path)
                layer.adapters.append(adapter)
                self._adapted.append((layer, adapter))
            if gradient_checkpointing:
                for block in model.blocks:
                    self._override(block, partial(_checkpointed_forward, block.forward))
                    self._override(block.ffn, partial(_chunked_ffn, block.ffn.forward))
        except Exception:
            self.remove()
            raise

    def _override(self, module: nn.Module, forward) -> None:
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} already has a patched forward; is a LoRA "
                               "network already attached to this model?")
        module.forward = forward
        self._patched.append(module)

    def remove(self) -> None:
        for layer, adapter in self._adapted:
            layer.adapters[:] = [a for a in layer.adapters if a is not adapter]
        self._adapted.clear()
        for module in self._patched:
            del module.forward
        self._patched.clear()
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, p.requires_grad))

    def __enter__(self) -> "LoraAttachment":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach_lora(model: WanDiT, network: LoraNetwork, *, gradient_checkpointing: bool = False) -> LoraAttachment:
    """Attach ``network`` to ``model`` for training or previews (a context manager)."""
    return LoraAttachment(model, network, gradient_checkpointing)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def lora_state_dict(network: LoraNetwork, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The adapters in ComfyUI's key format: ``diffusion_model.<path>.lora_A.weight`` (down),
    ``.lora_B.weight`` (up) and the ``.alpha`` scalar, on CPU."""
    out: dict[str, torch.Tensor] = {}
    alpha = torch.tensor(float(network.config.alpha), dtype=torch.float32)
    for path, adapter in network.items():
        key = f"{FILE_PREFIX}{path}"
        out[f"{key}.lora_A.weight"] = adapter.down.detach().to("cpu", dtype).contiguous()
        out[f"{key}.lora_B.weight"] = adapter.up.detach().to("cpu", dtype).contiguous()
        out[f"{key}.alpha"] = alpha.clone()
    return out


def lora_metadata(network: LoraNetwork, *, base_model: str, steps: int,
                  extra: Optional[Mapping[str, object]] = None) -> dict[str, str]:
    """Safetensors metadata (strings only) naming the base model, rank, steps and the trainer."""
    cfg = network.config
    meta = {"trainer": TRAINER_NAME, "base_model": base_model, "rank": str(cfg.rank),
            "alpha": f"{cfg.alpha:g}", "steps": str(int(steps)), "targets": ",".join(cfg.targets),
            "blocks": "all" if cfg.blocks is None else ",".join(map(str, cfg.blocks)),
            "format": "comfyui"}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_lora(network: LoraNetwork, path: Union[str, Path], metadata: Mapping[str, str], *,
              dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write the adapters as a ComfyUI LoRA safetensors file; an existing file is kept unless
    ``overwrite`` (a finished LoRA is never lost to a rerun)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or pass overwrite=True")
    save_tensors(path, lora_state_dict(network, dtype), dict(metadata))
    return path


def expert_file_paths(output: Union[str, Path], experts: Sequence[str] = ("high", "low")) -> dict[str, Path]:
    """``name_high_noise.safetensors`` / ``name_low_noise.safetensors`` beside ``output``: the
    names users share expert pairs under, which ``lora_files.guess_expert`` recognises."""
    output = Path(output)
    suffix = output.suffix or ".safetensors"
    return {e: output.with_name(f"{output.stem}_{e}_noise{suffix}") for e in experts}
