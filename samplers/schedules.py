"""Flow-matching sigma schedules, exactly as the reference implementations build them.

A :class:`Schedule` carries two things that must both be right for a faithful result:

* ``sigmas``: the noise levels the solver walks through (``steps + 1`` values, the last usually 0);
* ``timesteps``: the value the DiT receives as its timestep at each step (``steps`` values).

They differ between implementations in small ways that change the output: the official Wan code
truncates ``σ·1000`` to an integer, ComfyUI passes the float ``σ·1000``, the official UniPC grid
starts at 0.999 while the DPM++ grid starts at 1.0. Each builder here reproduces one reference
bit for bit (see tests/test_schedules.py and the sampling fact sheet, §2–§4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000

# The 4-step schedule the lightx2v / Wan2.2-Lightning distilled LoRAs were trained for
# (LightX2V configs/distill: denoising_step_list [1000, 750, 500, 250], sample_shift 5).
DISTILL_STEP_LIST: tuple[int, ...] = (1000, 750, 500, 250)
DISTILL_SHIFT = 5.0


@dataclass(frozen=True)
class Schedule:
    """Noise levels and the timesteps the model sees at each of them.

    ``sigmas``: float32 ``[steps + 1]``, descending. ``timesteps``: ``[steps]``; int64 for the
    official grids (truncated ``σ·1000``), float32 for ComfyUI-style schedules (``σ·1000``).
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.timesteps.ndim != 1:
            raise ValueError(f"Schedule '{self.name}': sigmas and timesteps must be 1-D, got "
                             f"{tuple(self.sigmas.shape)} and {tuple(self.timesteps.shape)}")
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError(f"Schedule '{self.name}': expected len(sigmas) == len(timesteps) + 1, "
                             f"got {len(self.sigmas)} sigmas and {len(self.timesteps)} timesteps")
        if len(self.timesteps) < 1:
            raise ValueError(f"Schedule '{self.name}': needs at least one step")
        if bool((self.sigmas[1:] > self.sigmas[:-1]).any()):
            raise ValueError(f"Schedule '{self.name}': sigmas must not increase, got "
                             f"{self.sigmas.tolist()}")

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def timestep_value(self, step: int) -> float:
        """The model timestep of ``step`` as a Python number (what the MoE switch compares)."""
        return float(self.timesteps[step])

    def tail(self, steps: int) -> "Schedule":
        """The last ``steps`` steps: a partial denoise that starts part-way down the schedule."""
        if not 1 <= steps <= self.steps:
            raise ValueError(f"Schedule '{self.name}': cannot take the last {steps} of "
                             f"{self.steps} steps")
        return Schedule(self.sigmas[-(steps + 1):], self.timesteps[-steps:], self.name)


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float):
    """Wan's resolution shift ``σ' = s·σ / (1 + (s−1)·σ)``; pushes steps toward high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check_steps_shift(steps: int, shift: float, where: str) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{where}: steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"{where}: shift must be > 0, got {shift!r}")


def _official(sigmas: np.ndarray, name: str) -> Schedule:
    """Official Wan bookkeeping: t = int64(σ·1000) from float64 σ, then a final σ = 0 in float32."""
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    full = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(torch.from_numpy(full), timesteps, name)


def official_unipc(steps: int, shift: float) -> Schedule:
    """The official UniPC grid: ``linspace(0.999, 0, N+1)[:-1]``, shifted, truncated timesteps.

    The 0.999 is the float32 value of the scheduler's ``σ_max`` (its training table runs 1 − α
    for α in ``linspace(1, 1/1000, 1000)``), read back as a Python float.

    At high shift and many steps (shift 16 from 68 steps, 12 from 92, 8 from 144) the first two
    truncated timesteps are both 999. The official scheduler finds its first step by timestep
    and takes the second match, so it solves from σ1 while the model ran for σ0, then fails on
    its last step (UniPC order 0): there is no official output to match. We deliberately do not
    copy that: every step runs from σ0, as the official scheduler does with its start index
    pinned to 0 (tests/test_solvers.py checks this against diffusers).
    """
    _check_steps_shift(steps, shift, "official_unipc")
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    base = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    return _official(shift_sigmas(base, shift), "unipc")


def official_dpmpp(steps: int, shift: float) -> Schedule:
    """The official DPM++ grid: ``linspace(1, 0, N+1)[:N]`` shifted; first σ exactly 1.0, t = 1000."""
    _check_steps_shift(steps, shift, "official_dpmpp")
    base = np.linspace(1.0, 0.0, steps + 1)[:steps]
    return _official(shift_sigmas(base, shift), "dpm++")


def comfy_sigma_table(shift: float) -> torch.Tensor:
    """ComfyUI ``ModelSamplingDiscreteFlow`` table: ``shift(i/1000)`` for i = 1..1000, float32."""
    t = (torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, 1) / NUM_TRAIN_TIMESTEPS) * NUM_TRAIN_TIMESTEPS
    t = t / NUM_TRAIN_TIMESTEPS
    return t if shift == 1.0 else shift_sigmas(t, shift)


def comfy_simple(steps: int, shift: float) -> Schedule:
    """ComfyUI's "simple" scheduler over the shifted 1000-entry table; t = σ·1000 as float."""
    _check_steps_shift(steps, shift, "comfy_simple")
    table = comfy_sigma_table(shift)
    stride = len(table) / steps
    picked = [float(table[-(1 + int(k * stride))]) for k in range(steps)] + [0.0]
    sigmas = torch.tensor(picked, dtype=torch.float32)
    return Schedule(sigmas, sigmas[:-1] * NUM_TRAIN_TIMESTEPS, "simple")


def distill_step_list(steps: int) -> tuple[int, ...]:
    """Evenly spaced training timesteps from 1000 down: (1000, 750, 500, 250) for 4 steps."""
    _check_steps_shift(steps, 1.0, "distill_step_list")
    return tuple(int(round(NUM_TRAIN_TIMESTEPS * (1 - i / steps))) for i in range(steps))


def distilled(step_list: Sequence[int] = DISTILL_STEP_LIST, shift: float = DISTILL_SHIFT) -> Schedule:
    """The schedule the 4-step lightx2v / Lightning LoRAs were distilled with.

    LightX2V picks entries ``1000 − t`` of the shifted ``linspace(1, 0, 1001)[:-1]`` table for t in
    ``step_list``; i.e. ``σ = shift(t/1000)``, model timestep ``σ·1000`` (float), then σ = 0.
    Defaults give σ = 1.0, 0.9375, 0.8333, 0.625 (identical to ComfyUI simple, shift 5, 4 steps).
    """
    if not step_list or any(not 0 < int(t) <= NUM_TRAIN_TIMESTEPS for t in step_list):
        raise ValueError(f"distilled: step_list entries must lie in 1..1000, got {list(step_list)}")
    _check_steps_shift(len(step_list), shift, "distilled")
    table = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1]
    table = shift_sigmas(table, shift)
    picked = table[[NUM_TRAIN_TIMESTEPS - int(t) for t in step_list]]
    sigmas = torch.cat([picked, torch.zeros(1)]).to(torch.float32)
    return Schedule(sigmas, picked * NUM_TRAIN_TIMESTEPS, "distilled")


def from_sigmas(sigmas: Sequence[float] | torch.Tensor, *, integer_timesteps: bool = False) -> Schedule:
    """A user-given sigma list (ComfyUI SIGMAS style); model timestep ``σ·1000``.

    Pass ``integer_timesteps=True`` to truncate timesteps the official way. A final 0 is not added:
    a list that ends above 0 leaves noise in the result (the first half of a split).
    """
    values = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if len(values) < 2:
        raise ValueError(f"from_sigmas: need at least 2 sigmas (start and end), got {values.tolist()}")
    if bool((values < 0).any()) or bool((values > 1).any()):
        raise ValueError(f"from_sigmas: flow sigmas must lie in [0, 1], got {values.tolist()}")
    timesteps = values[:-1].double() * NUM_TRAIN_TIMESTEPS if integer_timesteps else \
        values[:-1] * NUM_TRAIN_TIMESTEPS
    if integer_timesteps:
        timesteps = timesteps.to(torch.int64)
    return Schedule(values, timesteps, "custom")


ScheduleBuilder = Callable[[int, float], Schedule]

# Names the nodes and the runner offer; build_schedule also takes "distilled".
SCHEDULES: dict[str, ScheduleBuilder] = {
    "unipc": official_unipc,
    "dpm++": official_dpmpp,
    "simple": comfy_simple,
}


def build_schedule(name: str, steps: int, shift: float, denoise: float = 1.0) -> Schedule:
    """Named schedule, optionally for a partial denoise.

    ``denoise < 1`` follows ComfyUI: build ``int(steps / denoise)`` steps and keep the last
    ``steps``, so the run starts at the matching lower sigma (video-to-video).

    ``"distilled"`` always uses the shift the distilled LoRAs were trained with (5.0), whatever
    ``shift`` says, over :func:`distill_step_list` (``steps=4`` is exactly LightX2V's list); call
    :func:`distilled` directly for another shift or step list.
    """
    if name == "distilled":
        if denoise != 1.0:
            raise ValueError("build_schedule: the distilled schedule has a fixed step list; "
                             f"denoise must be 1.0, got {denoise}")
        return distilled(distill_step_list(steps), DISTILL_SHIFT)
    if name not in SCHEDULES:
        raise ValueError(f"build_schedule: unknown schedule {name!r}; expected one of "
                         f"{sorted(SCHEDULES) + ['distilled']}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"build_schedule: denoise must be in (0, 1], got {denoise}")
    if denoise == 1.0:
        return SCHEDULES[name](steps, shift)
    total = int(steps / denoise)
    return SCHEDULES[name](total, shift).tail(steps)


def switch_step_for_boundary(schedule: Schedule, boundary: float) -> int:
    """Index of the first step whose model timestep is below ``boundary·1000``.

    Steps before it belong to the high-noise expert (official rule: high while t ≥ boundary·T).
    Returns ``schedule.steps`` when every step is at or above the boundary.
    """
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"boundary must be in [0, 1], got {boundary}")
    threshold = boundary * NUM_TRAIN_TIMESTEPS
    for step in range(schedule.steps):
        if schedule.timestep_value(step) < threshold:
            return step
    return schedule.steps
