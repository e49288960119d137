"""Bridges between ComfyUI's core types and ours (only meaningful inside ComfyUI).

- Core ``MODEL`` (a ``ModelPatcher`` around a core Wan model: ``UNETLoader``, GGUF loaders of other
  packs, after core LoRA loaders and model patches) drives our MoE sampler through
  :class:`CoreWanModel`, which gives it our DiT's call contract with ComfyUI's conventions (float
  sigma in, denoised out, unpadded context, the patcher's ``transformer_options``).
- Core ``CONDITIONING`` (``CLIPTextEncode`` with a ``wan`` CLIP) becomes our conditioning, taken at
  its own length (core never pads), and our text conditioning goes out to core the same way.
- Core ``CLIP_VISION_OUTPUT`` gives the Wan 2.1 I2V image tokens (its penultimate hidden states).

Everything here is duck-typed on ComfyUI's objects: nothing imports ComfyUI.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..model_loaders.detect import WanVariant, detect_dit_variant
from ..samplers.conditioning import WanConditioning
from .comfy_models import ComfyPlacement
from .handles import ModelHandle

CoreConditioning = list  # [[context [B, L, 4096], {options}], ...]

# Keys of a core conditioning entry that carry more than text: made by core's Wan image/VACE nodes,
# whose work our own conditioning nodes do.
_NOT_TEXT = {"concat_latent_image": "WanFlow Image to Video", "concat_mask": "WanFlow Image to Video",
             "clip_vision_output": "WanFlow Image to Video (its clip_vision_output input)",
             "vace_frames": "WanFlow Reference to Video (VACE)", "vace_mask": "WanFlow Reference to Video (VACE)",
             "reference_latents": "WanFlow Reference to Video (VACE)",
             "time_dim_concat": "WanFlow Subject to Video (Phantom)"}


def is_core_model(value: Any) -> bool:
    """True for a core ComfyUI MODEL (a ModelPatcher whose model has a ``diffusion_model``)."""
    return hasattr(value, "load_device") and hasattr(getattr(value, "model", None), "diffusion_model")


class CoreWanModel:
    """A core Wan MODEL called like our DiT: ``model(x, t, context, *, y, clip_fea, vace_context,
    vace_scale) -> velocity``, so our MoE sampler (experts, boundary, solvers) can drive it.

    It goes through core's ``apply_model``, which applies the patcher's patches and wrappers; core
    returns the denoised latent, turned back into the velocity ``(x - denoised) / sigma``.
    """

    def __init__(self, patcher: Any) -> None:
        self.patcher = patcher

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                 y: Optional[torch.Tensor] = None, clip_fea: Optional[torch.Tensor] = None,
                 vace_context: Any = None, vace_scale: Any = 1.0, pad_context: bool = True) -> torch.Tensor:
        if t.ndim != 1:
            raise ValueError("MoE sampler: a core MODEL takes one timestep per sample; the per-token timesteps of "
                             "TI2V-5B image-to-video need a model loaded by WanFlow Model Loader")
        sigma = t.to(x.device, torch.float32) / 1000.0
        extras: dict[str, Any] = {}
        if clip_fea is not None:
            extras["clip_fea"] = clip_fea
        if vace_context is not None:
            contexts = [vace_context] if torch.is_tensor(vace_context) else list(vace_context)
            scales = vace_scale if isinstance(vace_scale, (list, tuple)) else [float(vace_scale)] * len(contexts)
            extras["vace_context"] = torch.stack(contexts, dim=0)
            extras["vace_strength"] = [float(s) for s in scales]
        options = self.patcher.model_options.get("transformer_options", {})
        denoised = self.patcher.model.apply_model(x, sigma, c_concat=y, c_crossattn=context,
                                                  transformer_options=dict(options), **extras)
        sigma = sigma.view(-1, *([1] * (x.ndim - 1)))
        return (x.float() - denoised.float()) / sigma


def core_variant(patcher: Any) -> WanVariant:
    """Our variant record for a core Wan model, read from its (official-key) weight shapes."""
    net = patcher.model.diffusion_model
    shapes = {key: tuple(tensor.shape) for key, tensor in net.state_dict().items()}
    count = getattr(net, "vace_layers", None)
    vace_layers = tuple(range(0, net.num_layers, net.num_layers // count)) if count else None
    return detect_dit_variant(shapes, "core MODEL", num_heads=getattr(net, "num_heads", None),
                              vace_layers=vace_layers)


def handle_from_core(patcher: Any, socket: str) -> ModelHandle:
    """A WANFLOW_MODEL handle over a core MODEL, placed by ComfyUI's model management."""
    try:
        variant = core_variant(patcher)
    except ValueError as exc:
        raise ValueError(f"MoE sampler: {socket}: the core MODEL is not a Wan model WanFlow can sample: {exc}") from exc
    return ModelHandle(CoreWanModel(patcher), variant, file_format="core MODEL",  # type: ignore[arg-type]
                       parking=ComfyPlacement(patcher))


def as_model_handle(value: Any, node: str, socket: str) -> ModelHandle:
    """The handle for a model socket that takes ours (WANFLOW_MODEL) or core's (MODEL)."""
    if isinstance(value, ModelHandle):
        return value
    if is_core_model(value):
        return handle_from_core(value, f"{node}: {socket}")
    raise TypeError(f"{node}: {socket}: expected a WanFlow model or a core Wan MODEL; got {type(value).__name__}")


def clip_tokens_from_core(output: Any, node: str) -> torch.Tensor:
    """The Wan 2.1 image tokens ``[1, 257·images, 1280]`` from a core CLIP_VISION_OUTPUT (its
    penultimate hidden states, as core's Wan nodes use them; two images give FLF2V's 514)."""
    tokens = getattr(output, "penultimate_hidden_states", None)
    if tokens is None and isinstance(output, dict):
        tokens = output.get("penultimate_hidden_states")
    if not torch.is_tensor(tokens) or tokens.ndim != 3:
        raise ValueError(f"{node}: clip_vision_output: expected core CLIPVisionEncode's output with "
                         "penultimate_hidden_states [images, 257, 1280]")
    return tokens.float().reshape(1, -1, tokens.shape[-1])


def _text_of(conditioning: CoreConditioning, node: str, socket: str) -> torch.Tensor:
    """The text context of a one-entry core CONDITIONING, after checking it holds nothing else."""
    if not isinstance(conditioning, list) or len(conditioning) != 1 or len(conditioning[0]) != 2:
        found = f"{len(conditioning)} entries" if isinstance(conditioning, list) else type(conditioning).__name__
        raise ValueError(f"{node}: {socket}: expected the CONDITIONING of one prompt (CLIPTextEncode with a wan CLIP); "
                         f"found {found} (combined or area conditionings are not supported)")
    context, options = conditioning[0]
    for key in options:
        if key in _NOT_TEXT:
            raise ValueError(f"{node}: {socket}: this CONDITIONING carries {key!r} from a core Wan node; use "
                             f"{_NOT_TEXT[key]} for that part, and give this node the text conditioning only")
    if not torch.is_tensor(context) or context.ndim != 3:
        shape = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
        raise ValueError(f"{node}: {socket}: expected text embeddings [batch, tokens, 4096]; found {shape}")
    return context


def conditioning_from_core(positive: CoreConditioning, negative: Optional[CoreConditioning],
                           node: str = "WanFlow Conditioning from Core") -> WanConditioning:
    """Our conditioning from core text conditionings, taken unpadded as core models take them."""
    context = _text_of(positive, node, "positive")
    negative_context = None if negative is None else _text_of(negative, node, "negative")
    if negative_context is not None and negative_context.shape[2] != context.shape[2]:
        raise ValueError(f"{node}: positive has width {context.shape[2]} but negative {negative_context.shape[2]}; "
                         "both must come from the same text encoder")
    return WanConditioning(context=context, negative_context=negative_context, pad_context=False)


def conditioning_to_core(conditioning: WanConditioning,
                         node: str = "WanFlow Conditioning to Core") -> tuple[CoreConditioning, CoreConditioning]:
    """Core positive / negative CONDITIONING from our text conditioning (same [1, L, 4096] tensors)."""
    extra = [name for name, value in (("image (I2V)", conditioning.y), ("CLIP image", conditioning.clip_fea),
                                      ("VACE", conditioning.vace_context), ("first frame", conditioning.first_frame),
                                      ("subject pictures (Phantom)", conditioning.subjects))
             if value is not None]
    if extra:
        raise ValueError(f"{node}: the conditioning carries {', '.join(extra)} besides the text, which core "
                         "CONDITIONING cannot hold here; connect the WanFlow Text Encode output instead")
    if conditioning.negative_context is None:
        raise ValueError(f"{node}: the conditioning has no negative prompt; connect WanFlow Text Encode")
    return [[conditioning.context, {}]], [[conditioning.negative_context, {}]]
