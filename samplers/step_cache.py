"""Step cache: skip a DiT forward when the last computed ones already predict it well.

Training-free and runtime-adaptive, after EasyCache (Zhou et al. 2025, "Less is Enough:
Training-Free Video Diffusion Acceleration via Runtime-Adaptive Caching"). Why this one of the
family:

* TeaCache maps the change of the timestep-modulated input through a polynomial fitted offline
  per model; its Wan 2.1 coefficients do not carry over to Wan 2.2's experts, and a fine-tune,
  a LoRA or a nano model would each need a new fit.
* MagCache skips by a magnitude-ratio curve of the residuals, also calibrated offline per model.
* EasyCache calibrates while it samples: from the last two computed steps it measures the
  transformation rate ``k = |Δ output| / |Δ input|`` (mean absolute values) and predicts each
  later step's relative output change as ``k·|Δ input| / |output|``. No table per model: every
  expert (with whatever LoRA is on it) is calibrated by its own first steps, which is what
  "calibrated per expert" needs for Wan 2.2's pair.

How it runs. The cache wraps the model callable the sampler hands to guidance; the DiT is
untouched. Per expert it keeps the rate, the accumulated predicted change, and per pass (cond,
uncond, or both batched) the last two computed outputs. The decision is made once per step on
its first pass and holds for all its passes, so guidance always combines outputs of the same
age. While the accumulated change stays below the expert's threshold the step is skipped; when
it would pass it, the step is computed and the sum restarts.

What a skipped pass returns (our departure from EasyCache). EasyCache returns ``input +
(output − input)`` of the last computed step. Wan's output is a flow-matching velocity, which
changes slowly along the path, so we return the last computed output extrapolated linearly in
the timestep from the last two (at most one of their intervals ahead, then held). On the nano
models, at equal skips, reusing ``output − input`` gave 2-5 dB less PSNR than reusing the
output, and the capped extrapolation 2-12 dB more than that, most where few steps are skipped
in a row (bench/results/step_cache.md).

Never skipped: the first ``warmup`` steps of each expert's range (the start of the run, and
the steps after the high→low switch, where the new expert calibrates its own rate) and the last
``tail`` steps of the run, where fine detail is settled. With thresholds 0 nothing is skipped
and the result is the exact run, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

ModelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class CacheLevel:
    """Thresholds on the accumulated predicted relative output change, one per expert.

    Single models (Wan 2.1, TI2V-5B, VACE) run every step as the "high" expert and use ``high``.
    """

    high: float
    low: float
    warmup: int = 3
    tail: int = 2

    def __post_init__(self) -> None:
        for name in ("high", "low"):
            value = getattr(self, name)
            if not value >= 0.0:                         # also refuses NaN
                raise ValueError(f"step cache: threshold {name} must be >= 0, got {value}")
        if self.warmup < 1 or self.tail < 1:
            raise ValueError(f"step cache: warmup and tail must be >= 1 step, got {self.warmup}, {self.tail}")

    def threshold(self, expert: str) -> float:
        return self.low if expert == "low" else self.high


LEVELS: dict[str, CacheLevel] = {
    "quality": CacheLevel(high=0.05, low=0.10),
    "balanced": CacheLevel(high=0.10, low=0.20),
    "fast": CacheLevel(high=0.20, low=0.35),
}
"""Quality levels, most faithful first. Chosen on the nano models at 40 and 50 steps (T2V, I2V,
R2V; bench/step_cache.py, bench/results/step_cache.md): quality 1.9-3.5x fewer forwards at a mean
47-52 dB PSNR against the exact video, balanced 2.8-4.6x at 37-41 dB, fast 3.5-5x at 27-34 dB."""

OFF = "off"
CACHE_CHOICES: tuple[str, ...] = (OFF, *LEVELS)
"""What the sampler node's ``cache`` combo and ``wanflow run --cache`` accept."""


def cache_level(choice: Union[str, CacheLevel, None], where: str = "cache") -> Optional[CacheLevel]:
    """The level for a choice (``None`` for off); a clear error for anything else."""
    if choice is None or isinstance(choice, CacheLevel):
        return choice
    if isinstance(choice, str) and choice in CACHE_CHOICES:
        return LEVELS.get(choice)
    raise ValueError(f"{where}: {choice!r} is not a step-cache level; expected one of {', '.join(CACHE_CHOICES)}")


@dataclass
class CacheStats:
    """Forwards run and skipped, per expert (one count per model call, cond and uncond apart)."""

    computed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.computed.values()) + sum(self.skipped.values())

    @property
    def speedup(self) -> float:
        """Forwards of the exact run over forwards run."""
        ran = sum(self.computed.values())
        return self.total / ran if ran else 1.0

    def note(self) -> str:
        skipped = sum(self.skipped.values())
        return f"step cache skipped {skipped} of {self.total} model forwards ({self.speedup:.2f}x fewer)"


@dataclass
class _Pass:
    """One pass (cond, uncond or both batched) of one expert: its last two computed outputs."""

    output: torch.Tensor
    t: float
    earlier: Optional[torch.Tensor] = None
    earlier_t: float = 0.0

    def predict(self, t: float) -> torch.Tensor:
        """The output at timestep ``t``: the last one extrapolated linearly in ``t`` from the last
        two, at most one of their intervals ahead (then held), a fresh tensor."""
        if self.earlier is None or self.t == self.earlier_t:
            return self.output.clone()
        ahead = min((t - self.t) / (self.t - self.earlier_t), 1.0)
        return self.output + ahead * (self.output - self.earlier)

    def then(self, output: torch.Tensor, t: float) -> "_Pass":
        """This pass after a new computed ``output`` at ``t``."""
        keep = self.output.shape == output.shape
        return _Pass(output, t, self.output if keep else None, self.t if keep else 0.0)


@dataclass
class _Expert:
    """Runtime calibration of one expert."""

    rate: Optional[float] = None                      # k = |Δ output| / |Δ input|, last two computed steps
    accumulated: float = 0.0                          # predicted relative output change since then
    previous_input: Optional[torch.Tensor] = None     # first-pass input of the previous step
    computed_input: Optional[torch.Tensor] = None     # first-pass input of the last computed step
    passes: dict[int, _Pass] = field(default_factory=dict)


def _mean_abs(x: torch.Tensor) -> float:
    return float(x.abs().mean())


def _time(t: torch.Tensor) -> float:
    """One timestep for the step (per-frame / per-token timesteps: the largest)."""
    return float(t.float().max())


class StepCache:
    """One sampling run's cache. ``model_for(model, expert, step)`` gives the callable to use.

    ``steps``: steps in the run; ``switch``: first step of the low-noise expert (``steps`` when
    there is none).
    """

    def __init__(self, level: CacheLevel, steps: int, switch: int) -> None:
        self.level = level
        self.steps = steps
        self.switch = switch
        self.stats = CacheStats()
        self._experts: dict[str, _Expert] = {}
        self._decisions: dict[int, bool] = {}         # step -> compute?

    def protected(self, step: int) -> bool:
        """Steps that are always computed: an expert's first ``warmup`` steps, the last ``tail``."""
        start = self.switch if step >= self.switch else 0
        return step - start < self.level.warmup or step >= self.steps - self.level.tail

    def model_for(self, model: ModelFn, expert: str, step: int) -> ModelFn:
        """``model`` as guidance calls it at ``step``: its n-th call in the step is pass n."""
        calls = iter(range(1 << 30))

        def cached(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **extras) -> torch.Tensor:
            return self._call(model, expert, step, next(calls), x, t, context, extras)

        return cached

    def _call(self, model: ModelFn, expert: str, step: int, index: int, x: torch.Tensor, t: torch.Tensor,
              context: torch.Tensor, extras: dict) -> torch.Tensor:
        state = self._experts.setdefault(expert, _Expert())
        if index == 0 and step not in self._decisions:
            self._decisions[step] = self._decide(state, expert, step, x)
        entry = state.passes.get(index)
        fits = entry is not None and entry.output.shape[0] == x.shape[0] and entry.output.shape[2:] == x.shape[2:]
        if not self._decisions[step] and fits:
            self.stats.skipped[expert] = self.stats.skipped.get(expert, 0) + 1
            if index == 0:
                self.stats.skipped_steps.append(step)
            return entry.predict(_time(t))
        out = model(x, t, context, **extras)
        self.stats.computed[expert] = self.stats.computed.get(expert, 0) + 1
        if index == 0:
            self._calibrate(state, x, out)
        output = out.detach().float().clone()
        state.passes[index] = _Pass(output, _time(t)) if entry is None else entry.then(output, _time(t))
        return out

    def _decide(self, state: _Expert, expert: str, step: int, x: torch.Tensor) -> bool:
        """True: compute this step. Adds the step's predicted change to the expert's sum."""
        previous, state.previous_input = state.previous_input, x.detach().clone()
        first = state.passes.get(0)
        if (self.protected(step) or state.rate is None or first is None or previous is None
                or previous.shape != x.shape):
            state.accumulated = 0.0
            return True
        change = _mean_abs(x.float() - previous.float())
        state.accumulated += state.rate * change / max(_mean_abs(first.output), 1e-12)
        if state.accumulated < self.level.threshold(expert):
            return False
        state.accumulated = 0.0
        return True

    @staticmethod
    def _calibrate(state: _Expert, x: torch.Tensor, out: torch.Tensor) -> None:
        """Update the transformation rate from this computed step and the last computed one."""
        last_in, first = state.computed_input, state.passes.get(0)
        if first is not None and first.output.shape == out.shape and last_in is not None and last_in.shape == x.shape:
            moved = _mean_abs(x.float() - last_in.float())
            if moved > 0.0:
                state.rate = _mean_abs(out.float() - first.output) / moved
        seen = state.previous_input                      # this step's input, kept by _decide
        state.computed_input = seen if seen is not None and seen.shape == x.shape else x.detach().clone()


def start_cache(choice: Union[str, CacheLevel, None], steps: int, switch: int) -> Optional[StepCache]:
    """A fresh cache for one run, or None when the cache is off."""
    level = cache_level(choice)
    return None if level is None else StepCache(level, steps, switch)
