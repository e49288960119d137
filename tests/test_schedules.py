"""Schedule values against the references (official Wan, diffusers, ComfyUI, LightX2V)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from wanflow.samplers import schedules as S


def official_shifted_sigmas(start: float, steps: int, shift: float, take_first: bool) -> np.ndarray:
    """The official grids written out independently: float64 linspace, then the shift."""
    grid = np.linspace(start, 0, steps + 1)
    grid = grid[:steps] if take_first else grid[:-1]
    return shift * grid / (1 + (shift - 1) * grid)


def test_official_unipc_t2v_first_timesteps():
    s = S.official_unipc(40, 12.0)
    expected = [999, 997, 995, 993, 990, 988, 985, 982, 979, 976, 972, 969, 965, 961, 956, 952,
                947, 941, 936, 929, 922, 915, 907, 898, 888, 877, 865, 852, 837, 819]
    assert s.timesteps.dtype == torch.int64
    assert s.timesteps[:30].tolist() == expected
    assert s.sigmas.dtype == torch.float32 and len(s.sigmas) == 41 and s.sigmas[-1] == 0
    assert abs(float(s.sigmas[0]) - 0.99992) < 1e-5


def test_official_unipc_start_and_tail():
    assert abs(float(S.official_unipc(40, 5.0).sigmas[0]) - 0.99980) < 1e-5
    assert S.official_unipc(50, 5.0).timesteps[-5:].tolist() == [356, 302, 241, 172, 92]


def test_official_unipc_equals_independent_formula():
    for steps, shift in [(40, 12.0), (40, 5.0), (8, 8.0), (50, 3.0)]:
        sigma_max = float(np.float32(0.999))
        ref = official_shifted_sigmas(sigma_max, steps, shift, take_first=False)
        s = S.official_unipc(steps, shift)
        assert s.timesteps.tolist() == (ref * 1000).astype(np.int64).tolist()
        assert torch.equal(s.sigmas, torch.from_numpy(np.append(ref, 0).astype(np.float32)))


def test_official_dpmpp_starts_at_exactly_one():
    s = S.official_dpmpp(40, 12.0)
    assert float(s.sigmas[0]) == 1.0 and int(s.timesteps[0]) == 1000
    ref = official_shifted_sigmas(1.0, 40, 12.0, take_first=True)
    assert s.timesteps.tolist() == (ref * 1000).astype(np.int64).tolist()
    assert float(s.sigmas[-1]) == 0.0


def test_exact_parity_recipe_reproduces_official_grid_in_diffusers():
    ours = S.official_unipc(40, 12.0)
    ref = official_shifted_sigmas(float(np.float32(0.999)), 40, 12.0, take_first=False)
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=1.0)
    sched.set_timesteps(sigmas=ref)
    assert torch.equal(sched.timesteps, ours.timesteps)
    assert torch.equal(sched.sigmas, ours.sigmas)


COMFY_TABLE = {
    (8, 20): [1.0, .9935, .9863, .9784, .9697, .96, .9492, .9369, .9231, .9072, .8889, .8675,
              .8421, .8116, .7742, .7273, .6667, .5854, .4706, .2963, 0],
    (5, 20): [1.0, .9896, .9783, .9659, .9524, .9375, .9211, .9028, .8824, .8594, .8333, .8036,
              .7692, .7292, .6818, .625, .5556, .4688, .3571, .2083, 0],
    (3, 20): [1.0, .9828, .9643, .9444, .9231, .9, .875, .8478, .8182, .7857, .75, .7105, .6667,
              .6176, .5625, .5, .4286, .3462, .25, .1364, 0],
    (8, 4): [1.0, .96, .8889, .7273, 0],
    (5, 4): [1.0, .9375, .8333, .625, 0],
}


@pytest.mark.parametrize("shift,steps", sorted(COMFY_TABLE))
def test_comfy_simple_matches_comfyui_table(shift, steps):
    s = S.comfy_simple(steps, float(shift))
    assert np.allclose(s.sigmas.numpy(), COMFY_TABLE[(shift, steps)], atol=6e-5)
    assert s.timesteps.dtype == torch.float32
    assert torch.equal(s.timesteps, s.sigmas[:-1] * 1000)


def test_comfy_sigma_table_ends():
    table = S.comfy_sigma_table(8.0)
    assert len(table) == 1000 and float(table[-1]) == 1.0
    assert abs(float(table[0]) - 0.00794) < 1e-5


def test_distilled_schedule_is_lightx2v_step_list_at_shift_5():
    s = S.distilled()
    assert np.allclose(s.sigmas.numpy(), [1.0, 0.9375, 0.833333, 0.625, 0.0], atol=1e-6)
    assert np.allclose(s.timesteps.numpy(), [1000.0, 937.5, 833.3333, 625.0], atol=1e-3)
    # Same sigmas as the ComfyUI turbo template (simple, shift 5, 4 steps).
    assert torch.allclose(s.sigmas, S.comfy_simple(4, 5.0).sigmas, atol=1e-6)


def test_build_distilled_uses_the_distillation_shift_and_even_step_lists():
    assert torch.equal(S.build_schedule("distilled", 4, 12.0).sigmas, S.distilled().sigmas)
    assert S.distill_step_list(4) == (1000, 750, 500, 250)
    assert S.distill_step_list(8)[:3] == (1000, 875, 750)
    assert S.build_schedule("distilled", 8, 5.0).steps == 8
    with pytest.raises(ValueError, match="denoise"):
        S.build_schedule("distilled", 4, 5.0, denoise=0.5)


def test_user_sigma_list():
    s = S.from_sigmas([1.0, 0.75, 0.5, 0.0])
    assert s.steps == 3 and s.timesteps.tolist() == [1000.0, 750.0, 500.0]
    t = S.from_sigmas(torch.tensor([0.9995, 0.5, 0.0]), integer_timesteps=True)
    assert t.timesteps.tolist() == [999, 500]
    with pytest.raises(ValueError, match="must not increase"):
        S.from_sigmas([0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.from_sigmas([14.6, 1.0, 0.0])


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    partial = S.build_schedule("simple", 10, 8.0, denoise=0.5)
    full = S.comfy_simple(20, 8.0)
    assert partial.steps == 10
    assert torch.equal(partial.sigmas, full.sigmas[-11:])
    assert torch.equal(partial.timesteps, full.timesteps[-10:])
    with pytest.raises(ValueError, match="denoise"):
        S.build_schedule("unipc", 10, 8.0, denoise=0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        S.build_schedule("karras", 10, 8.0)


SPLITS = [  # shift, steps, boundary, high steps (fact sheet §5.3)
    (12, 40, 0.875, 26), (5, 40, 0.900, 15), (12, 50, 0.875, 32), (5, 50, 0.900, 18),
    (8, 40, 0.875, 22), (12, 20, 0.875, 13), (8, 20, 0.875, 11), (8, 20, 0.900, 10),
    (5, 20, 0.900, 8), (8, 8, 0.875, 5), (5, 8, 0.900, 3), (8, 6, 0.875, 4), (8, 4, 0.875, 3),
    (5, 4, 0.900, 2),
]


@pytest.mark.parametrize("shift,steps,boundary,high", SPLITS)
def test_boundary_split_counts_for_every_schedule(shift, steps, boundary, high):
    for build in (S.official_unipc, S.official_dpmpp, S.comfy_simple):
        s = build(steps, float(shift))
        assert S.switch_step_for_boundary(s, boundary) == high, build.__name__
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    num_train_timesteps=1000, flow_shift=float(shift))
    sched.set_timesteps(steps)
    diffusers_high = int((sched.timesteps >= boundary * 1000).sum())
    assert diffusers_high == high


def test_official_defaults_split_26_14_and_15_25():
    t2v = S.official_unipc(40, 12.0)
    i2v = S.official_unipc(40, 5.0)
    assert S.switch_step_for_boundary(t2v, 0.875) == 26 and t2v.steps - 26 == 14
    assert S.switch_step_for_boundary(i2v, 0.900) == 15 and i2v.steps - 15 == 25


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="steps"):
        S.official_unipc(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        S.comfy_simple(10, 0.0)
    with pytest.raises(ValueError, match="boundary"):
        S.switch_step_for_boundary(S.comfy_simple(4, 5.0), 1.5)
