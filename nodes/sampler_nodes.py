"""MoE sampler node: one or two Wan experts, the official switch rule, one solver run.

LATENT in and out holds raw VAE latents (ComfyUI's convention); the sampler itself works in the
normalised space, so this node converts with the VAE's latent statistics on the way in and out.
"""
from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from typing import Mapping, Optional

import torch

from ..distributed.cfg_parallel import parallel_dit
from ..distributed.fsdp import ShardedInPlace, is_sharded
from ..model_loaders.detect import WanVariant
from ..samplers.conditioning import WanConditioning
from ..samplers.context_windows import BLENDS, ContextWindows
from ..samplers.expert_residency import Parking
from ..samplers.moe import MoESampler, SamplerHooks, SamplingInterrupted
from ..samplers.noise import seeded_noise
from ..samplers.schedules import SCHEDULES, build_schedule
from ..samplers.solvers import SOLVERS
from ..samplers.step_cache import CACHE_CHOICES, OFF, cache_level
from ..wan.attention import backend_for, use_backend
from ..wan.latent_stats import LatentStats, stats_for_channels
from ..wan.lora import LoraStack
from . import comfy_adapter
from .comfy_models import ComfyPlacement
from .core_bridge import CoreWanModel, as_model_handle
from .handles import ModelHandle
from .headless_placement import block_swap_for
from .lora_nodes import build_lora_stack
from .model_checks import check_sampler_models, conditioning_kind
from .types import CONDITIONING, LATENT, LORA_STACK, MODEL_OR_CORE, SAMPLING

log = logging.getLogger("wanflow")

SCHEDULER_NAMES = sorted(SCHEDULES) + ["distilled"]


class WanFlowMoESampler:
    DESCRIPTION = ("Denoise with a high-noise expert and an optional low-noise expert (Wan 2.2 A14B), switching at "
                   "the official boundary; also runs single models (Wan 2.1, TI2V-5B). Takes WanFlow models or core "
                   "MODELs (WANFLOW_MODEL or MODEL), and WanFlow conditioning (core CONDITIONING through WanFlow "
                   "Conditioning from Core). The optional step cache skips model forwards that the last computed "
                   "ones predict (off by default).")
    CATEGORY = SAMPLING
    RETURN_TYPES = (LATENT,)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_high": (MODEL_OR_CORE, {"tooltip": "High-noise expert, or the only model for Wan 2.1 / TI2V-5B. "
                               "A core MODEL works too (UNETLoader, GGUF loaders, after core LoRA loaders and "
                               "patches): ComfyUI's model management places it."}),
                "conditioning": (CONDITIONING, {"tooltip": "From WanFlow Text Encode, Image to Video or Reference to Video."}),
                "latent": (LATENT, {"tooltip": "Start latent (raw): from Empty Video Latent, Image to Video, "
                                               "Reference to Video, or a VAE encode for video-to-video."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed; the same seed gives the same video as ComfyUI's samplers."}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "tooltip":
                          "Denoising steps (official: 40 for Wan 2.2 A14B, 50 for 2.1 and TI2V-5B; 4 with lightx2v)."}),
                "shift": ("FLOAT", {"default": 12.0, "min": 0.1, "max": 100.0, "step": 0.1, "tooltip":
                          "Sigma shift (official: 12 T2V-A14B and Wan 2.2 VACE-Fun, 5 I2V-A14B and TI2V-5B, 16 Wan 2.1 VACE)."}),
                "solver": (sorted(SOLVERS), {"default": "unipc", "tooltip":
                           "unipc (official default), dpm++, euler, or distilled (step-distilled LoRAs/models)."}),
                "scheduler": (SCHEDULER_NAMES, {"default": "unipc", "tooltip":
                              "Sigma schedule: the official unipc / dpm++ grids, ComfyUI's simple, or distilled."}),
                "cfg_high": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                             "Guidance on the high-noise expert (official T2V-A14B: 4.0). 1.0 skips the negative pass."}),
                "cfg_low": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip":
                            "Guidance on the low-noise expert (official T2V-A14B: 3.0)."}),
                "boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip":
                             "Expert switch as a fraction of 1000 timesteps; 0 (shown as auto) = from the model "
                             "(0.875 T2V and VACE-Fun, 0.900 I2V)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip":
                            "Below 1 starts from the input latent (video-to-video)."}),
            },
            "optional": {
                "model_low": (MODEL_OR_CORE, {"tooltip": "Low-noise expert of Wan 2.2 A14B (WanFlow or core MODEL); "
                              "leave empty for single models."}),
                "lora_stack": (LORA_STACK, {"tooltip": "LoRAs applied for this run only (high/low strengths)."}),
                "cache": (list(CACHE_CHOICES), {"default": OFF, "tooltip":
                          "Step cache: skip a model forward when the last computed steps predict it (EasyCache-"
                          "style, calibrated while sampling, with its own threshold for each expert; the first 3 "
                          "steps of each expert and the last 2 steps always run). off: every step runs (exact). "
                          "quality / balanced / fast: on the nano models 1.9-3.5x / 2.8-4.6x / 3.5-5x fewer "
                          "forwards at 47-52 / 37-41 / 27-34 dB PSNR against the exact video. 'wanflow run --cache "
                          "LEVEL' sets it on every sampler."}),
                "context_window": ("INT", {"default": 0, "min": 0, "max": 10001, "tooltip":
                                   "Context windows for clips longer than the model's window: pixel frames per window "
                                   "(81 for the 14B models, 17 for the nano ones); 0 = off. Each step runs the model on "
                                   "overlapping windows of the latent and blends their predictions; one noise schedule "
                                   "for the whole clip. A clip that fits one window runs unchanged."}),
                "context_overlap": ("INT", {"default": 16, "min": 0, "max": 10000, "tooltip":
                                    "Pixel frames shared by neighbouring windows (rounded up to latent frames: 4 pixel "
                                    "frames each); must leave new frames in every window."}),
                "context_blend": (list(BLENDS), {"default": BLENDS[0], "tooltip":
                                  "How overlapping windows mix: pyramid weights a frame most in the window where it "
                                  "sits furthest from an edge; uniform averages them."}),
                "drift_control": ("BOOLEAN", {"default": False, "tooltip":
                                  "Context windows: at each step match every window's per-channel latent mean and "
                                  "spread (colour, brightness, contrast of its denoised prediction) to the first "
                                  "window's, so later windows keep the first one's look. Off by default: on the nano "
                                  "models, with the anchor, colours already hold and this added a little colour error "
                                  "(bench/results/context_windows.md). Never for clips whose colour should change."}),
                "context_anchor": ("BOOLEAN", {"default": True, "tooltip":
                                   "Context windows: put the clip's first latent frame in front of every window, so "
                                   "each window is a valid Wan clip (picture latent first) tied to the first frame; "
                                   "I2V's start image then reaches every window. Off: plain sliding windows."}),
            },
        }

    @classmethod
    def check_models(cls, models: Mapping[str, WanVariant], conditioning: Mapping[str, str],
                     connected: set[str]) -> None:
        """The headless runner's check before loading (from file headers); see nodes/model_checks.py."""
        check_sampler_models(models, conditioning.get("conditioning"))

    def sample(self, model_high: ModelHandle, conditioning: WanConditioning, latent: dict, seed: int, steps: int, shift: float,
               solver: str, scheduler: str, cfg_high: float, cfg_low: float, boundary: float, denoise: float,
               model_low: Optional[ModelHandle] = None, lora_stack: Optional[tuple] = None,
               cache: str = OFF, context_window: int = 0, context_overlap: int = 16,
               context_blend: str = BLENDS[0], drift_control: bool = False,
               context_anchor: bool = True) -> tuple[dict]:
        cache_level(cache, "MoE sampler: cache")
        windows = context_windows_for(context_window, context_overlap, context_blend, drift_control, context_anchor)
        model_high = as_model_handle(model_high, "MoE sampler", "model_high")
        if model_low is not None:
            model_low = as_model_handle(model_low, "MoE sampler", "model_low")
        if lora_stack and any(isinstance(m.model, CoreWanModel) for m in (model_high, model_low) if m is not None):
            raise ValueError("MoE sampler: lora_stack: WanFlow LoRA stacks apply to models from WanFlow Model Loader; "
                             "for a core MODEL use core LoraLoaderModelOnly before this node")
        models = {"model_high": model_high.variant}
        if model_low is not None:
            models["model_low"] = model_low.variant
        check_sampler_models(models, conditioning_kind(conditioning))
        raw = latent["samples"]
        stats = latent_stats_for(raw, model_high)
        schedule = build_schedule(scheduler, steps, shift, denoise)
        start = None
        if denoise < 1.0:  # ComfyUI's rule: an all-zero latent is "empty" and stays 0 in the sampler's space
            start = stats.normalize(raw.float()) if raw.any() else torch.zeros_like(raw, dtype=torch.float32)
        noise = seeded_noise(raw.shape, seed)
        cond = _match_batch(conditioning, raw.shape[0])
        device = comfy_adapter.compute_device()
        experts = [m.model for m in (model_high, model_low) if m is not None]
        parking = expert_parking({"high": model_high, "low": model_low})
        if not comfy_adapter.in_comfyui():  # inside ComfyUI its model management makes the room
            comfy_adapter.make_room(max(comfy_adapter.module_bytes(m) for m in experts), device)  # one expert at a time
        auto_boundary = getattr(model_high.variant.defaults, "boundary", None)
        with ExitStack() as cleanup, comfy_adapter.Progress(schedule.steps, "sampling") as bar:
            # under `wanflow run --gpus N` each expert's tokens (and CFG batch) split across the ranks
            high, low = (cleanup.enter_context(parallel_dit(m.model)) if m is not None else None
                         for m in (model_high, model_low))
            sampler = MoESampler(high, low, device=device, offload_device=comfy_adapter.offload_device(),
                                 compute_dtype=comfy_adapter.inference_dtype(device), parking=parking)
            cleanup.enter_context(use_backend(model_high.attention))
            for handle, runnable in ((model_high, high), (model_low, low)):  # each expert with its loader's choice
                if handle is not None and isinstance(runnable, torch.nn.Module):  # (core MODELs: core's)
                    cleanup.enter_context(backend_for(runnable, handle.attention))
            if lora_stack:
                stack = build_lora_stack(lora_stack)
                for expert, model in (("high", model_high), ("low", model_low)):
                    if model is not None:
                        apply_stack(stack, model, expert, cleanup)
            previewer = comfy_adapter.latent_previewer(raw.shape[1])
            hooks = SamplerHooks(progress=lambda done, total: bar.update(done - bar.value),
                                 preview=(lambda step, x0: bar.update(0, preview=previewer(x0))) if previewer else None,
                                 interrupt=_interrupt_requested)
            try:
                result = sampler.sample(noise, schedule, cond, latent=start, solver=solver, cfg_high=cfg_high,
                                        cfg_low=cfg_low, boundary=boundary or auto_boundary, hooks=hooks,
                                        offload_when_done=True, cache=cache, context_windows=windows)
            except SamplingInterrupted as exc:
                raise comfy_adapter.Interrupted(str(exc)) from exc
        out = stats.denormalize(result.latent.float()).to(comfy_adapter.offload_device())
        note = expert_split_note(result.steps_per_expert, boundary or auto_boundary, automatic=not boundary,
                                 two_experts=model_low is not None)
        if result.cache is not None:
            note = f"{note}; {result.cache.note()}"
        if windows is not None:
            note = f"{note}; {windows.describe(raw.shape[2] - cond.vace_trim_frames)}"
        log.info("MoE sampler: %s", note)
        return {"ui": {"text": [note]}, "result": ({"samples": out},)}


def context_windows_for(window: int, overlap: int, blend: str, drift_control: bool,
                        anchor: bool = True) -> Optional[ContextWindows]:
    """The node's context-window widgets as settings (None when off), with errors naming them."""
    if window == 0:
        return None
    if blend not in BLENDS:
        raise ValueError(f"MoE sampler: context_blend {blend!r} is not one of {', '.join(BLENDS)}")
    return ContextWindows.from_pixel_frames(window, overlap, blend, bool(drift_control), bool(anchor),
                                            where="MoE sampler")


def expert_parking(handles: Mapping[str, Optional[ModelHandle]]) -> dict[str, Parking]:
    """Who places each expert while the other one runs.

    Inside ComfyUI: its model management (or the expert's file, in the low-RAM "reload from disk"
    mode). Headless: block swap when the expert is larger than ``--max-vram`` or the free GPU
    memory (the file, if any, feeding it), else the file, else the sampler's plain moves (absent).
    An expert sharded across ranks (``wanflow run --gpus N``) stays where its shards are.
    """
    parking: dict[str, Parking] = {}
    for name, handle in handles.items():
        if handle is None:
            continue
        if is_sharded(handle.model):
            parking[name] = ShardedInPlace(handle.model)
            continue
        swap = None if comfy_adapter.in_comfyui() else block_swap_for(handle.model, inner=handle.parking)
        if swap is not None:
            parking[name] = swap
        elif handle.parking is not None:
            parking[name] = handle.parking
        elif comfy_adapter.in_comfyui():
            parking[name] = ComfyPlacement.for_module(handle.model)
    return parking


def apply_stack(stack: LoraStack, handle: ModelHandle, expert: str, cleanup: ExitStack) -> None:
    """Apply ``stack`` to one expert for this run; ``cleanup`` takes it off again.

    An expert whose weights wait on disk is read back while the stack is applied (the stack keeps
    a copy of the few tensors it bakes, such as modulation diffs) and bakes them again each time
    the weights come back from the file."""
    if handle.parking is None:
        cleanup.callback(stack.apply(handle.model, expert).remove)
        return
    with handle.weights_loaded(comfy_adapter.offload_device()):
        application = stack.apply(handle.model, expert)
    cleanup.callback(application.remove)
    handle.parking.after_restore.append(application.refresh)
    cleanup.callback(handle.parking.after_restore.remove, application.refresh)


def expert_split_note(steps: dict[str, int], boundary: Optional[float], automatic: bool, two_experts: bool) -> str:
    """What the node shows after a run: the boundary it used and how many steps each expert took."""
    if not two_experts:
        return f"one model, {sum(steps.values())} steps"
    where = f"boundary {boundary:.3f} ({'automatic' if automatic else 'set'})" if boundary else "switch by step"
    return f"{where}: high-noise expert {steps.get('high', 0)} steps, low-noise expert {steps.get('low', 0)} steps"


def latent_stats_for(raw: torch.Tensor, model: ModelHandle) -> LatentStats:
    """The VAE statistics that match the latent's channel count (16: VAE 2.1, 48: VAE 2.2)."""
    if raw.ndim != 5 or raw.shape[1] not in (16, 48):
        raise ValueError(f"MoE sampler: latent has shape {tuple(raw.shape)}; expected [batch, 16 or 48, frames, h, w]")
    wanted = model.variant.config.out_dim
    if wanted != raw.shape[1]:
        raise ValueError(f"MoE sampler: the latent has {raw.shape[1]} channels but {model.variant.name} works on "
                         f"{wanted} (TI2V-5B uses the Wan 2.2 VAE, every other model the Wan 2.1 VAE)")
    return stats_for_channels(raw.shape[1])


def _match_batch(cond: WanConditioning, batch: int) -> WanConditioning:
    """Repeat single-prompt conditioning over the latent batch."""
    changes = {}
    for field in dataclasses.fields(cond):
        value = getattr(cond, field.name)
        if isinstance(value, torch.Tensor) and value.ndim >= 3 and value.shape[0] == 1 and batch > 1:
            changes[field.name] = value.expand(batch, *value.shape[1:])
    return dataclasses.replace(cond, **changes) if changes else cond


def _interrupt_requested() -> bool:
    comfy_adapter.check_interrupted()  # raises ComfyUI's exception (or ours) when the user cancels
    return False
