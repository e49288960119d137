"""Which model fits which socket, decided from the detected variant alone.

These checks need only a :class:`WanVariant` (names and shapes from the file header), never the
weights. The nodes run them when they execute; the headless runner runs the same functions on
variants peeked from the headers before anything loads (``runner/model_kinds.py``), so a model
of the wrong kind fails in a second instead of after minutes of loading.

Conditioning kinds: nodes that produce WANFLOW_CONDITIONING declare ``CONDITIONING_KIND``:
``"text"`` (text encode), ``"image"`` (image-to-video), ``"reference"`` (reference-to-video, VACE)
or ``"subject"`` (subject-to-video, Phantom).
"""
from __future__ import annotations

from typing import Mapping, Optional

from ..model_loaders.detect import WanVariant
from ..samplers.conditioning import WanConditioning


def takes_image_latent(variant: WanVariant) -> bool:
    """I2V, FLF2V and Fun-InP models read mask + image-latent channels beside the noise (20, or 52 at 5B)."""
    return variant.config.in_dim != variant.config.out_dim


def check_expert_order(high: WanVariant, low: Optional[WanVariant]) -> None:
    """Two experts wired the wrong way round would sample without error but badly: refuse it.

    (A low-noise expert alone on model_high is allowed: some run it as a single model.)
    """
    if low is None:
        return
    if high.expert == "low" or low.expert == "high":
        raise ValueError(f"MoE sampler: model_high is {high.name} and model_low is {low.name}; "
                         "connect the high-noise expert to model_high and the low-noise expert to model_low")


def check_sampler_conditioning(variant: WanVariant, socket: str, kind: Optional[str]) -> None:
    """The conditioning's kind must be one the model on ``socket`` can use (``kind`` None: unknown)."""
    if kind is None:
        return
    if takes_image_latent(variant) and kind != "image":
        raise ValueError(f"MoE sampler: {socket} is {variant.name}, an image-to-video model, but its conditioning "
                         f"is {kind} conditioning; route it through a WanFlow Image to Video node (start_image), "
                         "or load a text-to-video model")
    if kind == "reference" and not variant.config.vace_layers:
        raise ValueError(f"MoE sampler: {socket} is {variant.name}, which has no VACE blocks, but the conditioning "
                         "comes from WanFlow Reference to Video; load a Wan VACE model for reference pictures")
    if kind == "subject" and variant.task != "t2v":
        raise ValueError(f"MoE sampler: {socket} is {variant.name}, but the conditioning comes from WanFlow Subject "
                         "to Video, which needs a Phantom-Wan model (a Wan 2.1 text-to-video DiT, e.g. "
                         "Phantom-Wan-14B_fp16.safetensors)")
    if kind == "image" and variant.task not in ("i2v", "flf2v", "ti2v"):
        raise ValueError(f"MoE sampler: {socket} is {variant.name}, a text-to-video model, but its conditioning "
                         "comes from WanFlow Image to Video; load an I2V or TI2V model for a start image")


def check_image_model(variant: WanVariant, *, end_image: bool, clip_vision: Optional[bool],
                      start_image: bool = True, what: str = "image-to-video") -> None:
    """Whether ``variant`` can take the connected start / end image (and CLIP features) at all.

    ``clip_vision`` None means "not known yet" (the runner's header check of a linked input).
    An end image alone is taken by the CLIP-free image-latent models only (Wan 2.2 I2V-A14B,
    Wan2.2-Fun-A14B-InP and Fun-5B-InP), as ComfyUI's WanFirstLastFrameToVideo takes it.
    """
    config = variant.config
    if not start_image and not end_image:
        raise ValueError(f"{what}: connect a start_image (and/or, on Wan 2.2 I2V-A14B / Fun-InP, an end_image)")
    if not takes_image_latent(variant):
        if config.model_type != "ti2v":
            raise ValueError(f"{what}: {variant.name} is a text-to-video model and takes no image; "
                             "load a Wan I2V, FLF2V or TI2V model")
        if end_image:
            raise ValueError(f"{what}: {variant.name} takes a start image only, not an end image")
    if config.flf_pos_len is not None and not (start_image and end_image):
        missing = "an end_image" if start_image else "a start_image"
        raise ValueError(f"{what}: {variant.name} is a first-last-frame model and needs {missing}: "
                         "connect both a start_image and an end_image")
    if not start_image and config.has_image_input:
        raise ValueError(f"{what}: {variant.name} needs a start_image (an end image alone works on the "
                         "CLIP-free Wan 2.2 I2V-A14B and Fun-InP models)")
    if config.has_image_input and clip_vision is False:
        raise ValueError(f"{what}: {variant.name} needs CLIP vision features: connect a "
                         "WanFlow CLIP Vision Loader (clip_vision_h.safetensors)")


def conditioning_kind(cond: WanConditioning) -> str:
    """What a built conditioning carries, in the words of ``CONDITIONING_KIND``."""
    if cond.y is not None or cond.first_frame is not None:
        return "image"
    if cond.vace_context is not None:
        return "reference"
    if cond.subjects is not None:
        return "subject"
    return "text"


def check_sampler_models(models: Mapping[str, WanVariant], kind: Optional[str]) -> None:
    """Everything the MoE sampler needs of its experts' kinds: order, then conditioning."""
    high, low = models.get("model_high"), models.get("model_low")
    if high is not None:
        check_expert_order(high, low)
    for socket, variant in models.items():
        check_sampler_conditioning(variant, socket, kind)
