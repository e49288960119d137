"""Context windows: placement, blend weights, conditioning cut per window, drift control, and the
sampler and node running with them (tiny random DiTs; the nano semantic tests are in
tests/test_nano_long_video.py)."""
import pytest
import torch

from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.runner import node_specs
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.context_windows import (ContextWindows, frame_weights, latent_overlap, latent_window,
                                              match_channel_stats, window_starts, window_weights)
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.samplers.schedules import official_unipc
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS

from test_nodes_sampler import conditioning, experts  # noqa: F401,F811  (experts: a fixture)
from moe_testing import single_thread  # noqa: F401  (autouse: one thread for tiny tensors)

CASES = [(17, 5, 2), (17, 5, 0), (17, 5, 4), (21, 21, 5), (7, 5, 1), (30, 8, 3), (3, 5, 2), (100, 21, 8), (6, 5, 0)]


# --------------------------------------------------------------------------- placement and weights

@pytest.mark.parametrize("frames,length,overlap", CASES)
def test_windows_cover_every_frame_with_full_length_and_the_overlap(frames, length, overlap):
    starts = window_starts(frames, length, overlap)
    size = min(length, frames)
    assert starts[0] == 0 and starts[-1] + size == frames
    assert starts == sorted(set(starts))
    covered = set()
    for start in starts:
        covered |= set(range(start, start + size))
    assert covered == set(range(frames))
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap                   # neighbours share at least the overlap
        assert b - a <= size - overlap
    if frames > length:                                  # all but the last step by exactly the stride
        assert all(b - a == length - overlap for a, b in zip(starts[:-2], starts[1:-1]))


@pytest.mark.parametrize("blend", ["uniform", "pyramid"])
@pytest.mark.parametrize("frames,length,overlap", CASES)
def test_weights_sum_to_one_per_frame_and_vanish_outside_their_window(frames, length, overlap, blend):
    starts = window_starts(frames, length, overlap)
    weights = frame_weights(frames, starts, length, blend)
    assert weights.shape == (len(starts), frames)
    torch.testing.assert_close(weights.sum(0), torch.ones(frames))
    for k, start in enumerate(starts):
        inside = torch.zeros(frames, dtype=torch.bool)
        inside[start:start + min(length, frames)] = True
        assert bool((weights[k][~inside] == 0).all()) and bool((weights[k][inside] > 0).all())


def test_pyramid_rises_to_the_middle_and_uniform_is_flat():
    assert window_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert window_weights(4, "pyramid").tolist() == [1, 2, 2, 1]
    assert window_weights(3, "uniform").tolist() == [1, 1, 1]
    weights = frame_weights(8, [0, 3], 5, "pyramid")      # frame 3: edge of window 1, middle-ish of window 0
    assert weights[0, 3] > weights[1, 3] and weights[1, 4] > weights[0, 4]


def test_pixel_frames_become_latent_frames():
    assert latent_window(81) == 21 and latent_window(17) == 5 and latent_window(20) == 5
    assert latent_overlap(16) == 4 and latent_overlap(17) == 5 and latent_overlap(0) == 0
    windows = ContextWindows.from_pixel_frames(81, 16, "uniform", False)
    assert (windows.length, windows.overlap, windows.blend, windows.drift_control) == (21, 4, "uniform", False)


@pytest.mark.parametrize("window,overlap,message", [
    (3, 0, "at least 5"), (17, 17, r"context_overlap must be in \[0, context_window"),
    (6, 5, "leaves no new frame"), (17, -1, "context_overlap")])
def test_bad_pixel_settings_are_refused_naming_the_widget(window, overlap, message):
    with pytest.raises(ValueError, match=message):
        ContextWindows.from_pixel_frames(window, overlap, where="MoE sampler")


def test_bad_latent_settings_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        ContextWindows(5, 4)                              # 4 sliding frames next to the anchor
    ContextWindows(5, 4, anchor=False)
    with pytest.raises(ValueError, match="the anchor and one more"):
        ContextWindows(1, 0)
    with pytest.raises(ValueError, match="blend"):
        ContextWindows(5, 1, "triangle")
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 5, 7)


# --------------------------------------------------------------------------- the windowed model call

def frame_local(x, t, context, *, y=None, vace_context=None, vace_scale=1.0, **_):
    """A velocity that depends on each frame alone (and on per-frame / per-token t, y, VACE): cutting
    it into windows and blending must give back the whole-clip call."""
    batch, _, frames = x.shape[:3]
    out = torch.tanh(x) * 0.7 + context.mean() * 0.1
    if t.ndim == 2:
        out = out + t.view(batch, frames, -1).float().mean(-1).view(batch, 1, frames, 1, 1) / 1000
    if y is not None:
        out = out + y[:, :x.shape[1]]
    if vace_context is not None:
        out = out + vace_scale * vace_context[:, :x.shape[1]]
    return out


def test_a_clip_one_window_holds_runs_the_model_unchanged():
    calls = []
    windows = ContextWindows(5, 2)
    x = torch.randn(1, 4, 5, 2, 2)
    out = windows.model_for(lambda *a, **k: calls.append(a[0].shape) or a[0] * 2, 0.5)(x, torch.ones(1), torch.ones(1, 2, 3))
    assert calls == [x.shape] and torch.equal(out, x * 2)


@pytest.mark.parametrize("blend", ["uniform", "pyramid"])
@pytest.mark.parametrize("anchor", [True, False])
def test_windows_of_a_frame_local_model_give_the_whole_call(blend, anchor):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 13, 2, 2, generator=g)
    extras = dict(y=torch.randn(2, 6, 13, 2, 2, generator=g), vace_context=torch.randn(2, 5, 13, 2, 2, generator=g))
    t = torch.rand(2, 13 * 4, generator=g) * 1000         # per token, 4 tokens per frame
    context = torch.randn(2, 3, 8, generator=g)
    calls = []

    def model(x, t, context, **kw):
        calls.append(x.shape[2])
        return frame_local(x, t, context, **kw)

    windows = ContextWindows(5, 2, blend, drift_control=False, anchor=anchor)
    out = windows.model_for(model, 0.7)(x, t, context, **extras)
    torch.testing.assert_close(out, frame_local(x, t, context, **extras), atol=1e-5, rtol=1e-5)
    starts, _ = windows.plan(13)
    assert calls == [5] * len(starts)
    assert starts == ([0, 2, 4, 6, 8] if anchor else [0, 3, 6, 8])


def frames_seen(windows, frames, pinned=0):
    seen = []

    def model(x, t, context, **kw):
        seen.append(x[0, 0, :, 0, 0].long().tolist())
        return x.clone()

    x = torch.arange(float(frames)).view(1, 1, frames, 1, 1).expand(1, 2, frames, 1, 1).contiguous()
    out = windows.model_for(model, 0.5, pinned=pinned)(x, torch.ones(1), torch.ones(1, 1, 1))
    torch.testing.assert_close(out, x)
    return seen


def test_the_anchor_frame_leads_every_window():
    assert frames_seen(ContextWindows(3, 1, drift_control=False), 7) == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5],
                                                                         [0, 5, 6]]
    assert frames_seen(ContextWindows(3, 1, drift_control=False, anchor=False), 7) == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]


def test_pinned_reference_frames_are_in_every_window():
    windows = ContextWindows(3, 1, drift_control=False, anchor=False)
    assert frames_seen(windows, 9, pinned=2) == [[0, 1, 2, 3, 4], [0, 1, 4, 5, 6], [0, 1, 6, 7, 8]]
    anchored = ContextWindows(3, 1, drift_control=False)
    assert frames_seen(anchored, 8, pinned=2)[:2] == [[0, 1, 2, 3, 4], [0, 1, 2, 4, 5]]


def test_drift_control_pulls_later_windows_to_the_first_ones_colour():
    """A model whose later windows predict x0 with a growing per-channel offset and scale (the
    drift) of one still scene: drift control brings every window back to the first window's
    channel statistics, hence to the scene."""
    sigma = 0.6
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(1, 3, 1, 4, 4, generator=g).expand(1, 3, 17, 4, 4).contiguous()
    x = clean + 0.01 * torch.randn(1, 3, 17, 4, 4, generator=g)

    def drifting(windows):
        count = iter(range(100))

        def model(x_in, t, context, **kw):
            k = next(count)
            x0 = clean[:, :, :x_in.shape[2]] * (1 + 0.1 * k) + 0.8 * k
            return (x_in - x0) / sigma
        return windows.model_for(model, sigma)

    for drift, expect_close in ((False, False), (True, True)):
        windows = ContextWindows(5, 2, "uniform", drift)
        assert len(windows.plan(17)[0]) == 7
        v = drifting(windows)(x, torch.ones(1), torch.ones(1, 1, 1))
        x0 = x - sigma * v
        error = (x0 - clean).abs().max()
        assert (error < 1e-4) == expect_close, (drift, float(error))


def test_channel_stats_matching_moves_mean_and_scale():
    g = torch.Generator().manual_seed(2)
    theirs = torch.randn(2, 3, 4, 5, 5, generator=g)
    ours = theirs * 1.5 + 0.7
    matched = match_channel_stats(ours, ours, theirs)
    torch.testing.assert_close(matched, theirs, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the sampler and the node

def tiny_sample(windows, cache=None, frames=5):
    torch.manual_seed(1)
    dit = WanDiT(TINY_PRESETS["t2v"]).eval()
    g = torch.Generator().manual_seed(5)
    cond = WanConditioning(context=torch.randn(1, 8, 32, generator=g), negative_context=torch.randn(1, 8, 32, generator=g))
    noise = seeded_noise((1, 16, frames, 4, 4), 3)
    return MoESampler(dit).sample(noise, official_unipc(6, 5.0), cond, cfg_high=4.0, cache=cache,
                                  context_windows=windows).latent


def test_a_window_covering_the_clip_is_the_plain_sampler_bit_for_bit():
    plain = tiny_sample(None)
    assert torch.equal(tiny_sample(ContextWindows(5, 2)), plain)
    assert torch.equal(tiny_sample(ContextWindows(8, 3, "uniform", False)), plain)


def test_windows_run_in_the_sampler_with_the_step_cache():
    level = "balanced"
    out = tiny_sample(ContextWindows(3, 1, drift_control=True), cache=level, frames=7)
    assert out.shape == (1, 16, 7, 4, 4) and bool(torch.isfinite(out).all())
    assert not torch.equal(out, tiny_sample(None, cache=level, frames=7))


def test_the_node_runs_windows_and_says_so(experts):  # noqa: F811
    high, low = experts
    latent = {"samples": torch.zeros(1, 16, 7, 4, 4)}
    node = WanFlowMoESampler()
    args = dict(seed=7, steps=3, shift=12.0, solver="unipc", scheduler="unipc", cfg_high=4.0, cfg_low=3.0,
                boundary=0.0, denoise=1.0)
    windowed = node.sample(high, conditioning(), latent, model_low=low, context_window=9, context_overlap=4,
                           drift_control=True, **args)
    assert ("5 context windows of 3 latent frames (overlap 1, pyramid, drift control on, anchored to frame 0)"
            in windowed["ui"]["text"][0])
    plain = node.sample(high, conditioning(), latent, model_low=low, **args)
    assert not torch.equal(windowed["result"][0]["samples"], plain["result"][0]["samples"])
    with pytest.raises(ValueError, match="MoE sampler: context_overlap"):
        node.sample(high, conditioning(), latent, model_low=low, context_window=9, context_overlap=9, **args)


def test_workflows_saved_before_the_context_widgets_still_load():
    old = [42, "randomize", 40, 12.0, "unipc", "unipc", 4.0, 3.0, 0.0, 1.0, "off"]
    named = node_specs.map_widgets_values(WanFlowMoESampler, old, "old workflow")
    assert (named["context_window"], named["context_overlap"], named["context_blend"], named["drift_control"],
            named["context_anchor"]) == (0, 16, "pyramid", False, True)


class Recorded(torch.nn.Module):
    """A tiny random WanDiT whose inputs are kept (the model itself untouched)."""

    def __init__(self, preset: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.dit = WanDiT(TINY_PRESETS[preset]).eval()
        self.calls: list[dict] = []

    def forward(self, x, t, context, **extras):
        self.calls.append(dict(x=x, t=t, **extras))
        return self.dit(x, t, context, **extras)


def text_cond(**fields) -> WanConditioning:
    g = torch.Generator().manual_seed(5)
    return WanConditioning(context=torch.randn(1, 8, 32, generator=g), **fields)


def test_i2v_windows_all_see_the_start_image_through_the_anchor():
    model = Recorded("i2v-2.2")
    y = torch.cat([torch.zeros(1, 4, 7, 4, 4), torch.randn(1, 16, 7, 4, 4)], dim=1)
    y[:, :4, 0] = 1                                       # frame 0 known, as i2v_condition builds it
    out = MoESampler(model).sample(seeded_noise((1, 16, 7, 4, 4), 1), official_unipc(2, 5.0), text_cond(y=y),
                                   cfg_high=1.0, context_windows=ContextWindows(3, 1)).latent
    assert out.shape == (1, 16, 7, 4, 4) and bool(torch.isfinite(out).all())
    assert len(model.calls) == 2 * 5 and all(c["y"].shape[2] == 3 for c in model.calls)
    assert all(bool((c["y"][:, :4, 0] == 1).all()) and bool((c["y"][:, :4, 1:] == 0).all()) for c in model.calls)


def test_ti2v_windows_keep_the_clean_first_frame_and_per_token_timesteps():
    model = Recorded("ti2v")
    first = torch.randn(1, 48, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    cond = text_cond(first_frame=first)
    out = MoESampler(model).sample(seeded_noise((1, 48, 7, 4, 4), 1), official_unipc(2, 5.0), cond, cfg_high=1.0,
                                   context_windows=ContextWindows(3, 1)).latent
    assert torch.equal(out[:, :, :1], first)
    for call in model.calls:
        assert call["t"].shape == (1, 3 * 2 * 2)          # the window's tokens only
        assert bool((call["t"][:, :4] == 0).all()) and bool((call["t"][:, 4:] > 0).all())


def test_vace_windows_hold_the_reference_frames():
    model = Recorded("vace")
    vace = torch.randn(1, 24, 8, 4, 4, generator=torch.Generator().manual_seed(6))
    cond = text_cond(vace_context=vace, vace_trim_frames=1)
    out = MoESampler(model).sample(seeded_noise((1, 16, 8, 4, 4), 1), official_unipc(2, 5.0), cond, cfg_high=1.0,
                                   context_windows=ContextWindows(3, 1)).latent
    assert out.shape == (1, 16, 7, 4, 4)
    assert all(c["x"].shape[2] == 1 + 3 and c["vace_context"].shape[2] == 4 for c in model.calls)
    assert all(torch.equal(c["vace_context"][:, :, :2], vace[:, :, :2]) for c in model.calls)  # refs + anchor
