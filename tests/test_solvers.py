"""Solver trajectories against diffusers' schedulers configured for exact official parity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, \
    UniPCMultistepScheduler

from wanflow.samplers import schedules as S
from wanflow.samplers.solvers import get_solver, sample_distilled, sample_dpmpp_2m, \
    sample_euler, sample_unipc


from moe_testing import single_thread  # noqa: F401,E402


class ToyVelocity:
    """A fixed nonlinear velocity field v(x, t): enough structure that solver errors show."""

    def __init__(self, channels: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(channels, channels, generator=g) / channels ** 0.5
        self.target = torch.randn(1, channels, 2, 4, 4, generator=g)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        s = float(t) / 1000.0
        mixed = torch.einsum("oc,bcfhw->bofhw", self.mix, x)
        return torch.tanh(mixed) * (0.5 + s) + (x - self.target) * 0.3 * (1 - s)


def start_noise() -> torch.Tensor:
    return torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(7))


def run_ours(solver, schedule: S.Schedule, model: ToyVelocity) -> torch.Tensor:
    sigmas = schedule.sigmas

    def denoise(x, i):
        return x - sigmas[i] * model(x, schedule.timesteps[i])

    return solver(denoise, start_noise(), sigmas)


def run_diffusers(scheduler, model: ToyVelocity) -> torch.Tensor:
    x = start_noise()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


def official_float64_sigmas(start: float, steps: int, shift: float, take_first: bool) -> np.ndarray:
    grid = np.linspace(start, 0, steps + 1)
    grid = grid[:steps] if take_first else grid[:-1]
    return shift * grid / (1 + (shift - 1) * grid)


@pytest.mark.parametrize("shift", [12.0, 5.0])
def test_unipc_matches_diffusers_over_40_steps(shift):
    schedule = S.official_unipc(40, shift)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=1.0, solver_order=2,
                                    solver_type="bh2", predict_x0=True, lower_order_final=True,
                                    final_sigmas_type="zero")
    sched.set_timesteps(sigmas=official_float64_sigmas(float(np.float32(0.999)), 40, shift, False))
    assert torch.equal(sched.timesteps, schedule.timesteps)
    model = ToyVelocity()
    ours, ref = run_ours(sample_unipc, schedule, model), run_diffusers(sched, model)
    assert (ours - ref).abs().max().item() < 1e-5


def test_unipc_starts_at_the_first_sigma_when_the_grid_repeats_its_first_timestep():
    """Shift 16 from 68 steps (12 from 92, 8 from 144): the truncated grid starts 999, 999.

    The official scheduler (and diffusers', same code) finds its first step by looking the
    timestep up and takes the second match, so it solves from σ1 while the model was called for
    σ0, and its last step then has order 0 and fails its own assertion: there is no official
    result to match. We keep the grid's meaning and run every step from σ0, which is that
    scheduler with its start pinned to index 0 (``set_begin_index(0)``).
    """
    steps, shift = 68, 16.0
    schedule = S.official_unipc(steps, shift)
    assert schedule.timesteps[:2].tolist() == [999, 999]
    sigmas = official_float64_sigmas(float(np.float32(0.999)), steps, shift, False)

    def reference(begin_index):
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=1.0)
        sched.set_timesteps(sigmas=sigmas)
        if begin_index is not None:
            sched.set_begin_index(begin_index)
        return run_diffusers(sched, model)

    model = ToyVelocity(seed=6)
    with pytest.raises(AssertionError):
        reference(begin_index=None)              # the official lookup cannot finish this grid
    ours = run_ours(sample_unipc, schedule, model)
    assert (ours - reference(begin_index=0)).abs().max().item() < 1e-5


@pytest.mark.parametrize("shift", [12.0, 5.0])
def test_dpmpp_2m_matches_diffusers_over_40_steps(shift):
    schedule = S.official_dpmpp(40, shift)
    sched = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=1.0, solver_order=2,
                                        algorithm_type="dpmsolver++", solver_type="midpoint",
                                        lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(40)
    # DPMSolverMultistepScheduler takes no sigma list: install the official grid directly.
    sched.sigmas = schedule.sigmas.clone()
    sched.timesteps = schedule.timesteps.clone()
    model = ToyVelocity(seed=1)
    ours, ref = run_ours(sample_dpmpp_2m, schedule, model), run_diffusers(sched, model)
    assert (ours - ref).abs().max().item() < 1e-5


def test_unipc_on_a_short_comfy_schedule_matches_diffusers():
    schedule = S.comfy_simple(8, 8.0)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=1.0)
    sched.set_timesteps(sigmas=schedule.sigmas[:-1].double().numpy())
    sched.timesteps = schedule.timesteps.clone()      # ComfyUI keeps float timesteps
    model = ToyVelocity(seed=2)
    ours, ref = run_ours(sample_unipc, schedule, model), run_diffusers(sched, model)
    assert (ours - ref).abs().max().item() < 1e-5


def test_euler_matches_diffusers_flow_match_euler():
    schedule = S.comfy_simple(20, 5.0)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(sigmas=schedule.sigmas[:-1].numpy())
    model = ToyVelocity(seed=3)
    ours, ref = run_ours(sample_euler, schedule, model), run_diffusers(sched, model)
    assert (ours - ref).abs().max().item() < 1e-5


def test_final_step_returns_the_last_x0_exactly():
    for solver in (sample_unipc, sample_dpmpp_2m, sample_distilled):
        seen = []
        schedule = S.official_unipc(6, 5.0)
        model = ToyVelocity(seed=4)

        def denoise(x, i):
            return x - schedule.sigmas[i] * model(x, schedule.timesteps[i])

        out = solver(denoise, start_noise(), schedule.sigmas, lambda i, x, x0: seen.append(x0))
        assert len(seen) == 6
        assert torch.equal(out, seen[-1]), solver.__name__


def test_distilled_deterministic_equals_euler_and_fresh_noise_is_seeded():
    schedule = S.distilled()
    model = ToyVelocity(seed=5)
    det = run_ours(sample_distilled, schedule, model)
    euler = run_ours(sample_euler, schedule, model)
    assert torch.allclose(det, euler, atol=1e-6)

    def run_fresh(seed):
        def denoise(x, i):
            return x - schedule.sigmas[i] * model(x, schedule.timesteps[i])
        return sample_distilled(denoise, start_noise(), schedule.sigmas,
                                generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run_fresh(1), run_fresh(1))
    assert not torch.allclose(run_fresh(1), run_fresh(2))


def test_solvers_converge_on_a_known_ode():
    """x0 is a constant target: every solver must land on it (sanity beyond parity)."""
    target = torch.full((1, 4, 2, 4, 4), 0.25)
    for name in ("euler", "unipc", "dpm++", "distilled"):
        out = get_solver(name)(lambda x, i: target, start_noise(), S.official_unipc(10, 5.0).sigmas)
        assert torch.allclose(out, target, atol=1e-6), name
    with pytest.raises(ValueError, match="unknown solver"):
        get_solver("heun")
