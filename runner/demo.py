"""``wanflow demo``: a template end to end on the WanNano models shipped in ``nano/models``.

Text-to-video by default; ``--i2v IMAGE`` runs image-to-video from a start picture and
``--r2v IMAGE ...`` reference-to-video from 1-3 pictures of the object; ``--lora NAME[:STRENGTH]``
adds the nano style LoRAs (``outline``, ``night``) through the LoRA-stack template. The models know one small
world (a coloured circle, square or triangle moving over a white or black background): words
outside its vocabulary are reported, and the run goes on.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..nano.files import LORA_STYLES
from ..nano.vocabulary import TEMPLATE, unknown_words, vocabulary
from . import errors, execute
from .nano_runs import (INPUT_IMAGES, LORA_TEMPLATE, STYLE_NODES, TEMPLATE_FOR_TASK, lora_overrides,
                        missing_for, missing_loras, run_template_on_nano)

DEFAULT_PROMPT = "a blue square moving up on a black background"
MAX_REFERENCES = len(INPUT_IMAGES["wan21_vace_r2v"])


def check_prompt(prompt: str) -> list[str]:
    """Warn (on stderr) about words the nano models never saw; returns them."""
    unknown = unknown_words(prompt)
    if unknown:
        print(f"wanflow demo: warning: the nano models do not know {', '.join(map(repr, unknown))}; they know: "
              f"{', '.join(vocabulary())} (e.g. '{TEMPLATE}')", file=sys.stderr)
    return unknown


def parse_lora(spec: str) -> tuple[str, float]:
    """``NAME[:STRENGTH]`` (strength 1 by default) → ``(name, strength)``."""
    name, _, strength = spec.partition(":")
    if name not in LORA_STYLES:
        raise errors.UsageError(f"demo: --lora {spec!r}: unknown LoRA {name!r}; the nano LoRAs are "
                                f"{', '.join(LORA_STYLES)} (e.g. --lora outline:0.8)")
    try:
        return name, float(strength) if strength else 1.0
    except ValueError:
        raise errors.UsageError(f"demo: --lora {spec!r}: strength {strength!r} is not a number") from None


def _check_loras(task: str, loras: Sequence[tuple[str, float]]) -> None:
    if not loras:
        return
    if task != "t2v":
        raise errors.UsageError("demo: --lora works with text-to-video (the style LoRAs are trained on the "
                                "T2V experts); drop --i2v/--r2v or --lora")
    if len(loras) > len(STYLE_NODES):
        raise errors.UsageError(f"demo: at most {len(STYLE_NODES)} --lora, got {len(loras)}")
    missing = missing_loras(loras)
    if missing:
        raise errors.MissingFileError(f"demo: the nano LoRA files {', '.join(p.name for p in missing)} are not "
                                      "in the pack; `wanflow train-nano --stage loras` makes them")


def _task(i2v: Optional[Path], r2v: Sequence[Path]) -> str:
    if i2v is not None and r2v:
        raise errors.UsageError("demo: give --i2v or --r2v, not both")
    if len(r2v) > MAX_REFERENCES:
        raise errors.UsageError(f"demo: --r2v takes 1 to {MAX_REFERENCES} pictures, got {len(r2v)}")
    for picture in [i2v, *r2v]:
        if picture is not None and not Path(picture).is_file():
            raise errors.MissingFileError(f"demo: picture {picture} does not exist")
    return "i2v" if i2v is not None else "r2v" if r2v else "t2v"


def _copy_inputs(task: str, i2v: Optional[Path], r2v: Sequence[Path], folder: Path) -> None:
    """Copy the user's pictures into a scratch input folder under the names the template loads
    (the user's files are never touched). One reference fills both reference inputs."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "i2v":
        shutil.copyfile(i2v, folder / INPUT_IMAGES["wan22_a14b_i2v"][0])
    elif task == "r2v":
        for index, name in enumerate(INPUT_IMAGES["wan21_vace_r2v"]):
            shutil.copyfile(r2v[min(index, len(r2v) - 1)], folder / name)


def run_demo(output_dir: Path, prompt: str = DEFAULT_PROMPT, seed: int = 42, i2v: Optional[Path] = None,
             r2v: Sequence[Path] = (), loras: Sequence[tuple[str, float]] = ()) -> execute.RunResult:
    """Render ``prompt`` with the nano models into ``output_dir``; ``loras`` are
    ``(style, strength)`` pairs (see :func:`parse_lora`)."""
    from ..nodes import comfy_adapter

    task = _task(i2v, list(r2v))
    _check_loras(task, loras)
    template = LORA_TEMPLATE if loras else TEMPLATE_FOR_TASK[task]
    check_prompt(prompt)
    sets = [f"5.positive={prompt}", f"8.seed={seed}", f"10.filename_prefix=WanFlow/demo_{task}",
            *lora_overrides(loras)]
    with tempfile.TemporaryDirectory(prefix="wanflow-demo-") as scratch:
        inputs = Path(scratch) / "input"
        _copy_inputs(task, i2v, list(r2v), inputs)
        missing = missing_for(template)
        if missing:
            return _run_on_random_tiny_models(template, Path(scratch), inputs, output_dir, missing, sets)
        comfy_adapter.configure_headless(None, inputs, output_dir)
        return run_template_on_nano(template, sets)


def _run_on_random_tiny_models(template: str, scratch: Path, inputs: Path, output_dir: Path, missing: list[Path],
                               sets: list[str]) -> execute.RunResult:
    """Until every nano file of a template is trained, run its graph on random tiny weights (noise)."""
    from ..nodes import comfy_adapter
    from .tiny_models import write_tiny_models
    from .tiny_runs import run_template_on_tiny_models, write_input_images

    print(f"wanflow demo: the trained nano models for this template are not in the pack yet "
          f"({', '.join(p.name for p in missing)}; `wanflow train-nano` makes them): running it on RANDOM "
          "weights instead, so the video shows noise", file=sys.stderr)
    models = scratch / "models"
    write_tiny_models(models)
    if not any(inputs.iterdir()):
        write_input_images(inputs)
    comfy_adapter.configure_headless(models, inputs, output_dir)
    return run_template_on_tiny_models(template, models, inputs, tuple(sets))
