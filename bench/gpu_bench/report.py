"""The suite's Markdown report: a header naming the machine and the run, then one table per section."""
from __future__ import annotations

import datetime
import re
from typing import Sequence

import torch

from .plan import STEPS, Plan, block_flops, forward_flops
from .sections import Section
from bench_info import commit



def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3`` (for the file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"a row does not have the {len(columns)} cells of {list(columns)}: {rows}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def plan_table(plan: Plan, peak_tflops: float) -> list[str]:
    """Sizes and the work of one step, with the roofline at the peak: what the measurements face."""
    rows = []
    for res in plan.resolutions:
        tokens = res.tokens()
        step = forward_flops(plan.expert, 2, tokens)
        rows.append([res.name, f"{res.frames}x{res.height}x{res.width}", "x".join(map(str, res.latent)),
                     str(tokens), f"{block_flops(plan.expert, 1, tokens) / 1e12:.3g}", f"{step / 1e15:.3g}",
                     f"{step / peak_tflops / 1e12:.2f}", f"{STEPS * step / peak_tflops / 1e12:.0f}"])
    return table(["resolution", "video", "latent", "tokens", "TFLOP per block (1 sample)",
                  "PFLOP per CFG step", "roofline s/step", f"roofline {STEPS} steps s"], rows)


def render(sections: Sequence[Section], *, plan: Plan, device_name: str, peak_tflops: float, dry: bool,
           blocks: int, command: str, seconds: float, problems: Sequence[str]) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    cuda = torch.version.cuda or "none"
    lines = [f"# GPU suite: {device_name}", ""]
    if dry:
        lines += ["**Dry run**: every model was built and run on the meta device; nothing was measured. "
                  f"Times are the roofline at {peak_tflops} TFLOP/s, memory is not known.", ""]
    lines += [
        f"- Date: {now:%Y-%m-%d %H:%M} UTC; commit `{commit()}`; torch {torch.__version__}, CUDA {cuda}",
        f"- Device: {device_name}; dense bf16 peak {peak_tflops} TFLOP/s (data sheet)",
        f"- Model: {plan.name} (dim {plan.expert.dim}, {plan.expert.num_heads} heads, ffn {plan.expert.ffn_dim}, "
        f"{plan.expert.num_layers} blocks), random bf16 weights; {blocks} blocks timed, the step extrapolated "
        f"to {plan.expert.num_layers}; {STEPS} steps; text padded to 512 tokens; CFG = cond and uncond in one "
        "batch of 2",
        f"- Command: `{command}`; the suite took {seconds:.0f} s",
        "",
        "## Work per step", "", *plan_table(plan, peak_tflops),
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", *table(section.columns, section.rows)]
        if section.notes:
            lines += ["", *(f"- {note}" for note in section.notes)]
    if problems:
        lines += ["", "## Problems", "", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"
