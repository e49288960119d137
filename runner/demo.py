"""``wanflow demo``: the T2V template end to end on the built-in tiny models, no files needed.

The same overrides let every template run on the tiny models (tests, the real-ComfyUI check):
they swap the official file names for the tiny ones and shrink size, length and steps.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from . import execute, registry, templates, workflow
from .tiny_models import FILES, RANDOM_WEIGHTS_NOTE, write_tiny_models

log = logging.getLogger("wanflow.runner")

TINY_WIDTH, TINY_HEIGHT, TINY_LENGTH, TINY_STEPS = 32, 32, 5, 3
INPUT_IMAGES = ("start_image.png", "reference_1.png", "reference_2.png")


def _common(high: str, low: Optional[str], vae: str) -> list[str]:
    sets = [f"2.model_name={high}", f"4.text_encoder_name={FILES.umt5}", f"6.vae_name={vae}",
            f"7.width={TINY_WIDTH}", f"7.height={TINY_HEIGHT}", f"7.length={TINY_LENGTH}", f"8.steps={TINY_STEPS}"]
    if low:
        sets.append(f"3.model_name={low}")
    return sets


TINY_OVERRIDES: dict[str, list[str]] = {
    "wan22_a14b_t2v": _common(FILES.t2v_high, FILES.t2v_low, FILES.vae21),
    "wan22_a14b_i2v": _common(FILES.i2v_high, FILES.i2v_low, FILES.vae21),
    "wan22_ti2v_5b": _common(FILES.ti2v, None, FILES.vae22),
    "wan21_vace_r2v": _common(FILES.vace, None, FILES.vae21),
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
    classes = registry.node_classes()
    flow = workflow.load_workflow(templates.render(name, classes), classes, name)
    workflow.apply_overrides(flow.prompt, TINY_OVERRIDES[name] + list(extra), classes)
    return execute.run(flow, classes)


def run_demo(output_dir: Path) -> execute.RunResult:
    """Render the Wan 2.2 A14B T2V template to ``output_dir`` on the built-in tiny model."""
    from ..nodes import comfy_adapter

    print(f"wanflow demo: {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="wanflow-demo-") as scratch:
        models, inputs = Path(scratch) / "models", Path(scratch) / "input"
        write_tiny_models(models)
        write_input_images(inputs)
        comfy_adapter.configure_headless(models, inputs, output_dir)
        return run_template_on_tiny_models("wan22_a14b_t2v", models, inputs, ("10.filename_prefix=WanFlow/demo",))
