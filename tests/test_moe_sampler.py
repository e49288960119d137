"""The MoE sampler: switch rule, per-expert CFG, state across the switch, residency, hooks."""
from __future__ import annotations

import logging

import pytest
import torch

from wanflow.samplers import schedules as S
from wanflow.samplers.conditioning import WanConditioning, i2v_condition, i2v_mask, i2v_pixel_video
from wanflow.samplers.expert_residency import ExpertResidency
from wanflow.samplers.guidance import cfg_at, guided_velocity
from wanflow.samplers.moe import MoESampler, SamplerHooks, SamplingInterrupted, \
    weights_compute_dtype
from wanflow.samplers.noise import noised_start, seeded_noise
from wanflow.samplers.solvers import sample_euler

from moe_testing import LATENT, RecordingExpert, ToyExpert, single_thread, text  # noqa: F401


def t2v_cond(cfg_negative: bool = True) -> WanConditioning:
    return WanConditioning(context=text(1), negative_context=text(2) if cfg_negative else None)


def i2v_cond() -> WanConditioning:
    y = torch.randn(1, 20, *LATENT[2:], generator=torch.Generator().manual_seed(3))
    return WanConditioning(context=text(1), negative_context=text(2), y=y)


def noise(seed: int = 0) -> torch.Tensor:
    return seeded_noise(LATENT, seed)


def timesteps_seen(expert: ToyExpert) -> list[float]:
    return [float(c["t"].reshape(-1)[0]) for c in expert.calls]


# ---- switch rule and step counts ----------------------------------------------------------

def test_t2v_defaults_split_26_14_and_follow_the_boundary():
    high, low = ToyExpert(0), ToyExpert(1)
    schedule = S.official_unipc(40, 12.0)
    result = MoESampler(high, low).sample(noise(), schedule, t2v_cond(), cfg_high=4.0, cfg_low=3.0)
    assert result.steps_per_expert == {"high": 26, "low": 14} and result.switch_step == 26
    assert len(high.calls) == 26 and len(low.calls) == 14
    assert all(t >= 875 for t in timesteps_seen(high))
    assert all(t < 875 for t in timesteps_seen(low))


def test_i2v_defaults_split_15_25_from_the_condition():
    high, low = ToyExpert(0), ToyExpert(1)
    result = MoESampler(high, low).sample(noise(), S.official_unipc(40, 5.0), i2v_cond(),
                                          cfg_high=3.5)
    assert result.steps_per_expert == {"high": 15, "low": 25}
    assert all(t >= 900 for t in timesteps_seen(high)) and all(t < 900 for t in timesteps_seen(low))


def test_boundary_override_and_explicit_switch_step():
    schedule = S.comfy_simple(20, 8.0)
    sampler = MoESampler(ToyExpert(0), ToyExpert(1))
    assert sampler.sample(noise(), schedule, t2v_cond(), boundary=0.9).steps_per_expert == \
        {"high": 10, "low": 10}
    assert sampler.sample(noise(), schedule, t2v_cond(), switch_step=5).steps_per_expert == \
        {"high": 5, "low": 15}
    with pytest.raises(ValueError, match="switch_step"):
        sampler.sample(noise(), schedule, t2v_cond(), switch_step=21)


def test_sampling_builds_no_autograd_graph():
    model = ToyExpert(0)
    out = MoESampler(model).sample(noise(), S.comfy_simple(3, 5.0), t2v_cond()).latent
    assert not out.requires_grad and out.grad_fn is None


def test_single_model_runs_every_step():
    model = ToyExpert(0)
    result = MoESampler(model).sample(noise(), S.official_unipc(12, 5.0), t2v_cond(), boundary=0.9)
    assert result.steps_per_expert == {"high": 12} and len(model.calls) == 12


def test_distilled_four_step_moe_at_cfg_one_splits_two_two():
    """lightx2v / Lightning 4-step LoRAs: σ 1, .9375, .8333, .625 at cfg 1; split 2/2 (T2V, I2V)."""
    for cond in (t2v_cond(), i2v_cond()):
        high, low = ToyExpert(0), ToyExpert(1)
        result = MoESampler(high, low).sample(noise(), S.build_schedule("distilled", 4, 5.0), cond,
                                              solver="distilled", cfg_high=1.0, cfg_low=1.0)
        assert result.steps_per_expert == {"high": 2, "low": 2}
        assert [c["batch"] for c in high.calls + low.calls] == [1, 1, 1, 1]
        seen = timesteps_seen(high) + timesteps_seen(low)
        assert seen == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)


# ---- guidance -------------------------------------------------------------------------------

def test_per_expert_cfg_and_cfg_one_skips_uncond():
    high, low = ToyExpert(0), ToyExpert(1)
    MoESampler(high, low).sample(noise(), S.comfy_simple(8, 8.0), t2v_cond(),
                                 cfg_high=1.0, cfg_low=3.0)
    assert [c["batch"] for c in high.calls] == [1] * 5          # cond only
    assert [c["batch"] for c in low.calls] == [2] * 3           # cond + uncond batched


def test_per_step_cfg_list():
    model = ToyExpert(0)
    MoESampler(model).sample(noise(), S.comfy_simple(4, 5.0), t2v_cond(),
                             cfg_high=[5.0, 1.0, 1.0, 2.0])
    assert [c["batch"] for c in model.calls] == [2, 1, 1, 2]
    with pytest.raises(ValueError, match="per-step CFG list has 2 entries"):
        MoESampler(model).sample(noise(), S.comfy_simple(4, 5.0), t2v_cond(), cfg_high=[5.0, 1.0])


def test_batched_and_sequential_cfg_agree():
    schedule = S.official_unipc(10, 5.0)
    batched = MoESampler(ToyExpert(0), ToyExpert(1), batched_cfg=True)
    sequential = MoESampler(ToyExpert(0), ToyExpert(1), batched_cfg=False)
    a = batched.sample(noise(), schedule, t2v_cond(), cfg_high=5.0).latent
    second = sequential.sample(noise(), schedule, t2v_cond(), cfg_high=5.0)
    assert (a - second.latent).abs().max() < 1e-6
    high_calls = sequential.residency.experts["high"].calls
    assert [c["batch"] for c in high_calls] == [1, 1] * second.switch_step


class OutOfMemoryWhenBatched(ToyExpert):
    """Stands in for a GPU that cannot hold the batched cond+uncond forward."""

    def forward(self, x, t, context, **kwargs):
        if x.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")
        return super().forward(x, t, context, **kwargs)


def test_batched_cfg_out_of_memory_falls_back_to_two_forwards(caplog):
    schedule = S.official_unipc(10, 5.0)
    reference = MoESampler(ToyExpert(0), ToyExpert(1), batched_cfg=False).sample(
        noise(), schedule, t2v_cond(), cfg_high=5.0).latent
    high, low = OutOfMemoryWhenBatched(0), OutOfMemoryWhenBatched(1)
    with caplog.at_level(logging.WARNING, logger="wanflow.samplers.moe"):
        result = MoESampler(high, low).sample(noise(), schedule, t2v_cond(), cfg_high=5.0)
    assert torch.equal(result.latent, reference)
    assert [c["batch"] for c in high.calls + low.calls] == [1] * 20   # one failed try, then 2/step
    assert sum("ran out of memory" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(torch.OutOfMemoryError):                 # a single pass has no fallback
        MoESampler(OutOfMemoryWhenBatched(0)).sample(
            torch.cat([noise(), noise()]), schedule,
            WanConditioning(context=torch.cat([text(1), text(1)])), cfg_high=1.0)


def test_guided_velocity_formula():
    model = ToyExpert(0)
    x, t = noise(), torch.tensor([500.0])
    cond, uncond = model(x, t, text(1)), model(x, t, text(2))
    out = guided_velocity(model, x, t, text(1), text(2), 4.0)
    assert torch.allclose(out, uncond + 4.0 * (cond - uncond), atol=1e-6)
    assert cfg_at([1.0, 2.0], 1) == 2.0 and cfg_at(3, 7) == 3.0


# ---- state across the switch ------------------------------------------------------------

@pytest.mark.parametrize("schedule", [S.official_unipc(40, 12.0), S.comfy_simple(20, 8.0)])
def test_single_node_moe_equals_two_stage_sampling(schedule):
    """One run with an automatic switch == stage 1 (high, up to k) then stage 2 (low, from k)."""
    high, low = ToyExpert(0), ToyExpert(1)
    cond = t2v_cond()
    result = MoESampler(high, low).sample(noise(), schedule, cond, solver="euler",
                                          cfg_high=4.0, cfg_low=3.0)
    k = result.switch_step
    sigmas, ts = schedule.sigmas, schedule.timesteps

    def stage(model, scale, offset):
        def denoise(x, i):
            v = guided_velocity(model, x, ts[offset + i].reshape(1), cond.context,
                                cond.negative_context, scale)
            return x - sigmas[offset + i] * v
        return denoise

    x = sample_euler(stage(ToyExpert(0), 4.0, 0), noise(), sigmas[:k + 1])
    x = sample_euler(stage(ToyExpert(1), 3.0, k), x, sigmas[k:])
    assert (result.latent - x).abs().max() < 1e-6


def test_multistep_history_carries_across_the_switch():
    """UniPC keeps its history over the switch (official behaviour), so the low expert's first
    step differs from a restarted second stage."""
    schedule = S.official_unipc(20, 12.0)
    carried = MoESampler(ToyExpert(0), ToyExpert(1)).sample(noise(), schedule, t2v_cond())
    k = carried.switch_step
    first = MoESampler(ToyExpert(0)).sample(noise(), S.from_sigmas(schedule.sigmas[:k + 1]),
                                            t2v_cond(), solver="unipc")
    assert first.latent.shape == carried.latent.shape
    restarted = MoESampler(ToyExpert(1)).sample(first.latent, S.Schedule(
        schedule.sigmas[k:], schedule.timesteps[k:]), t2v_cond())
    assert (restarted.latent - carried.latent).abs().max() > 1e-4


# ---- noise, seeds, video-to-video -----------------------------------------------------------

def test_seeded_noise_is_comfyui_noise_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ours = seeded_noise(LATENT, 42)
    assert torch.equal(torch.get_rng_state(), before)
    generator = torch.manual_seed(42)              # ComfyUI prepare_noise
    reference = torch.randn(LATENT, dtype=torch.float32, generator=generator, device="cpu")
    assert torch.equal(ours, reference)
    assert not torch.equal(seeded_noise(LATENT, 43), ours)


def test_same_seed_same_video_different_seed_different_video():
    schedule = S.official_unipc(8, 5.0)

    def run(seed):
        return MoESampler(ToyExpert(0), ToyExpert(1)).sample(
            seeded_noise(LATENT, seed), schedule, t2v_cond()).latent

    assert torch.equal(run(5), run(5))
    assert (run(5) - run(6)).abs().max() > 1e-3


def test_video_to_video_starts_from_the_latent_at_the_matching_sigma():
    source = torch.randn(LATENT, generator=torch.Generator().manual_seed(9))
    schedule = S.build_schedule("simple", 6, 5.0, denoise=0.4)
    assert schedule.steps == 6 and float(schedule.sigmas[0]) < 0.9
    model = ToyExpert(0)
    eps = noise()
    MoESampler(model).sample(eps, schedule, t2v_cond(), latent=source, solver="euler")
    sigma0 = float(schedule.sigmas[0])
    assert len(model.calls) == 6
    assert torch.allclose(model.calls[0]["x"][:1], sigma0 * eps + (1 - sigma0) * source, atol=1e-6)
    assert torch.equal(noised_start(eps, 1.0), eps)


def test_video_to_video_recovers_the_source_for_an_ideal_denoiser():
    """A model whose x0 prediction is the source latent must return exactly that latent."""
    source = torch.randn(LATENT, generator=torch.Generator().manual_seed(9))

    class Ideal(torch.nn.Module):
        def forward(self, x, t, context, **kw):
            sigma = t.float().view(-1, 1, 1, 1, 1) / 1000.0
            return (x - source) / sigma

    schedule = S.build_schedule("simple", 5, 8.0, denoise=0.5)
    out = MoESampler(Ideal()).sample(noise(), schedule, t2v_cond(False), latent=source,
                                     solver="dpm++").latent
    assert torch.allclose(out, source, atol=1e-5)


# ---- hooks ------------------------------------------------------------------------------------

def test_progress_and_preview_every_step():
    progress, previews = [], []
    hooks = SamplerHooks(progress=lambda done, total: progress.append((done, total)),
                         preview=lambda step, x0: previews.append((step, x0.shape)))
    MoESampler(ToyExpert(0), ToyExpert(1)).sample(noise(), S.comfy_simple(6, 8.0), t2v_cond(),
                                                  hooks=hooks)
    assert progress == [(i, 6) for i in range(1, 7)]
    assert previews == [(i, torch.Size(LATENT)) for i in range(6)]


def test_interrupt_stops_within_one_step_and_models_stay_usable():
    high, low = ToyExpert(0), ToyExpert(1)
    sampler = MoESampler(high, low)
    schedule = S.official_unipc(10, 12.0)
    checks = []

    def interrupt():
        checks.append(1)
        return len(checks) > 3

    with pytest.raises(SamplingInterrupted) as info:
        sampler.sample(noise(), schedule, t2v_cond(), hooks=SamplerHooks(interrupt=interrupt))
    assert info.value.step == 3
    assert len(high.calls) + len(low.calls) == 3

    again = sampler.sample(noise(), schedule, t2v_cond()).latent
    fresh = MoESampler(ToyExpert(0), ToyExpert(1)).sample(noise(), schedule, t2v_cond()).latent
    assert torch.equal(again, fresh)


def test_interrupt_hook_may_raise_its_own_exception():
    class Stop(Exception):
        pass

    def interrupt():
        raise Stop()

    with pytest.raises(Stop):
        MoESampler(ToyExpert(0)).sample(noise(), S.comfy_simple(4, 5.0), t2v_cond(),
                                        hooks=SamplerHooks(interrupt=interrupt))


# ---- memory: one resident expert ------------------------------------------------------------

def test_only_the_active_expert_is_on_the_compute_device(caplog):
    """Compute device "cpu", offload device "meta" stand in for cuda/cpu: the recording experts
    note every .to() and where both experts are at each forward."""
    high, low = RecordingExpert(0, "high"), RecordingExpert(1, "low")
    high.partner, low.partner = low, high
    sampler = MoESampler(high, low, device="cpu", offload_device="meta")
    with caplog.at_level(logging.INFO, logger="wanflow.samplers.expert_residency"):
        result = sampler.sample(noise(), S.official_unipc(40, 12.0), t2v_cond(), cfg_high=4.0,
                                cfg_low=3.0)
    assert result.steps_per_expert == {"high": 26, "low": 14}
    assert high.seen_locations == [("high", "cpu", "meta")] * 26
    assert low.seen_locations == [("low", "cpu", "meta")] * 14
    assert high.to_calls == ["meta"]                  # offloaded once, at the switch
    assert low.to_calls == ["meta", "cpu"]           # parked at start, loaded at the switch
    moves = [r.getMessage() for r in caplog.records if "moved expert" in r.getMessage()]
    assert len(moves) == 3 and all(" s" in m for m in moves)
    assert [m[0] for m in sampler.residency.move_seconds] == ["low", "high", "low"]


def test_residency_offload_all_and_unknown_expert():
    high, low = RecordingExpert(0, "high"), RecordingExpert(1, "low")
    residency = ExpertResidency({"high": high, "low": low}, "cpu", "meta")
    residency.activate("high")
    residency.activate("high")                    # already resident: no move
    assert high.to_calls == [] and low.to_calls == ["meta"]
    residency.offload_all()
    assert high.to_calls == ["meta"] and residency.active is None
    with pytest.raises(KeyError, match="unknown expert"):
        residency.activate("middle")


def test_same_module_as_both_experts_is_not_bounced():
    model = RecordingExpert(0, "both")
    sampler = MoESampler(model, model, device="cpu", offload_device="meta")
    result = sampler.sample(noise(), S.official_unipc(10, 12.0), t2v_cond())
    assert result.steps_per_expert["low"] > 0 and model.to_calls == []


def test_sampling_moves_modules_in_place_without_copies():
    """Same parameter tensors before and after (no deepcopy, no side copies) on CPU."""
    high, low = ToyExpert(0), ToyExpert(1)
    before = [p.data_ptr() for p in list(high.parameters()) + list(low.parameters())]
    sampler = MoESampler(high, low)
    sampler.sample(noise(), S.comfy_simple(4, 5.0), t2v_cond())
    after = [p.data_ptr() for p in list(high.parameters()) + list(low.parameters())]
    assert before == after
    assert sampler.residency.experts["high"] is high and sampler.residency.experts["low"] is low


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_expert_on_cuda_at_a_time():
    high, low = ToyExpert(0), ToyExpert(1)
    where = []

    def spy(name):
        def hook(module, args):
            where.append((name, next(high.parameters()).device.type,
                          next(low.parameters()).device.type))
        return hook

    high.register_forward_pre_hook(spy("high"))
    low.register_forward_pre_hook(spy("low"))
    result = MoESampler(high, low, device="cuda").sample(noise(), S.official_unipc(40, 12.0),
                                                         t2v_cond())
    assert where[:26] == [("high", "cuda", "cpu")] * 26
    assert where[26:] == [("low", "cpu", "cuda")] * 14
    assert result.latent.device.type == "cuda"


# ---- conditioning inputs ------------------------------------------------------------------------

def test_i2v_21_passes_concat_and_clip_to_both_passes():
    clip = torch.randn(1, 257, 16)
    cond = i2v_cond()
    cond.clip_fea = clip
    model = ToyExpert(0)
    MoESampler(model).sample(noise(), S.comfy_simple(2, 5.0), cond, cfg_high=5.0)
    call = model.calls[0]
    assert call["batch"] == 2
    assert torch.equal(call["y"], torch.cat([cond.y, cond.y])) and call["clip_fea"].shape[0] == 2


def test_i2v_22_passes_concat_without_clip():
    model = ToyExpert(0)
    MoESampler(model).sample(noise(), S.comfy_simple(2, 5.0), i2v_cond(), cfg_high=1.0)
    assert model.calls[0]["y"].shape == (1, 20, *LATENT[2:]) and model.calls[0]["clip_fea"] is None


def test_ti2v_first_frame_per_token_timesteps_and_reimposed_latent():
    first = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    cond = WanConditioning(context=text(1), negative_context=text(2), first_frame=first)
    model = ToyExpert(0)
    schedule = S.official_unipc(6, 5.0)
    result = MoESampler(model).sample(noise(), schedule, cond, cfg_high=5.0)
    for step, call in enumerate(model.calls):
        t = call["t"]
        assert t.shape == (2, 3 * 2 * 2)                      # [B·2 (cfg), F·H/2·W/2]
        assert torch.all(t[:, :4] == 0)
        assert torch.all(t[:, 4:] == float(schedule.timesteps[step]))
        assert torch.equal(call["x"][:, :, :1], first.expand(2, -1, -1, -1, -1))
    assert torch.equal(result.latent[:, :, :1], first)


def test_vace_context_strength_and_trim():
    vace = torch.randn(1, 96, *LATENT[2:])
    cond = WanConditioning(context=text(1), vace_context=vace, vace_strength=0.7,
                           vace_trim_frames=1)
    model = ToyExpert(0)
    result = MoESampler(model).sample(noise(), S.comfy_simple(3, 5.0), cond, cfg_high=1.0)
    assert model.calls[0]["vace_context"] is not None and model.calls[0]["vace_scale"] == 0.7
    assert result.latent.shape == (1, 4, LATENT[2] - 1, 4, 4)


def test_stacked_vace_contexts_go_to_both_cfg_passes():
    contexts = [torch.randn(1, 96, *LATENT[2:]), torch.randn(1, 96, *LATENT[2:])]
    cond = WanConditioning(context=text(1), negative_context=text(2), vace_context=contexts,
                           vace_strength=[1.0, 0.5])
    model = ToyExpert(0)
    MoESampler(model).sample(noise(), S.comfy_simple(2, 5.0), cond, cfg_high=5.0)
    sent = model.calls[0]["vace_context"]
    assert len(sent) == 2 and sent[0].shape[0] == 2 and model.calls[0]["vace_scale"] == [1.0, 0.5]
    with pytest.raises(ValueError, match="vace_strength has 1 entries for 2"):
        WanConditioning(context=text(1), vace_context=contexts, vace_strength=[1.0]).validate(noise())


def test_compute_dtype_reaches_the_dit_and_solver_state_stays_float32(monkeypatch):
    from dit_testing import randomize_
    from wanflow.wan.dit import WanDiT
    from wanflow.wan.dit_config import TINY_PRESETS

    cfg = TINY_PRESETS["t2v"]
    model = WanDiT(cfg).eval()
    randomize_(model, seed=0)
    dtypes = []
    model.register_forward_pre_hook(lambda m, args: dtypes.append(args[0].dtype))
    latent = seeded_noise((1, 16, 2, 4, 4), 0)
    cond = WanConditioning(context=torch.randn(1, 7, cfg.text_dim),
                           negative_context=torch.randn(1, 7, cfg.text_dim))
    schedule = S.official_unipc(6, 5.0)
    with torch.no_grad():
        full = MoESampler(model).sample(latent, schedule, cond).latent
        half = MoESampler(model, compute_dtype=torch.bfloat16).sample(latent, schedule, cond).latent
    assert dtypes[:6] == [torch.float32] * 6 and dtypes[6:] == [torch.bfloat16] * 6
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.1 * full.abs().max()
    model.to(torch.bfloat16)          # bf16 weights: bf16 compute by default where the CPU has bf16 ...
    monkeypatch.setenv("WANFLOW_CPU_BF16", "1")
    assert MoESampler(model).compute_dtype == torch.bfloat16
    monkeypatch.setenv("WANFLOW_CPU_BF16", "0")       # ... float32 on one without (AVX2 only)
    assert MoESampler(model).compute_dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16   # the weights stay as stored
    assert MoESampler(model, device="cuda").compute_dtype == torch.bfloat16  # GPUs: bf16
    for block in model.blocks:                            # mostly-fp8 storage computes in bf16
        block.to(torch.float8_e4m3fn)
    model.patch_embedding.to(torch.float32)
    assert weights_compute_dtype(model, torch.device("cuda")) == torch.bfloat16
    assert weights_compute_dtype(model, torch.device("cpu")) == torch.float32
    monkeypatch.setenv("WANFLOW_CPU_BF16", "1")
    assert weights_compute_dtype(model) == torch.bfloat16
    assert weights_compute_dtype(lambda *a: None) == torch.float32


def test_bad_conditioning_is_named():
    with pytest.raises(ValueError, match="y has frames"):
        WanConditioning(context=text(1), y=torch.zeros(1, 20, 2, 4, 4)).validate(noise())
    with pytest.raises(ValueError, match="negative_context has batch"):
        WanConditioning(context=text(1), negative_context=torch.zeros(2, 6, 8)).validate(noise())
    with pytest.raises(ValueError, match="vace_trim_frames"):
        WanConditioning(context=text(1), vace_trim_frames=1).validate(noise())


def test_i2v_mask_layout():
    mask = i2v_mask(9, 2, 3)
    assert mask.shape == (1, 4, 3, 2, 3)
    assert torch.all(mask[:, :, 0] == 1) and torch.all(mask[:, :, 1:] == 0)
    flf = i2v_mask(9, 2, 3, end_frames=1)
    assert flf[0, :, 2, 0, 0].tolist() == [0, 0, 0, 1]
    y = i2v_condition(torch.randn(1, 16, 3, 2, 3), 9)
    assert y.shape == (1, 20, 3, 2, 3)
    with pytest.raises(ValueError, match="4n\\+1"):
        i2v_mask(8, 2, 3)


def test_i2v_mask_and_clip_with_several_start_and_end_frames():
    """Continuing a clip: N known start frames and M end frames, as ComfyUI's WanFirstLastFrameToVideo
    marks them (pixel frames 0..N-1 and the last M; frame 0 fills the first latent frame's 4 slots)."""
    mask = i2v_mask(13, 1, 1, start_frames=6, end_frames=2)
    assert mask[0, :, :, 0, 0].T.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 1, 1]]
    start, end = torch.rand(1, 3, 6, 2, 2), torch.rand(1, 3, 2, 2, 2)
    video = i2v_pixel_video(start, 13, end)
    assert torch.equal(video[:, :, :6], start) and torch.equal(video[:, :, -2:], end)
    assert torch.all(video[:, :, 6:11] == 0)
    with pytest.raises(ValueError, match="image has 14 frames, more than the clip's 13"):
        i2v_pixel_video(torch.rand(1, 3, 14, 2, 2), 13)
    with pytest.raises(ValueError, match="start_frames=14"):
        i2v_mask(13, 1, 1, start_frames=14)


def test_vace_reference_letterbox_and_mask_folding():
    from wanflow.samplers.vace_conditioning import build_vace_context, fit_reference, \
        vace_mask_channels

    ref = torch.full((1, 3, 16, 16), -1.0)
    boxed = fit_reference(ref, 16, 32)                     # square into a wide frame
    assert boxed.shape == (1, 3, 16, 32)
    assert torch.all(boxed[..., :8] == 1) and torch.all(boxed[..., 8:24] == -1)
    mask = torch.zeros(1, 1, 5, 16, 16)
    mask[..., 0::8, 1::8] = 1                              # pixel (row 0, col 1) of each 8x8 cell
    folded = vace_mask_channels(mask, 2)
    assert folded.shape == (1, 64, 2, 2, 2)
    assert torch.all(folded[:, 1] == 1) and folded.sum() == 1 * 2 * 2 * 2
    with pytest.raises(ValueError, match="4n\\+1"):
        build_vace_context(lambda px: px, num_frames=6, height=16, width=16)
