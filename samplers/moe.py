"""One sampler for Wan: a high-noise expert, an optional low-noise expert, one solver run.

Wan 2.2 A14B splits denoising between two experts. The official rule: at each step the
high-noise expert runs while the step's model timestep ``t ≥ boundary·1000``, the low-noise
expert afterwards (boundary 0.875 for T2V, 0.900 for I2V). Here that switch happens inside one
solver run, so the solver's history (UniPC / DPM++ multistep state) and the latent carry straight
across it, exactly like the official pipeline and diffusers' ``WanPipeline(transformer_2=…)``.
With only a high expert the same sampler runs a single model (Wan 2.1, TI2V-5B).

Latent space: the sampler works on normalised latents (``(z − mean)/std``), the space the DiT
expects. ComfyUI LATENTs hold raw VAE latents; nodes convert with ``wan/latent_stats.py``
before and after calling :meth:`MoESampler.sample`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..wan.compute_dtype import module_compute_dtype
from .conditioning import WanConditioning
from .context_windows import ContextWindows
from .expert_residency import ExpertResidency, Parking, module_device
from .guidance import CfgSchedule, cfg_at, guided_velocity, subject_guided_velocity
from .noise import noised_start
from .schedules import Schedule, switch_step_for_boundary
from .solvers import get_solver
from .step_cache import CacheLevel, CacheStats, start_cache

logger = logging.getLogger(__name__)

# Official boundaries (Wan2.2 configs): T2V-A14B 0.875, I2V-A14B 0.900.
DEFAULT_BOUNDARY = {"t2v": 0.875, "i2v": 0.900}

HIGH, LOW = "high", "low"


class SamplingInterrupted(RuntimeError):
    """Raised when the interrupt hook asks to stop; the models stay intact and reusable."""

    def __init__(self, step: int) -> None:
        super().__init__(f"sampling interrupted before step {step}")
        self.step = step


@dataclass
class SamplerHooks:
    """Optional callbacks, each called once per step.

    ``progress(done, total)`` after a step; ``preview(step, x0)`` with the current clean-latent
    prediction (normalised space); ``interrupt()`` before each model call: return True (or raise
    your own exception) to stop within one step.
    """

    progress: Optional[Callable[[int, int], None]] = None
    preview: Optional[Callable[[int, torch.Tensor], None]] = None
    interrupt: Optional[Callable[[], bool]] = None


@dataclass
class SamplingResult:
    """Final latent (normalised, VACE reference frames trimmed) and how the steps were split."""

    latent: torch.Tensor
    switch_step: int
    steps_per_expert: dict[str, int] = field(default_factory=dict)
    cache: Optional[CacheStats] = None


def weights_compute_dtype(model: nn.Module, device: Optional[torch.device] = None) -> torch.dtype:
    """The activation dtype suiting the dtype that holds most of a model's weights, on ``device``.

    fp32 → fp32; bf16 / fp16 → the same and fp8 or GGUF block storage (raw ``uint8`` blocks) → bf16
    where the device computes half precision natively, else fp32 (a CPU without native bf16 runs
    it several times slower; the weights stay as stored: ``wan.compute_dtype``); non-modules → fp32.
    """
    if not isinstance(model, nn.Module):
        return torch.float32
    return module_compute_dtype(model, device)


def resolve_switch_step(schedule: Schedule, *, has_low: bool, boundary: Optional[float],
                        switch_step: Optional[int]) -> int:
    """First step of the low-noise expert: explicit ``switch_step`` wins over ``boundary``.

    Without a low expert every step belongs to the high (single) model.
    """
    if not has_low:
        return schedule.steps
    if switch_step is not None:
        if not 0 <= switch_step <= schedule.steps:
            raise ValueError(f"switch_step must be in [0, {schedule.steps}], got {switch_step}")
        return int(switch_step)
    if boundary is None:
        raise ValueError("a low-noise expert needs a boundary or a switch_step")
    return switch_step_for_boundary(schedule, boundary)


class MoESampler:
    """Samples with one or two Wan experts; only the active one sits on ``device``.

    ``high`` / ``low`` are DiTs (or any callable with the DiT forward signature
    ``model(x, t, context, *, y=None, clip_fea=None, vace_context=None, vace_scale=1.0)`` returning
    the velocity). ``device`` is where compute happens (default: where ``high`` is).
    ``batched_cfg=False`` runs cond and uncond as two forwards to save memory; a batched
    forward that runs out of device memory also falls back to two forwards for the rest of
    that run (logged).
    ``compute_dtype``: dtype of the latent handed to the DiT, which computes in that dtype. By
    default it follows the high expert's weights and ``device`` (fp32 → fp32, bf16/fp16 → same,
    fp8 → bf16; fp32 instead of half precision on CPUs without native bf16).
    The solver state always stays float32.
    ``parking``: experts (by name, "high"/"low") whose weights wait on disk while inactive
    (``model_loaders.parking.DiskBacked``): the two-expert low-RAM mode.
    """

    def __init__(self, high: nn.Module, low: Optional[nn.Module] = None, *,
                 device: Union[str, torch.device, None] = None,
                 offload_device: Union[str, torch.device] = "cpu",
                 batched_cfg: bool = True,
                 compute_dtype: Optional[torch.dtype] = None,
                 parking: Optional[Mapping[str, Parking]] = None) -> None:
        experts = {HIGH: high} if low is None else {HIGH: high, LOW: low}
        if device is None:
            device = (module_device(high) if isinstance(high, nn.Module) else None) or "cpu"
        self.device = torch.device(device)
        self.residency = ExpertResidency(experts, self.device, offload_device, parking)
        self.has_low = low is not None
        self.batched_cfg = batched_cfg
        self.compute_dtype = compute_dtype or weights_compute_dtype(high, self.device)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, schedule: Schedule, cond: WanConditioning, *,
               latent: Optional[torch.Tensor] = None, solver: str = "unipc",
               cfg_high: CfgSchedule = 5.0, cfg_low: Optional[CfgSchedule] = None,
               boundary: Optional[float] = None, switch_step: Optional[int] = None,
               hooks: Optional[SamplerHooks] = None,
               generator: Optional[torch.Generator] = None,
               offload_when_done: bool = False,
               cache: Union[str, CacheLevel, None] = None,
               context_windows: Optional[ContextWindows] = None) -> SamplingResult:
        """Denoise ``noise`` (``[B,C,F,H,W]``, normalised space) over ``schedule``.

        ``latent``: start video-to-video from this latent at ``schedule.sigmas[0]`` (use a
        schedule built with ``denoise < 1``). ``cfg_high`` / ``cfg_low``: per-expert guidance,
        each a float or a per-step list indexed by the global step (``cfg_low`` defaults to
        ``cfg_high``). ``boundary``: defaults to 0.900 when ``cond.y`` is set (I2V), else 0.875.
        ``generator``: fresh-noise re-noising for the "distilled" solver only.
        ``cache``: a step-cache level (``samplers.step_cache``: "off", a level name or a
        ``CacheLevel``) that skips forwards the last computed ones predict; default off.
        ``context_windows``: run each model call over overlapping windows of latent frames
        (``samplers.context_windows``) to sample a clip longer than the model's window.
        """
        hooks = hooks or SamplerHooks()
        cond.validate(noise)
        if generator is not None and solver != "distilled":
            raise ValueError(f"generator is only used by the 'distilled' solver, not {solver!r}")
        step_fn = get_solver(solver)
        if boundary is None:
            boundary = DEFAULT_BOUNDARY["i2v" if cond.y is not None else "t2v"]
        switch = resolve_switch_step(schedule, has_low=self.has_low, boundary=boundary,
                                     switch_step=switch_step)
        split = {HIGH: switch, LOW: schedule.steps - switch} if self.has_low else {HIGH: switch}
        step_cache = start_cache(cache, schedule.steps, switch)
        logger.info("sampling %d steps with %s: %s", schedule.steps, solver, split)
        if context_windows is not None:
            logger.info("%s", context_windows.describe(noise.shape[2] - cond.vace_trim_frames))

        cond = cond.to(self.device)
        sigmas = schedule.sigmas.to(self.device)
        cfg = {HIGH: cfg_high, LOW: cfg_high if cfg_low is None else cfg_low}
        extras = cond.model_extras()
        x = noised_start(noise.to(self.device, torch.float32), float(schedule.sigmas[0]),
                         None if latent is None else latent.to(self.device, torch.float32))

        batched = self.batched_cfg and cond.can_batch_guidance()

        def denoise(x_t: torch.Tensor, step: int) -> torch.Tensor:
            nonlocal batched
            if hooks.interrupt is not None and hooks.interrupt():
                raise SamplingInterrupted(step)
            name = HIGH if step < switch else LOW
            model = self.residency.activate(name)
            t = cond.model_timestep(schedule.timesteps[step], x_t)
            scale = cfg_at(cfg[name], step, where=f"cfg_{name}")
            x_in = cond.impose_first_frame(x_t).to(self.compute_dtype)

            def guided(batch_cfg: bool) -> torch.Tensor:
                fn = model if step_cache is None else step_cache.model_for(model, name, step)

                def guide(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kw) -> torch.Tensor:
                    if cond.subjects is not None:        # Phantom: three passes, two scales
                        return subject_guided_velocity(fn, x, t, context, cond.negative_context, cond.subjects,
                                                       scale, cond.subject_cfg, batched=batch_cfg, extras=kw)
                    return guided_velocity(fn, x, t, context, cond.negative_context, scale,
                                           batched=batch_cfg, extras=kw)

                if context_windows is not None:           # windows of the guided velocity
                    guide = context_windows.model_for(guide, float(sigmas[step]), pinned=cond.vace_trim_frames)
                return guide(x_in, t, cond.context, **extras)

            try:
                velocity = guided(batched)
            except torch.OutOfMemoryError:
                guided_passes = scale != 1.0 or (cond.subjects is not None and cond.subject_cfg != 1.0)
                if not (batched and guided_passes and cond.negative_context is not None):
                    raise                                # it was not a batched cond+uncond pass
                batched = False
                logger.warning("step %d: batched cond+uncond forward ran out of memory; running "
                               "them as two forwards for the rest of this run", step)
                _release_cached_memory(self.device)
                velocity = guided(False)
            return x_t - sigmas[step] * velocity.to(x_t.dtype)

        def after_step(step: int, x_next: torch.Tensor, x0: torch.Tensor) -> None:
            if hooks.progress is not None:
                hooks.progress(step + 1, schedule.steps)
            if hooks.preview is not None:
                hooks.preview(step, cond.impose_first_frame(x0))

        kwargs = {"generator": generator} if generator is not None else {}
        try:
            x = step_fn(denoise, x, sigmas, after_step, **kwargs)
        finally:
            if offload_when_done:
                self.residency.offload_all()
        x = cond.impose_first_frame(x)
        return SamplingResult(cond.trim(x), switch, split, None if step_cache is None else step_cache.stats)


def _release_cached_memory(device: torch.device) -> None:
    """Hand the failed batched forward's cached blocks back before retrying with less."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
