"""Image-to-video node: the right conditioning per model, equal to the samplers/ builders, and sampling runs."""
import pytest
import torch

from wanflow.model_loaders.detect import WanVariant, official_defaults
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.handles import ClipVisionHandle, ModelHandle
from wanflow.nodes.image_to_video import WanFlowImageToVideo, fit_image
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.samplers.conditioning import WanConditioning, encode_first_frame, encode_i2v_condition
from wanflow.wan.clip_vision import CLIPVisionConfig, CLIPVisionTower, preprocess
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.latent_stats import WAN21, WAN22
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

TINY_CLIP = CLIPVisionConfig(image_size=28, patch_size=14, dim=40, num_layers=2, num_heads=2, embed_dim=8)


def handle(preset, family, task):
    torch.manual_seed(0)
    config = TINY_PRESETS[preset]
    return ModelHandle(WanDiT(config).eval(), WanVariant(family, task, "tiny", None, config,
                                                         official_defaults(family, task, "14B")))


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    return WanVAE21(TINY_WAN21_VAE).eval(), WanVAE22(TINY_WAN22_VAE).eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ClipVisionHandle(CLIPVisionTower(TINY_CLIP).eval())


def text():
    return WanConditioning(context=torch.randn(1, 4, 32), negative_context=torch.zeros(1, 4, 32))


def image(h=16, w=16, seed=1):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def build(model, vae, start, width=16, height=16, length=5, **optional):
    return WanFlowImageToVideo().build(model, text(), vae, start, width, height, length, **optional)["result"]


def test_wan22_i2v_builds_y_only(vaes):
    vae21, _ = vaes
    model = handle("i2v-2.2", "2.2", "i2v")
    start = image()
    cond, latent = build(model, vae21, start)
    expected = encode_i2v_condition(lambda px: WAN21.normalize(vae21.encode(px)), start.permute(0, 3, 1, 2) * 2 - 1, 5)
    torch.testing.assert_close(cond.y, expected)
    assert cond.y.shape == (1, 20, 2, 2, 2) and cond.clip_fea is None
    assert latent["samples"].shape == (1, 16, 2, 2, 2)
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 5.0, "euler", "simple", 3.5, 3.5, 0.0, 1.0)["result"]
    assert out["samples"].shape == (1, 16, 2, 2, 2) and torch.isfinite(out["samples"]).all()


@pytest.mark.parametrize("with_start, with_end", [(True, True), (False, True)])
def test_wan22_i2v_takes_an_end_image_with_or_without_a_start(vaes, with_start, with_end):
    """Wan 2.2 I2V-A14B and Wan2.2-Fun-A14B-InP (no CLIP): first-last-frame, or the end image alone,
    masked and encoded as ComfyUI's WanFirstLastFrameToVideo does (tests/comfyui_scripts/flf_check.py)."""
    vae21, _ = vaes
    model = handle("i2v-2.2", "2.2", "i2v")
    start, end = image(seed=1), image(seed=2)
    cond, latent = WanFlowImageToVideo().build(model, text(), vae21, start if with_start else None, 16, 16, 9,
                                               end_image=end)["result"]
    px = lambda img: img.permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    expected = encode_i2v_condition(lambda p: WAN21.normalize(vae21.encode(p)), px(start) if with_start else None, 9,
                                    px(end))
    torch.testing.assert_close(cond.y, expected)
    mask = cond.y[0, :4, :, 0, 0]  # [4 channels, 3 latent frames]: which pixel frames are known
    assert mask[:, 0].tolist() == ([1.0] * 4 if with_start else [0.0] * 4)
    assert mask[:, 1].sum() == 0 and mask[:, 2].tolist() == [0.0, 0.0, 0.0, 1.0]
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 5.0, "euler", "simple", 3.5, 3.5, 0.0, 1.0)["result"]
    assert torch.isfinite(out["samples"]).all()


def test_an_end_image_alone_needs_a_clip_free_model(vaes, clip):
    vae21, _ = vaes
    with pytest.raises(ValueError, match="connect a start_image"):
        WanFlowImageToVideo().build(handle("i2v-2.2", "2.2", "i2v"), text(), vae21, None, 16, 16, 5)
    with pytest.raises(ValueError, match="needs a start_image"):
        WanFlowImageToVideo().build(handle("i2v", "2.1", "i2v"), text(), vae21, None, 16, 16, 5,
                                    end_image=image(), clip_vision=clip)
    with pytest.raises(ValueError, match="first-last-frame model and needs a start_image"):
        WanFlowImageToVideo().build(handle("flf2v", "2.1", "flf2v"), text(), vae21, None, 16, 16, 5,
                                    end_image=image(), clip_vision=clip)
    with pytest.raises(ValueError, match="start image only"):
        WanFlowImageToVideo().build(handle("ti2v", "2.2", "ti2v"), text(), vaes[1], None, 32, 32, 5,
                                    end_image=image(32, 32))


def test_wan21_i2v_and_flf2v_add_clip_features(vaes, clip):
    vae21, _ = vaes
    start, end = image(seed=1), image(seed=2)
    cond, _ = build(handle("i2v", "2.1", "i2v"), vae21, start, clip_vision=clip)
    px = start.permute(0, 3, 1, 2) * 2 - 1
    torch.testing.assert_close(cond.clip_fea, clip.tower(preprocess(px, size=28)))
    assert cond.clip_fea.shape == (1, 5, 40)
    flf = handle("flf2v", "2.1", "flf2v")
    cond, latent = build(flf, vae21, start, end_image=end, clip_vision=clip)
    assert cond.clip_fea.shape == (1, 10, 40)
    assert cond.y[0, :4, -1].sum() > 0  # the last latent frame is marked known
    (out,) = WanFlowMoESampler().sample(flf, cond, latent, 0, 2, 16.0, "euler", "simple", 5.0, 5.0, 0.0, 1.0)["result"]
    assert torch.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match="needs CLIP vision features"):
        build(handle("i2v", "2.1", "i2v"), vae21, start)
    with pytest.raises(ValueError, match="first-last-frame model and needs an end_image"):
        build(flf, vae21, start, clip_vision=clip)


def test_ti2v_first_frame(vaes):
    _, vae22 = vaes
    model = handle("ti2v", "2.2", "ti2v")
    start = image(32, 32)
    cond, latent = build(model, vae22, start, 32, 32, 5)
    expected = encode_first_frame(lambda px: WAN22.normalize(vae22.encode(px)), start.permute(0, 3, 1, 2) * 2 - 1)
    torch.testing.assert_close(cond.first_frame, expected)
    assert cond.y is None and latent["samples"].shape == (1, 48, 2, 2, 2)
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 5.0, "unipc", "unipc", 5.0, 5.0, 0.0, 1.0)["result"]
    torch.testing.assert_close(WAN22.normalize(out["samples"])[:, :, :1], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_start, with_end", [(True, False), (True, True), (False, True)])
def test_fun_5b_inp_takes_start_end_or_both_through_the_wan22_vae(vaes, with_start, with_end):
    """Wan2.2-Fun-5B-InP: 100 input channels = 48 noise + 4 mask + 48 latent channels of the Wan 2.2 VAE."""
    vae21, vae22 = vaes
    model = handle("fun-5b-inp", "2.2", "i2v")
    start, end = image(32, 32, seed=1), image(32, 32, seed=2)
    cond, latent = WanFlowImageToVideo().build(model, text(), vae22, start if with_start else None, 32, 32, 9,
                                               end_image=end if with_end else None)["result"]
    px = lambda img: img.permute(0, 3, 1, 2) * 2 - 1  # noqa: E731
    expected = encode_i2v_condition(lambda p: WAN22.normalize(vae22.encode(p)), px(start) if with_start else None,
                                    9, px(end) if with_end else None)
    torch.testing.assert_close(cond.y, expected)
    assert cond.y.shape == (1, 52, 3, 2, 2) and cond.first_frame is None and cond.clip_fea is None
    assert latent["samples"].shape == (1, 48, 3, 2, 2)
    known = cond.y[0, :4, :, 0, 0].amax(dim=0).tolist()
    assert known == [float(with_start), 0.0, float(with_end)]
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 6.0, "unipc", "simple", 6.0, 6.0, 0.0, 1.0)["result"]
    assert out["samples"].shape == (1, 48, 3, 2, 2) and torch.isfinite(out["samples"]).all()
    with pytest.raises(ValueError, match="needs 48 .*Fun-InP: Wan 2.2 VAE"):
        build(model, vae21, image(32, 32), 32, 32)


def test_several_start_and_end_frames_continue_a_clip(vaes):
    """An IMAGE batch is frames, as in core: 6 start frames and 2 end frames are all kept and marked known."""
    vae21, _ = vaes
    model = handle("i2v-2.2", "2.2", "i2v")
    starts = torch.rand(6, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    ends = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    cond, _ = WanFlowImageToVideo().build(model, text(), vae21, starts, 16, 16, 13, end_image=ends)["result"]
    clip = lambda frames: (frames.permute(3, 0, 1, 2) * 2 - 1).unsqueeze(0)  # noqa: E731
    expected = encode_i2v_condition(lambda p: WAN21.normalize(vae21.encode(p)), clip(starts), 13, clip(ends))
    torch.testing.assert_close(cond.y, expected)
    assert cond.y[0, :4, :, 0, 0].T.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 1, 1]]
    # more start frames than the video holds: the first `length` are used, as core does
    cond, _ = WanFlowImageToVideo().build(model, text(), vae21, torch.rand(8, 16, 16, 3), 16, 16, 5)["result"]
    assert cond.y[0, :4, :, 0, 0].sum() == 8


def test_ti2v_keeps_several_start_frames_clean(vaes):
    """TI2V-5B with 5 start frames: two clean latent frames (t = 0 on their tokens), as core's
    Wan22ImageToVideoLatent encodes start_image[:length]."""
    _, vae22 = vaes
    model = handle("ti2v", "2.2", "ti2v")
    starts = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    cond, latent = build(model, vae22, starts, 32, 32, 9)
    assert cond.first_frame.shape == (1, 48, 2, 2, 2)
    assert cond.model_timestep(torch.tensor(500.0), latent["samples"]).reshape(3, -1)[:, 0].tolist() == [0, 0, 500]
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 5.0, "unipc", "unipc", 5.0, 5.0, 0.0, 1.0)["result"]
    torch.testing.assert_close(WAN22.normalize(out["samples"])[:, :, :2], cond.first_frame, atol=1e-4, rtol=1e-4)


def test_clear_errors(vaes):
    vae21, vae22 = vaes
    with pytest.raises(ValueError, match="takes no image"):
        build(handle("t2v", "2.2", "t2v"), vae21, image())
    with pytest.raises(ValueError, match="needs 48"):
        build(handle("ti2v", "2.2", "ti2v"), vae21, image(32, 32), 32, 32)


def test_sizes_are_rounded_like_the_empty_latent_and_the_node_says_so(vaes):
    """One rule for every size widget (nodes/sizes.py): round, and show it on the node."""
    vae21, vae22 = vaes
    out = WanFlowImageToVideo().build(handle("i2v-2.2", "2.2", "i2v"), text(), vae21, image(), 24, 16, 6)
    cond, latent = out["result"]
    assert latent["samples"].shape[2:] == (2, 2, 4) and cond.y.shape[2:] == (2, 2, 4)
    assert out["ui"]["text"] == ["32x16, 5 frames (24x16 rounded: the model needs multiples of 16; "
                                 "6 frames rounded down to 5: the model needs 4n+1)"]
    out = WanFlowImageToVideo().build(handle("ti2v", "2.2", "ti2v"), text(), vae22, image(), 16, 16, 5)
    assert out["result"][1]["samples"].shape[3:] == (2, 2)
    assert out["ui"]["text"] == ["32x32, 5 frames (16x16 rounded: the model needs multiples of 32)"]


def test_fit_image_covers_and_crops():
    wide = torch.zeros(1, 10, 40, 3)
    wide[:, :, 18:22] = 1.0  # a bright centre band, dark elsewhere
    fitted = fit_image(wide, 16, 16)
    assert fitted.shape == (1, 3, 16, 16) and fitted.max() > 0.9 and fitted.min() < -0.9
    same = image(16, 32)
    torch.testing.assert_close(fit_image(same, 32, 16), same.permute(0, 3, 1, 2) * 2 - 1)
