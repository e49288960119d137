"""Nodes that carry conditioning between ComfyUI's core sockets and ours (see core_bridge.py)."""
from __future__ import annotations

from typing import Optional

from ..samplers.conditioning import WanConditioning
from .core_bridge import CoreConditioning, conditioning_from_core, conditioning_to_core
from .types import CONDITIONING, CONDITIONING_MENU, CORE_CONDITIONING


class WanFlowConditioningFromCore:
    DESCRIPTION = ("Core CONDITIONING in, WanFlow conditioning out: text from core CLIPTextEncode with a wan "
                   "(umT5) CLIP, for WanFlow Image to Video, Reference to Video and the MoE sampler. The text is "
                   "taken at its own length, unpadded, as core Wan models take it.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "convert"
    CONDITIONING_KIND = "text"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "positive": (CORE_CONDITIONING, {"tooltip": "From core CLIPTextEncode (CLIP loaded with type wan)."}),
        }, "optional": {
            "negative": (CORE_CONDITIONING, {"tooltip": "The negative prompt, the same way; needed for cfg > 1."}),
        }}

    def convert(self, positive: CoreConditioning, negative: Optional[CoreConditioning] = None) -> tuple:
        return (conditioning_from_core(positive, negative),)


class WanFlowConditioningToCore:
    DESCRIPTION = ("WanFlow text conditioning out to core CONDITIONING (positive, negative), e.g. for core "
                   "KSampler with a core Wan MODEL. The text keeps WanFlow's 512-token padding, as the official "
                   "Wan code pads it. Image and VACE conditioning stay on WanFlow sockets.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CORE_CONDITIONING, CORE_CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "conditioning": (CONDITIONING, {"tooltip": "From WanFlow Text Encode."}),
        }}

    def convert(self, conditioning: WanConditioning) -> tuple:
        return conditioning_to_core(conditioning)
