"""Classifier-free guidance for one model call.

``uncond + g·(cond − uncond)``, the formula of the official code, diffusers and ComfyUI.
At ``g == 1`` the unconditional pass is skipped entirely (half the compute, as in ComfyUI).
Cond and uncond go through one batched forward by default; ``batched=False`` runs two forwards
(cond first, then uncond, like the official code) for when memory is tight.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from .subject_conditioning import video_part, with_subjects

# model(x, t, context, **extras) -> velocity; extras are the DiT keyword inputs (y, clip_fea, …).
ModelFn = Callable[..., torch.Tensor]
CfgSchedule = Union[float, Sequence[float]]

# The official Wan negative prompt (shared_config.sample_neg_prompt in Wan 2.1 / 2.2): the
# unconditional side of guidance in every template, and of CFG dropout when training.
OFFICIAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")


def cfg_at(cfg: CfgSchedule, step: int, where: str = "cfg") -> float:
    """The guidance scale of ``step``: a constant, or the step's entry of a per-step list."""
    if isinstance(cfg, (int, float)):
        return float(cfg)
    values = list(cfg)
    if step >= len(values):
        raise ValueError(f"{where}: per-step CFG list has {len(values)} entries, step {step} "
                         f"needs at least {step + 1}")
    return float(values[step])


def combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale·(cond − uncond)``."""
    return uncond + scale * (cond - uncond)


def _pad_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad ``[B, L, D]`` text embeddings to ``length`` tokens (the DiT pads the same way)."""
    if context.shape[1] == length:
        return context
    pad = context.new_zeros(context.shape[0], length - context.shape[1], context.shape[2])
    return torch.cat([context, pad], dim=1)


def _repeat_batch(value, times: int = 2):
    """Tensors (and lists of tensors, e.g. stacked VACE contexts) repeated along the batch."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * times, dim=0)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [torch.cat([v] * times, dim=0) for v in value]
    return value


def guided_velocity(model: ModelFn, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                    negative_context: Optional[torch.Tensor], scale: float, *,
                    batched: bool = True, extras: Optional[dict] = None) -> torch.Tensor:
    """The guided model output for one step.

    ``extras`` (y, clip_fea, vace_context, …) are shared by the cond and uncond passes, as in the
    official code. With ``scale == 1`` or no negative context only the conditional pass runs.
    """
    extras = extras or {}
    if scale == 1.0 or negative_context is None:
        return model(x, t, context, **extras)
    cond, uncond = _passes(model, t, [(x, context), (x, negative_context)], batched, extras)
    return combine(cond, uncond, scale)


def _passes(model: ModelFn, t: torch.Tensor, inputs: list[tuple[torch.Tensor, torch.Tensor]], batched: bool,
            extras: dict) -> list[torch.Tensor]:
    """One model output per ``(x, context)``, from one batched forward or one forward each (in order)."""
    if not batched or len(inputs) == 1:
        return [model(x, t, context, **extras) for x, context in inputs]
    length = max(context.shape[1] for _, context in inputs)
    x = torch.cat([x for x, _ in inputs], dim=0)
    contexts = torch.cat([_pad_tokens(context, length) for _, context in inputs], dim=0)
    times = len(inputs)
    out = model(x, _repeat_batch(t, times), contexts, **{k: _repeat_batch(v, times) for k, v in extras.items()})
    return list(out.chunk(times, dim=0))


def subject_guided_velocity(model: ModelFn, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                            negative_context: Optional[torch.Tensor], subjects: torch.Tensor,
                            text_scale: float, image_scale: float, *, batched: bool = True,
                            extras: Optional[dict] = None) -> torch.Tensor:
    """Phantom's three-pass guidance for one step, over the video frames of ``x``.

    ``neither + s_img·(pictures − neither) + s_text·(both − pictures)``: *both* = text and subject
    frames, *pictures* = negative text and subject frames, *neither* = negative text and zero
    subject frames (official Phantom ``guide_scale_img`` / ``guide_scale_text``; ComfyUI's
    DualCFGGuider "regular" with cfg_conds = s_text, cfg_cond2_negative = s_img). Like ComfyUI,
    ``s_img == 1`` skips the *neither* pass and ``s_img == s_text == 1`` runs *both* alone; with no
    negative context only *both* runs.
    """
    extras = extras or {}
    frames = x.shape[2]
    joined = with_subjects(x, subjects)
    inputs = [(joined, context)]
    if negative_context is not None and not (text_scale == 1.0 and image_scale == 1.0):
        inputs.append((joined, negative_context))
        if image_scale != 1.0:
            inputs.append((with_subjects(x, torch.zeros_like(subjects)), negative_context))
    outs = [video_part(out, frames) for out in _passes(model, t, inputs, batched, extras)]
    if len(outs) == 1:
        return outs[0]
    both, pictures = outs[0], outs[1]
    base = combine(pictures, outs[2], image_scale) if len(outs) == 3 else pictures
    return base + text_scale * (both - pictures)
