"""The suite's measurements, one function per report section.

Step times come from a slice of ``--blocks`` random 14B-expert blocks: the forward without blocks
(embeddings, head) is timed alone, the blocks' share is divided by their number, and a step is
``other + 40 x block`` (a roofline-style extrapolation; block weights never stay in cache between
blocks at these sizes, so blocks cost the same wherever they sit). Features of the issue that are
not in this build are reported as "not available" with the reason, so the suite keeps working as
they land.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from wanflow.wan import attention, compiled_blocks
from wanflow.wan.dit import WanDiT

from . import models
from .measure import Clock
from .plan import GIB, STEPS, Plan, Resolution, block_flops, forward_flops, other_flops, slice_config


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StepTime:
    other_s: float
    block_s: float
    layers: int        # blocks of the whole model the step is extrapolated to
    block_flops: int
    peak_bytes: Optional[int] = None

    @property
    def step_s(self) -> float:
        return self.other_s + self.layers * self.block_s

    @property
    def block_tflops(self) -> float:
        return self.block_flops / max(self.block_s, 1e-12) / 1e12


@dataclass
class Run:
    """Shared state: where to run, how to time, the bf16 slice, the eager baselines."""

    device: torch.device
    clock: Clock
    plan: Plan
    blocks: int
    deadline: float
    model: Optional[WanDiT] = None
    base: dict[tuple[str, int], StepTime] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def dry(self) -> bool:
        return self.device.type == "meta"

    def slice(self) -> WanDiT:
        if self.model is None:
            self.model = models.random_dit(slice_config(self.plan.expert, self.blocks), self.device)
        return self.model

    @property
    def quick(self) -> bool:
        """Compile with dynamo alone (no kernels): on meta and in the CPU smoke run."""
        return self.dry or self.plan.expert.dim < 512

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


def step_time(run: Run, model: WanDiT, res: Resolution, batch: int) -> StepTime:
    cfg = run.plan.expert
    inputs = models.dit_inputs(model.config, res, batch, run.device)
    tokens, blocks = res.tokens(), len(model.blocks)
    per_block, other_work = block_flops(cfg, batch, tokens), other_flops(cfg, batch, tokens)
    with models.without_blocks(model):
        other = run.clock.time(lambda: model(**inputs), other_work)
    full = run.clock.time(lambda: model(**inputs), other_work + blocks * per_block)
    return StepTime(other.seconds, max(full.seconds - other.seconds, 0.0) / blocks, cfg.num_layers,
                    per_block, full.peak_bytes)


def seconds(s: float) -> str:
    return f"{s:.3g}"


def gib(n: Optional[int]) -> str:
    return "–" if n is None else f"{n / GIB:.1f}"


# ---- 1. FLOP formulas against torch's counter ------------------------------------------------

def flop_check(run: Run) -> Section:
    """The analytic FLOPs against FlopCounterMode on a 2-block meta forward (always on meta)."""
    section = Section("FLOP formulas checked against torch.utils.flop_counter (2-block meta forward)",
                      ["resolution", "batch", "analytic TFLOP", "counted TFLOP", "relative difference"])
    cfg = slice_config(run.plan.expert, 2)
    model = models.random_dit(cfg, torch.device("meta"))
    for res in run.plan.resolutions:
        for batch in (1, 2):
            inputs = models.dit_inputs(cfg, res, batch, torch.device("meta"))
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(**inputs)
            analytic, counted = forward_flops(cfg, batch, res.tokens()), counter.get_total_flops()
            diff = abs(counted - analytic) / analytic
            section.rows.append([res.name, str(batch), f"{analytic / 1e12:.2f}", f"{counted / 1e12:.2f}",
                                 f"{diff:.1e}"])
            if diff > 1e-6:
                run.problems.append(f"FLOP formula off by {diff:.1e} at {res.name}, batch {batch}")
    return section


# ---- 2. seconds per step -----------------------------------------------------------------------

def steps(run: Run) -> Section:
    layers = run.plan.expert.num_layers
    section = Section(
        f"Seconds per step, {run.plan.name} ({layers} blocks extrapolated from {run.blocks} timed), bf16, "
        "sdpa, eager",
        ["resolution", "tokens", "CFG", "s/block", "other s", "s/step", "block TFLOP/s", "% of peak",
         f"{STEPS} steps s"])
    model = run.slice()
    for res in run.plan.resolutions:
        for batch in (1, 2):
            measured = run.base[(res.name, batch)] = step_time(run, model, res, batch)
            section.rows.append([
                res.name, str(res.tokens()), "yes (batched)" if batch == 2 else "no",
                seconds(measured.block_s), seconds(measured.other_s), seconds(measured.step_s),
                f"{measured.block_tflops:.0f}", f"{100 * measured.block_tflops / run.clock.peak_tflops:.0f}",
                seconds(STEPS * measured.step_s)])
    if run.plan.expert.dim == 5120:
        section.notes.append("Anchors (issue 12): roofline at 800 TFLOP/s for A14B, 81 frames, CFG, 40 steps: about "
                             "170 s at 480p and 650 s at 720p; the official single-GPU times are 327 s and 1041.5 s.")
    return section


# ---- 3. speed-ups of the items 1-4 --------------------------------------------------------

@contextlib.contextmanager
def _counting(*names: str) -> Iterator[list[int]]:
    """Counts calls of the aten ops in ``names`` (e.g. ``_scaled_mm``), by any route."""
    calls = [0]

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in names:
                calls[0] += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        yield calls


def _speedup_row(run: Run, label: str, measure: Callable[[Resolution], StepTime], note: str = "") -> list[str]:
    cells = [label]
    for res in run.plan.resolutions:
        if run.out_of_time():
            return _missing(run, label, "skipped: time budget")
        measured = measure(res)
        cells += [seconds(measured.step_s), f"{run.base[(res.name, 2)].step_s / measured.step_s:.2f}x"]
    return cells + [note]


def _missing(run: Run, label: str, why: str) -> list[str]:
    return [label] + ["–"] * (2 * len(run.plan.resolutions)) + [why]


def _note(row: list[str], note: str) -> list[list[str]]:
    row[-1] = "; ".join(part for part in (row[-1], note) if part)
    return [row]


def _compile_rows(run: Run) -> list[list[str]]:
    model = run.slice()
    settings = (compiled_blocks.CompileSettings(backend="eager", fullgraph=True) if run.quick
                else compiled_blocks.CompileSettings())
    problem = None if run.quick else compiled_blocks.compile_problem(run.device)
    if problem:
        return [_missing(run, "compiled blocks (item 2)", f"not available: {problem}")]
    compiled_blocks.compile_blocks(model, settings)
    compile_s = []

    def measure(res: Resolution) -> StepTime:
        inputs = models.dit_inputs(model.config, res, 2, run.device)
        compile_s.append(run.clock.once(lambda: model(**inputs)).seconds)  # the first call compiles
        return step_time(run, model, res, 2)

    try:
        row = _speedup_row(run, "compiled blocks (item 2)", measure)
    finally:
        compiled_blocks.uncompile_blocks(model)
    return _note(row, "first call (compiles): " + ", ".join(f"{s:.0f} s" for s in compile_s))


def _attention_rows(run: Run) -> list[list[str]]:
    rows = []
    for name in attention.backend_names():
        if name == "sdpa":
            continue
        label = f"attention {name} (item 3)"
        problem = attention.backend_problem(name)
        if problem is not None:
            rows.append(_missing(run, label, f"not available: {problem}"))
            continue
        with attention.use_backend(name):
            rows.append(_speedup_row(run, label, lambda res: step_time(run, run.slice(), res, 2)))
    return rows


def _fp8_modes() -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """The fp8 matmul modes to time (wan/fp8_matmul.py, item 4), or one row for whatever ops does."""
    try:
        from wanflow.wan import fp8_matmul
    except ImportError:
        return {"": contextlib.nullcontext}
    return {"upcast": lambda: fp8_matmul.use_mode("off"), "fp8 matmul": lambda: fp8_matmul.use_mode("auto")}


def _fp8_rows(run: Run) -> list[list[str]]:
    model = models.random_dit(slice_config(run.plan.expert, run.blocks), run.device)
    layers = models.quantize_blocks_fp8_(model)
    probe = models.dit_inputs(model.config, run.plan.resolutions[0], 1, run.device)
    rows = []
    for mode, use in _fp8_modes().items():
        label = f"fp8 weights (scaled e4m3){', ' + mode if mode else ''} (item 4)"
        with use():
            with _counting("_scaled_mm", "_scaled_mm_v2") as calls, torch.no_grad():
                model(**probe)
            row = _speedup_row(run, label, lambda res: step_time(run, model, res, 2))
        rows += _note(row, f"torch._scaled_mm: {calls[0]} calls for {layers} fp8 layers" if calls[0] else
                      "each call upcasts the weight to bf16 (no torch._scaled_mm call)")
    return rows


def _cache_levels() -> tuple[list[str], str]:
    """The non-off levels of the sampler's ``cache`` option and the method taking it, or [] and why."""
    from wanflow.samplers.moe import MoESampler

    for fn in (MoESampler.sample, MoESampler.__init__):
        if "cache" in inspect.signature(fn).parameters:
            try:
                module = importlib.import_module("wanflow.samplers.step_cache")
                levels = [name for name in getattr(module, "LEVELS", {}) if name != "off"]
            except ImportError:
                levels = []
            if levels:
                return levels, fn.__name__
            return [], "the sampler has a 'cache' option, but samplers/step_cache.py lists no LEVELS"
    return [], "not in this build: MoESampler has no 'cache' option"


def _cache_rows(run: Run) -> list[list[str]]:
    levels, where = _cache_levels()
    if not levels:
        return [_missing(run, "step cache (item 1)", f"not available: {where}")]
    if run.dry:
        return [_missing(run, f"step cache {level!r} (item 1)", "present; timed on a device only")
                for level in levels]
    from .cache_run import nano_cache_speedups

    rows = []
    steps = run.plan.cache_steps
    for level, (speedup, forwards, total) in nano_cache_speedups(run.device, levels, where, steps).items():
        cells = [f"step cache {level!r} (item 1)"]
        for res in run.plan.resolutions:
            cells += [seconds(run.base[(res.name, 2)].step_s * forwards / total), f"{total / forwards:.2f}x"]
        rows.append(cells + [f"{forwards}/{total} forwards on the nano T2V pair at {steps} steps, {speedup:.2f}x "
                             "wall time there; s/step = eager x forwards run / steps"])
    return rows


def speedups(run: Run) -> Section:
    names = [r.name for r in run.plan.resolutions]
    section = Section("Speed-ups of the issue's items 1-4 against the eager sdpa bf16 step (CFG, batched)",
                      ["feature", *(c for name in names for c in (f"{name} s/step", "x eager")), "note"])
    for make in (_compile_rows, _attention_rows, _fp8_rows, _cache_rows):
        try:
            section.rows += make(run)
        except Exception as exc:  # one feature failing must not cost the others
            if run.dry:
                raise
            section.rows.append(_missing(run, make.__name__.strip("_").replace("_rows", ""),
                                         f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    return section


# ---- 4. VAE decode ---------------------------------------------------------------------------

def vae_decode(run: Run) -> Section:
    section = Section(f"VAE decode, Wan 2.1 VAE (base width {run.plan.vae.dim}, random weights), bf16",
                      ["resolution", "latent", "seconds", "peak GiB", "peak over weights and output GiB"])
    vae = models.random_vae(run.device, run.plan.vae)
    weights = run.clock.allocated()
    for res in run.plan.resolutions:
        if run.out_of_time():
            section.rows.append([res.name, "–", "–", "–", "skipped: time budget"])
            continue
        z = models.latent(res, run.device)
        run.clock.once(lambda: vae.decode(z[:, :, :2]))  # warm-up: kernel selection
        out_bytes = 3 * res.frames * res.height * res.width * 2
        timing = run.clock.once(lambda: vae.decode(z))
        over = None if timing.peak_bytes is None else timing.peak_bytes - weights - out_bytes
        section.rows.append([f"{res.name} ({res.frames} frames)", "x".join(map(str, res.latent)),
                             "–" if run.dry else seconds(timing.seconds), gib(timing.peak_bytes), gib(over)])
    del vae
    run.clock.free_cache()
    return section


# ---- 5. block swap ----------------------------------------------------------------------------

def block_swap(run: Run) -> Section:
    cfg, budget, res = run.plan.expert, run.plan.swap_budget, run.plan.resolutions[0]
    section = Section(f"Block swap: the whole model ({cfg.num_layers} blocks) under a {run.plan.swap_budget_text} "
                      f"weight budget, {res.name}, CFG",
                      ["setting", "blocks on device / streamed", "weights on device GiB",
                       f"s/step (measured, {cfg.num_layers} blocks)", "x resident", "peak GiB"])
    try:
        from wanflow.wan.block_swap import BlockSwap
    except ImportError as exc:
        section.rows.append(["block swap"] + ["–"] * 5)
        section.notes.append(f"not available: wan/block_swap.py is not in this build ({exc})")
        return section
    run.model = None  # the slice is done with: room for the whole model
    run.clock.free_cache()
    model = models.random_dit(cfg, run.device)
    swap = BlockSwap(model, budget=budget)
    plan = swap.plan_for(budget)
    inputs = models.dit_inputs(cfg, res, 2, run.device)
    flops = forward_flops(cfg, 2, res.tokens())
    resident = run.clock.time(lambda: model(**inputs), flops, reps=1)
    section.rows.append(["all resident", f"{cfg.num_layers} / 0", gib(sum(p.nbytes for p in model.parameters())),
                         seconds(resident.seconds), "1.00x", gib(resident.peak_bytes)])
    label = f"{run.plan.swap_budget_text} budget"
    if run.dry or run.out_of_time():
        section.rows.append([f"{label} (plan only)", f"{len(plan.resident)} / {len(plan.streamed)}",
                             gib(plan.device_bytes), "–", "–", "–"])
    else:
        swap.restore(run.device)  # streamed blocks move to (pinned) RAM
        swapped = run.clock.time(lambda: model(**inputs), flops, reps=1)
        section.rows.append([label, f"{len(plan.resident)} / {len(plan.streamed)}", gib(plan.device_bytes),
                             seconds(swapped.seconds), f"{resident.seconds / swapped.seconds:.2f}x",
                             gib(swapped.peak_bytes)])
    del swap, model
    run.clock.free_cache()
    return section
