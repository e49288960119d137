"""Score the WanNano models the way a person would: render templates, read the frames back.

Each video is rendered through the real nodes (``nano_runs``), saved as lossless PNG frames, and
read back with ``nano.measure``. ``python -m wanflow.runner.nano_eval`` prints the score table
quoted in docs/nano.md.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..nano.measure import Reading, read_video
from ..nano.vocabulary import EVAL_SCENES, Scene
from .nano_runs import LORA_TEMPLATE, TEMPLATE_FOR_TASK, lora_overrides, run_template_on_nano


@dataclass(frozen=True)
class Scored:
    scene: Scene
    reading: Reading
    frames: np.ndarray

    @property
    def hits(self) -> dict[str, bool]:
        return self.reading.matches(self.scene)


def render(task: str, prompt: str, seed: int, extra: Sequence[str] = (), input_dir: Path | None = None) -> np.ndarray:
    """Frames ``uint8 [F, H, W, 3]`` of one nano run of ``task`` ("t2v", "i2v", "r2v")."""
    return render_template(TEMPLATE_FOR_TASK[task], prompt, seed, extra, input_dir)


def render_with_loras(prompt: str, seed: int, loras: Sequence[tuple[str, float]]) -> np.ndarray:
    """T2V frames with nano style LoRAs ``(style, strength)``, through the LoRA-stack template."""
    return render_template(LORA_TEMPLATE, prompt, seed, lora_overrides(loras))


def render_template(template: str, prompt: str, seed: int, extra: Sequence[str] = (),
                    input_dir: Path | None = None) -> np.ndarray:
    """Frames ``uint8 [F, H, W, 3]`` of template ``template`` run on the nano models."""
    from ..nodes import comfy_adapter

    with tempfile.TemporaryDirectory(prefix="wanflow-nano-eval-") as scratch:
        out = Path(scratch) / "out"
        comfy_adapter.configure_headless(None, input_dir or Path(scratch) / "input", out)
        result = run_template_on_nano(template, [
            f"5.positive={prompt}", f"8.seed={seed}", "10.format=png", "10.filename_prefix=eval/f", *extra])
        paths = sorted(Path(p) for p in result.files)
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def score_t2v(scenes: Sequence[Scene] = EVAL_SCENES, seed: int = 0, extra: Sequence[str] = ()) -> list[Scored]:
    scored = []
    for index, scene in enumerate(scenes):
        frames = render("t2v", scene.caption, seed + index, extra)
        scored.append(Scored(scene, read_video(frames), frames))
    return scored


def summary(scored: Sequence[Scored]) -> dict[str, int]:
    totals = {"background": 0, "colour": 0, "direction": 0, "shape": 0}
    for item in scored:
        for key, hit in item.hits.items():
            totals[key] += int(hit)
    return totals


def frame_strip(frames: np.ndarray, every: int = 4, scale: int = 2) -> Image.Image:
    """Every ``every``-th frame side by side, enlarged ``scale`` times (nearest), for docs."""
    strip = np.concatenate(list(frames[::every]), axis=1)
    return Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="score the nano T2V models on the evaluation prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strip", type=Path, help="instead: save a frame strip of one T2V video (--prompt) here")
    parser.add_argument("--prompt", default="a blue square moving up on a black background")
    args = parser.parse_args(argv)
    if args.strip:
        frame_strip(render("t2v", args.prompt, args.seed)).save(args.strip)
        print(args.strip)
        return 0
    scored = score_t2v(seed=args.seed)
    for item in scored:
        r = item.reading
        print(f"{item.scene.caption:60s} bg={r.background:5s} colour={r.colour} shape={r.shape} "
              f"(fill {r.fill_ratio:.2f}) dir={r.direction} travel=({r.travel[0]:+.1f},{r.travel[1]:+.1f})")
    print({k: f"{v}/{len(scored)}" for k, v in summary(scored).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
