"""Text encode: positive and negative prompts to the DiT context, cached by prompt text."""
from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from ..samplers.conditioning import WanConditioning
from ..samplers.guidance import OFFICIAL_NEGATIVE_PROMPT
from ..wan.umt5 import encode_prompts
from . import comfy_adapter
from .handles import TextEncoderHandle
from .types import CONDITIONING, CONDITIONING_MENU, TEXT_ENCODER

CACHE_SIZE = 16


class PromptCache:
    """Recently encoded prompts per encoder, so re-running a graph skips the text encoder."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self.entries: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()

    def get(self, encoder: object, prompt: str):
        key = (id(encoder), prompt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, encoder: object, prompt: str, context: torch.Tensor) -> None:
        if not any(key[0] == id(encoder) for key in self.entries):
            weakref.finalize(encoder, self._forget_id, id(encoder))  # ids are reused after deletion
        self.entries[(id(encoder), prompt)] = context
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def _forget_id(self, encoder_id: int) -> None:
        for key in [k for k in self.entries if k[0] == encoder_id]:
            del self.entries[key]


prompt_cache = PromptCache()


def encode_cached(handle: TextEncoderHandle, prompts: list[str]) -> list[torch.Tensor]:
    """DiT contexts ``[1, 512, dim]`` for each prompt, encoding only the ones not cached.

    Each prompt is encoded on its own (a batch of one): a batch's arithmetic can differ in the
    last bit with its other rows, and a prompt's context must not depend on which prompts were
    cached, or a warm process (``wanflow batch``'s workers) would give other frames than a fresh run."""
    missing = [p for p in dict.fromkeys(prompts) if prompt_cache.get(handle.encoder, p) is None]
    if missing:
        module = handle.encoder
        if handle.on_cpu:
            contexts = [encode_prompts(module, handle.tokenizer, [p])[0] for p in missing]
        else:
            with comfy_adapter.model_on_compute_device(module, "text_encoder"):
                contexts = [encode_prompts(module, handle.tokenizer, [p])[0] for p in missing]
        for prompt, context in zip(missing, contexts):
            prompt_cache.put(handle.encoder, prompt, context.unsqueeze(0).to(comfy_adapter.offload_device()))
    return [prompt_cache.get(handle.encoder, p) for p in prompts]


class WanFlowTextEncode:
    DESCRIPTION = "Encode the positive and negative prompts with umT5 (results cached by prompt text)."
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    CONDITIONING_KIND = "text"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text_encoder": (TEXT_ENCODER, {"tooltip": "From WanFlow Text Encoder Loader (umT5-XXL)."}),
            "positive": ("STRING", {"multiline": True, "default": "", "tooltip":
                         "What the video should show. Wan understands English and Chinese."}),
            "negative": ("STRING", {"multiline": True, "default": OFFICIAL_NEGATIVE_PROMPT, "tooltip":
                         "What to avoid (used when cfg > 1). The default is Wan's official negative prompt."}),
        }}

    def encode(self, text_encoder: TextEncoderHandle, positive: str, negative: str) -> tuple[WanConditioning]:
        context, negative_context = encode_cached(text_encoder, [positive, negative])
        return (WanConditioning(context=context, negative_context=negative_context),)
