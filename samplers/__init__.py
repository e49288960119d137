"""Flow-matching schedules, solvers, guidance and the two-expert MoE sampler.

Typical use (all latents in the normalised space the DiT samples in)::

    from .samplers import MoESampler, WanConditioning, build_schedule, seeded_noise

    schedule = build_schedule("unipc", steps=40, shift=12.0)
    noise = seeded_noise(latent_shape, seed)
    result = MoESampler(high, low, device="cuda").sample(
        noise, schedule, WanConditioning(context=pos, negative_context=neg),
        cfg_high=4.0, cfg_low=3.0, boundary=0.875)
    result.latent, result.steps_per_expert          # -> {"high": 26, "low": 14}
"""
from .conditioning import (WanConditioning, encode_first_frame, encode_i2v_condition, i2v_condition,
                           i2v_mask, i2v_pixel_video)
from .expert_residency import ExpertResidency
from .moe import DEFAULT_BOUNDARY, MoESampler, SamplerHooks, SamplingInterrupted, SamplingResult
from .noise import noised_start, seeded_noise
from .schedules import (SCHEDULES, Schedule, build_schedule, comfy_simple, distilled, from_sigmas,
                        official_dpmpp, official_unipc, switch_step_for_boundary)
from .solvers import SOLVERS, get_solver
from .vace_conditioning import build_vace_context, fit_reference, vace_mask_channels

__all__ = [
    "WanConditioning", "encode_first_frame", "encode_i2v_condition", "i2v_condition", "i2v_mask",
    "i2v_pixel_video", "ExpertResidency", "DEFAULT_BOUNDARY", "MoESampler", "SamplerHooks",
    "SamplingInterrupted", "SamplingResult", "noised_start", "seeded_noise", "SCHEDULES",
    "Schedule", "build_schedule", "comfy_simple", "distilled", "from_sigmas", "official_dpmpp",
    "official_unipc", "switch_step_for_boundary", "SOLVERS", "get_solver", "build_vace_context",
    "fit_reference", "vace_mask_channels",
]
