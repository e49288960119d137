"""Run the shipped templates on the WanNano models (``nano/models``): the demo, tests, ComfyUI checks.

Each template keeps its graph; only file names, size, length and the sampler settings change to
the nano models' own (see ``model_loaders.detect.NANO_DEFAULTS``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..model_loaders.detect import NANO_DEFAULTS
from ..nano.files import LORA_STYLES, NANO
from ..nano.vocabulary import FRAMES, HEIGHT, WIDTH
from . import execute, templates

T2V = NANO_DEFAULTS[("2.2", "t2v", "nano")]
I2V = NANO_DEFAULTS[("2.2", "i2v", "nano")]
VACE = NANO_DEFAULTS[("2.1", "vace", "nano")]

TEMPLATE_FOR_TASK = {"t2v": "wan22_a14b_t2v", "i2v": "wan22_a14b_i2v", "r2v": "wan21_vace_r2v"}
LORA_TEMPLATE = "wan22_a14b_lora_stack_4step"
STYLE_NODES = (12, 13, 14)
"""The LoRA select nodes of the LoRA-stack template (two style slots and the lightx2v slot)."""
INPUT_IMAGES = {"wan22_a14b_i2v": ("start_image.png",), "wan21_vace_r2v": ("reference_1.png", "reference_2.png")}


def _size(node: int) -> list[str]:
    return [f"{node}.width={WIDTH}", f"{node}.height={HEIGHT}", f"{node}.length={FRAMES}"]


def _sampler(steps: int, shift: float, cfg_high: float, cfg_low: float) -> list[str]:
    return [f"8.steps={steps}", f"8.shift={shift}", f"8.cfg_high={cfg_high}", f"8.cfg_low={cfg_low}"]


NANO_OVERRIDES: dict[str, list[str]] = {
    "wan22_a14b_t2v": [f"2.model_name={NANO.t2v_high}", f"3.model_name={NANO.t2v_low}",
                       f"4.text_encoder_name={NANO.umt5}", f"6.vae_name={NANO.vae}", *_size(7),
                       *_sampler(T2V.steps, T2V.shift, T2V.guide_scale, T2V.guide_scale_low_noise)],
    "wan22_a14b_i2v": [f"2.model_name={NANO.i2v_high}", f"3.model_name={NANO.i2v_low}",
                       f"4.text_encoder_name={NANO.umt5}", f"6.vae_name={NANO.vae}", *_size(7),
                       *_sampler(I2V.steps, I2V.shift, I2V.guide_scale, I2V.guide_scale_low_noise)],
    LORA_TEMPLATE: [f"2.model_name={NANO.t2v_high}", f"3.model_name={NANO.t2v_low}",
                     f"4.text_encoder_name={NANO.umt5}", f"6.vae_name={NANO.vae}", *_size(7),
                     *_sampler(T2V.steps, T2V.shift, T2V.guide_scale, T2V.guide_scale_low_noise),
                     "8.solver=unipc", "8.scheduler=unipc",
                     *(f"{node}.{key}=none" for node in STYLE_NODES for key in ("lora_high", "lora_low"))],
    "wan21_vace_r2v": [f"2.model_name={NANO.vace}", f"4.text_encoder_name={NANO.umt5}", f"6.vae_name={NANO.vae}",
                       *_size(7), *_sampler(VACE.steps, VACE.shift, VACE.guide_scale, VACE.guide_scale)],
}
"""``--set`` overrides that turn a template into its nano version (models from ``nano/models``)."""


def lora_overrides(loras: Sequence[tuple[str, float]]) -> list[str]:
    """Overrides that put nano style LoRAs ``(style, strength)`` into the LoRA-stack template's
    select nodes, each as its high/low pair at one strength."""
    if len(loras) > len(STYLE_NODES):
        raise ValueError(f"the LoRA-stack template holds {len(STYLE_NODES)} LoRAs, got {len(loras)}")
    sets = []
    for node, (style, strength) in zip(STYLE_NODES, loras):
        if style not in LORA_STYLES:
            raise ValueError(f"no nano LoRA {style!r}; the nano LoRAs are {', '.join(LORA_STYLES)}")
        sets += [f"{node}.lora_high={NANO.lora(style, 'high')}", f"{node}.strength_high={strength}",
                 f"{node}.lora_low={NANO.lora(style, 'low')}", f"{node}.strength_low={strength}"]
    return sets


def run_template_on_nano(name: str, extra: Sequence[str] = ()) -> execute.RunResult:
    """Run template ``name`` with the nano overrides plus ``extra`` (the adapter must already point
    at the input/output folders; the nano models are always on the model lists)."""
    if name not in NANO_OVERRIDES:
        raise KeyError(f"template {name!r} has no nano version; expected one of {sorted(NANO_OVERRIDES)}")
    return templates.run_with_overrides(name, NANO_OVERRIDES[name] + list(extra))


def missing_for(name: str) -> list[Path]:
    """Nano files template ``name`` needs that are not in the pack."""
    needed = [s.split("=", 1)[1] for s in NANO_OVERRIDES[name] if "_name=" in s]
    return [NANO.path(n) for n in needed if not NANO.path(n).is_file()]


def missing_loras(loras: Sequence[tuple[str, float]]) -> list[Path]:
    """Nano LoRA files of ``loras`` that are not in the pack."""
    needed = [NANO.lora(style, expert) for style, _ in loras for expert in ("high", "low")]
    return [NANO.path(n) for n in needed if not NANO.path(n).is_file()]
