"""Phantom subject-to-video: subject latents (order, fit, shapes), the three-pass guidance formula,
the node, and one sampler step on a tiny Wan 2.1 T2V DiT with the subject frames cut off."""
import pytest
import torch

from wanflow.model_loaders.detect import WanVariant, official_defaults
from wanflow.nodes.handles import ModelHandle
from wanflow.nodes.model_checks import check_sampler_models, conditioning_kind
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.nodes.subject_to_video import WanFlowSubjectToVideo
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.guidance import subject_guided_velocity
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.schedules import build_schedule
from wanflow.samplers.subject_conditioning import crop_to_cover, encode_subjects, fit_subject, with_subjects
from wanflow.samplers.vace_conditioning import fit_reference
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.latent_stats import WAN21
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

T2V = WanDiTConfig(dim=48, ffn_dim=64, num_heads=4, num_layers=2, text_dim=32, model_type="t2v")


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE21(TINY_WAN21_VAE).eval()


def encoder(vae):
    return lambda pixels: WAN21.normalize(vae.encode(pixels))


def text() -> WanConditioning:
    gen = torch.Generator().manual_seed(3)
    return WanConditioning(context=torch.randn(1, 4, 32, generator=gen),
                           negative_context=torch.randn(1, 6, 32, generator=gen))


class FrameMixer(torch.nn.Module):
    """A model whose video output depends on every input frame (the subject frames included) and
    on the context, so a wrong pass, order or trim changes the result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, context, **extras):
        self.calls.append((x.clone(), context.clone()))
        weight = context.sum(dim=(1, 2)).reshape(-1, 1, 1, 1, 1) / 100  # zero padding leaves it alone
        return x * weight + x.mean(dim=2, keepdim=True) + t.reshape(-1, 1, 1, 1, 1) / 1000


def subject_inputs():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 3, 2, 2, generator=gen)
    subjects = torch.randn(1, 4, 2, 2, 2, generator=gen)
    return x, torch.tensor([700.0]), subjects


@pytest.mark.parametrize("batched", [True, False])
def test_three_pass_formula_and_pass_inputs(batched):
    x, t, subjects = subject_inputs()
    cond = text()
    model = FrameMixer()
    out = subject_guided_velocity(model, x, t, cond.context, cond.negative_context, subjects, 7.5, 5.0,
                                  batched=batched)
    plain = FrameMixer()
    both = plain(torch.cat([x, subjects], 2), t, cond.context)[:, :, :3]
    pictures = plain(torch.cat([x, subjects], 2), t, cond.negative_context)[:, :, :3]
    neither = plain(torch.cat([x, torch.zeros_like(subjects)], 2), t, cond.negative_context)[:, :, :3]
    expected = neither + 5.0 * (pictures - neither) + 7.5 * (both - pictures)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if not batched:  # text + pictures, pictures only, neither: subject frames after the video frames
        (x0, c0), (x1, c1), (x2, c2) = model.calls
        assert torch.equal(x0[:, :, :3], x) and torch.equal(x0[:, :, 3:], subjects) and torch.equal(x1, x0)
        assert torch.equal(x2[:, :, 3:], torch.zeros_like(subjects)) and torch.equal(x2[:, :, :3], x)
        assert torch.equal(c0, cond.context) and torch.equal(c1, cond.negative_context) and torch.equal(c2, c1)
    else:
        assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 3


def test_scales_of_one_skip_passes_like_comfyui():
    x, t, subjects = subject_inputs()
    cond = text()
    model = FrameMixer()
    out = subject_guided_velocity(model, x, t, cond.context, cond.negative_context, subjects, 7.5, 1.0,
                                  batched=False)
    both, pictures = (model(torch.cat([x, subjects], 2), t, c)[:, :, :3] for c in (cond.context, cond.negative_context))
    torch.testing.assert_close(out, pictures + 7.5 * (both - pictures))
    assert len(model.calls) == 4  # two passes in the guidance (no "neither"), two above
    model = FrameMixer()
    out = subject_guided_velocity(model, x, t, cond.context, cond.negative_context, subjects, 1.0, 1.0)
    assert len(model.calls) == 1 and torch.equal(out, both)


def test_subject_latents_one_frame_per_picture_in_order(vae):
    gen = torch.Generator().manual_seed(1)
    wide, square = torch.rand(1, 3, 16, 24, generator=gen) * 2 - 1, torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    encode = encoder(vae)
    for fit in ("pad", "crop"):
        latent = encode_subjects(encode, [wide, square], 16, 16, fit)
        assert latent.shape == (1, 16, 2, 2, 2)
        torch.testing.assert_close(latent[:, :, 0:1], encode(fit_subject(wide, 16, 16, fit).unsqueeze(2)))
        torch.testing.assert_close(latent[:, :, 1:2], encode(square.unsqueeze(2)))
    torch.testing.assert_close(fit_subject(wide, 16, 16, "pad"), fit_reference(wide, 16, 16))
    torch.testing.assert_close(crop_to_cover(wide, 16, 16), wide[..., 4:20])  # centre crop, no resize needed
    assert crop_to_cover(square, 8, 16).shape == (1, 3, 8, 16)
    with pytest.raises(ValueError, match="1 to 4 subject pictures, got 5"):
        encode_subjects(encode, [square] * 5, 16, 16)
    with pytest.raises(ValueError, match="fit must be one of"):
        fit_subject(square, 16, 16, "stretch")
    with pytest.raises(ValueError, match="does not fit the video latent"):
        with_subjects(torch.zeros(1, 16, 2, 2, 2), torch.zeros(1, 16, 1, 4, 4))


def test_node_builds_subjects_and_an_empty_video_latent(vae):
    gen = torch.Generator().manual_seed(2)
    first, more = torch.rand(1, 16, 24, 3, generator=gen), torch.rand(2, 16, 16, 3, generator=gen)
    out = WanFlowSubjectToVideo().build(text(), vae, first, 16, 16, 5, 4.0, "pad", subject_2=more)
    cond, latent = out["result"]
    pictures = [first.permute(0, 3, 1, 2) * 2 - 1] + [f.permute(2, 0, 1)[None] * 2 - 1 for f in more]
    torch.testing.assert_close(cond.subjects, encode_subjects(encoder(vae), pictures, 16, 16, "pad"))
    assert cond.subject_cfg == 4.0 and latent["samples"].shape == (1, 16, 2, 2, 2)
    assert not latent["samples"].any() and conditioning_kind(cond) == "subject"
    with pytest.raises(ValueError, match="at most 4"):
        WanFlowSubjectToVideo().build(text(), vae, first, 16, 16, 5, 5.0, "pad", subject_2=more, subject_3=more)
    with pytest.raises(ValueError, match="Wan 2.1 VAE"):
        WanFlowSubjectToVideo().build(text(), WanVAE22(TINY_WAN22_VAE), first, 32, 32, 5, 5.0, "pad")


def test_conditioning_and_model_checks_name_the_problem():
    x = torch.zeros(1, 16, 2, 2, 2)
    cond = WanConditioning(context=torch.zeros(1, 4, 32), subjects=torch.zeros(1, 16, 1, 4, 4))
    with pytest.raises(ValueError, match="subjects has channels/height/width"):
        cond.validate(x)
    cond = WanConditioning(context=torch.zeros(1, 4, 32), subjects=torch.zeros(1, 16, 1, 2, 2),
                           y=torch.zeros(1, 20, 2, 2, 2))
    with pytest.raises(ValueError, match="cannot be combined with y"):
        cond.validate(x)
    vace = WanDiTConfig(dim=48, ffn_dim=64, num_heads=4, num_layers=2, text_dim=32, model_type="vace",
                        vace_layers=(0,), vace_in_dim=96)
    variant = WanVariant("2.1", "vace", "tiny", None, vace, official_defaults("2.1", "vace", "14B"))
    with pytest.raises(ValueError, match="needs a Phantom-Wan model"):
        check_sampler_models({"model_high": variant}, "subject")


def test_one_sampler_step_is_the_guided_euler_step_with_subject_frames_cut(vae):
    torch.manual_seed(0)
    model = WanDiT(T2V).eval()
    gen = torch.Generator().manual_seed(4)
    cond = text()
    cond.subjects, cond.subject_cfg = torch.randn(1, 16, 2, 2, 2, generator=gen), 5.0
    noise = torch.randn(1, 16, 2, 2, 2, generator=gen)
    schedule = build_schedule("simple", 1, 5.0)
    out = MoESampler(model, batched_cfg=False).sample(noise, schedule, cond, solver="euler", cfg_high=7.5).latent
    sigma, t = schedule.sigmas[0], schedule.timesteps[0].reshape(1)
    with torch.no_grad():
        run = lambda video, subjects, context: model(torch.cat([video, subjects], 2), t, context)[:, :, :2]  # noqa: E731
        both = run(noise, cond.subjects, cond.context)
        pictures = run(noise, cond.subjects, cond.negative_context)
        neither = run(noise, torch.zeros_like(cond.subjects), cond.negative_context)
    velocity = neither + 5.0 * (pictures - neither) + 7.5 * (both - pictures)
    expected = noise + (schedule.sigmas[1] - sigma) * velocity
    assert out.shape == noise.shape  # no subject frame reaches the result
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_sampler_node_runs_the_subject_conditioning(vae):
    gen = torch.Generator().manual_seed(6)
    cond, latent = WanFlowSubjectToVideo().build(text(), vae, torch.rand(1, 16, 16, 3, generator=gen), 16, 16, 5,
                                                 5.0, "crop")["result"]
    torch.manual_seed(0)
    handle = ModelHandle(WanDiT(T2V).eval(), WanVariant("2.1", "t2v", "tiny", None, T2V,
                                                        official_defaults("2.1", "t2v", "1.3B")))
    run = lambda c: WanFlowMoESampler().sample(handle, c, latent, 0, 2, 5.0, "unipc", "unipc", 7.5, 7.5, 0.0,  # noqa: E731
                                               1.0)["result"][0]["samples"]
    with_pictures = run(cond)
    assert with_pictures.shape == latent["samples"].shape
    other = WanConditioning(**{**cond.__dict__, "subjects": torch.randn_like(cond.subjects)})
    assert (run(other) - with_pictures).abs().max() > 1e-4  # the pictures reach the model
