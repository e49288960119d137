"""LoRA select: a chainable list of LoRAs, each with a file and a strength per Wan 2.2 expert.

The node only records the choice; the MoE sampler applies the stack to the experts for the
duration of its run (run-time adapters, weights untouched) and removes it afterwards, so one
loaded model serves workflows with and without LoRAs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..model_loaders.lora_files import LoraFile, read_lora_file
from ..wan.lora import LoraStack
from . import comfy_adapter
from .types import CONDITIONING_MENU, LORA_STACK

NONE = "none"


@dataclass(frozen=True)
class LoraChoice:
    """One entry of a WANFLOW_LORA_STACK: file names (or None) and strengths per expert."""

    high: Optional[str]
    low: Optional[str]
    strength_high: float
    strength_low: float

    @property
    def label(self) -> str:
        return " / ".join(name for name in (self.high, self.low) if name)


class WanFlowLoraSelect:
    DESCRIPTION = ("Add a LoRA (or a high/low pair) to the stack. Single-expert models (Wan 2.1, TI2V-5B) "
                   "use the high-noise file and strength. Chain several of these nodes.")
    CATEGORY = CONDITIONING_MENU
    RETURN_TYPES = (LORA_STACK,)
    RETURN_NAMES = ("lora_stack",)
    FUNCTION = "select"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        files = [NONE] + comfy_adapter.list_models("loras")
        return {
            "required": {
                "lora_high": (files, {"default": NONE, "tooltip":
                              "LoRA for the high-noise expert (or the only model). 'none' skips it."}),
                "strength_high": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                                  "Strength on the high-noise expert."}),
                "lora_low": (files, {"default": NONE, "tooltip":
                             "LoRA for the low-noise expert of Wan 2.2 A14B. 'none' skips it; pick the same "
                             "file as above to use one LoRA on both experts."}),
                "strength_low": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip":
                                 "Strength on the low-noise expert."}),
            },
            "optional": {
                "lora_stack": (LORA_STACK, {"tooltip": "Stack from a previous LoRA select node to extend."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, lora_high: str, lora_low: str) -> Union[bool, str]:
        """Checked before the run: safe names of files that exist in the loras folder."""
        for name, what in ((lora_high, "LoRA select: lora_high"), (lora_low, "LoRA select: lora_low")):
            verdict = True if name == NONE else comfy_adapter.model_file_verdict("loras", name, what)
            if verdict is not True:
                return verdict
        return True

    def select(self, lora_high: str, strength_high: float, lora_low: str, strength_low: float,
               lora_stack: Optional[tuple] = None) -> tuple[tuple]:
        if lora_high == NONE and lora_low == NONE:
            return (tuple(lora_stack or ()),)
        choice = LoraChoice(None if lora_high == NONE else lora_high, None if lora_low == NONE else lora_low,
                            float(strength_high), float(strength_low))
        return (tuple(lora_stack or ()) + (choice,),)


_cache: dict[tuple[str, float], LoraFile] = {}


def _read_cached(name: str) -> LoraFile:
    """LoRA tensors by file, re-read only when the file changed."""
    path = comfy_adapter.model_path("loras", name, "LoRA")
    key = (path, Path(path).stat().st_mtime)
    if key not in _cache:
        for old in [k for k in _cache if k[0] == path]:
            del _cache[old]
        _cache[key] = read_lora_file(path)
    return _cache[key]


def build_lora_stack(choices: tuple) -> LoraStack:
    """A wan.lora.LoraStack from the node's choices (each file read once)."""
    stack = LoraStack()
    for index, choice in enumerate(choices):
        high = _read_cached(choice.high) if choice.high else None
        low = _read_cached(choice.low) if choice.low else None
        if high is not None and low is not None and high is not low:
            # A high/low pair: one entry per file, so each keeps its own default alpha.
            stack.add(f"{index + 1}: {choice.high}", high=high.state_dict, low=None,
                      strength_high=choice.strength_high, default_alpha=high.default_alpha)
            stack.add(f"{index + 1}: {choice.low}", high=None, low=low.state_dict,
                      strength_low=choice.strength_low, default_alpha=low.default_alpha)
            continue
        source = high or low
        stack.add(f"{index + 1}: {choice.label}", high=high.state_dict if high else None,
                  low=low.state_dict if low else None, strength_high=choice.strength_high,
                  strength_low=choice.strength_low, default_alpha=source.default_alpha)
    return stack
