"""Run any template on the random-weight tiny files of :mod:`.tiny_models` (fast path tests).

The videos are noise; these runs check that every node and code path of a template works,
including the variants WanNano has no trained model for (TI2V-5B, Wan 2.1 I2V with CLIP).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from . import execute, templates
from .tiny_models import FILES

TINY_WIDTH, TINY_HEIGHT, TINY_LENGTH, TINY_STEPS = 32, 32, 5, 3
INPUT_IMAGES = ("start_image.png", "reference_1.png", "reference_2.png", "end_image.png")


def _common(high: str, low: Optional[str], vae: str) -> list[str]:
    sets = [f"2.model_name={high}", f"4.text_encoder_name={FILES.umt5}", f"6.vae_name={vae}",
            f"7.width={TINY_WIDTH}", f"7.height={TINY_HEIGHT}", f"7.length={TINY_LENGTH}", f"8.steps={TINY_STEPS}"]
    if low:
        sets.append(f"3.model_name={low}")
    return sets


TINY_OVERRIDES: dict[str, list[str]] = {
    "wan22_a14b_t2v": _common(FILES.t2v_high, FILES.t2v_low, FILES.vae21),
    "wanflow_nano_t2v": _common(FILES.t2v_high, FILES.t2v_low, FILES.vae21),
    "wan22_a14b_i2v": _common(FILES.i2v_high, FILES.i2v_low, FILES.vae21),
    "wan22_a14b_flf2v": _common(FILES.i2v_high, FILES.i2v_low, FILES.vae21),  # Fun-InP: the I2V-A14B shapes
    "wan22_ti2v_5b": _common(FILES.ti2v, None, FILES.vae22),
    "wan21_vace_r2v": _common(FILES.vace, None, FILES.vae21),
    "wan22_a14b_vace_r2v": _common(FILES.vace_high, FILES.vace_low, FILES.vae21),
    # no tiny Phantom file: Phantom-Wan has the T2V layout, so the tiny T2V DiT stands in for it
    "wan21_phantom_s2v": _common(FILES.t2v_high, None, FILES.vae21),
    "wan22_a14b_lora_stack_4step": [s for s in _common(FILES.t2v_high, FILES.t2v_low, FILES.vae21)
                                    if not s.startswith("8.steps")] + [
        f"12.lora_high={FILES.lora_high}", f"12.lora_low={FILES.lora_low}", f"13.lora_low={FILES.lora_low}",
        f"14.lora_high={FILES.lora_high}", f"14.lora_low={FILES.lora_low}"],
}


def write_input_images(folder: Path) -> None:
    """Small colourful pictures under the names the templates load."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:48, 0:64]
    for index, name in enumerate(INPUT_IMAGES):
        picture = np.stack([(x * 4 + 60 * index) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1)
        Image.fromarray(picture.astype(np.uint8)).save(folder / name)


def run_template_on_tiny_models(name: str, models: Path, inputs: Path, extra: tuple[str, ...] = ()) -> execute.RunResult:
    """Run template ``name`` headless on the tiny models in ``models`` (already written)."""
    return templates.run_with_overrides(name, TINY_OVERRIDES[name] + list(extra))
