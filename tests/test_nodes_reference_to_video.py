"""Reference-to-video (VACE) node: equals the samplers/ builder, samples on a tiny VACE DiT, trims references."""
import pytest
import torch

from wanflow.model_loaders.detect import WanVariant, official_defaults
from wanflow.nodes.handles import ModelHandle
from wanflow.nodes.reference_to_video import WanFlowReferenceToVideo
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.vace_conditioning import build_vace_context
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.latent_stats import WAN21
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

VACE = WanDiTConfig(dim=48, ffn_dim=64, num_heads=4, num_layers=3, text_dim=32, model_type="vace",
                    vace_layers=(0, 2), vace_in_dim=96)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return WanVAE21(TINY_WAN21_VAE).eval()


def text():
    torch.manual_seed(3)
    return WanConditioning(context=torch.randn(1, 4, 32), negative_context=torch.zeros(1, 4, 32))


def refs():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(1, 24, 16, 3, generator=gen), torch.rand(2, 16, 16, 3, generator=gen)


def test_matches_builder_and_samples_with_trim(vae):
    first, more = refs()
    cond, latent = WanFlowReferenceToVideo().build(text(), vae, first, 16, 16, 5, 0.7, reference_2=more)["result"]
    encode = lambda px: WAN21.normalize(vae.encode(px))  # noqa: E731
    expected, trim = build_vace_context(encode, num_frames=5, height=16, width=16,
                                        references=[first.permute(0, 3, 1, 2) * 2 - 1] +
                                                   [f.permute(2, 0, 1)[None] * 2 - 1 for f in more])
    assert trim == 3 and cond.vace_trim_frames == 3 and cond.vace_strength == 0.7
    torch.testing.assert_close(cond.vace_context, expected)
    assert cond.vace_context.shape == (1, 96, 5, 2, 2) and latent["samples"].shape == (1, 16, 5, 2, 2)
    torch.manual_seed(0)
    model = ModelHandle(WanDiT(VACE).eval(), WanVariant("2.1", "vace", "tiny", None, VACE,
                                                        official_defaults("2.1", "vace", "14B")))
    (out,) = WanFlowMoESampler().sample(model, cond, latent, 0, 2, 16.0, "unipc", "unipc", 5.0, 5.0, 0.0, 1.0)["result"]
    assert out["samples"].shape == (1, 16, 2, 2, 2)  # reference frames trimmed before decode


def test_control_video_and_mask(vae):
    first, _ = refs()
    video = torch.rand(5, 16, 16, 3)
    mask = torch.zeros(5, 16, 16)
    mask[:, :, 8:] = 1
    cond, _ = WanFlowReferenceToVideo().build(text(), vae, first, 16, 16, 5, 1.0, control_video=video,
                                              control_mask=mask)["result"]
    assert cond.vace_context.shape == (1, 96, 3, 2, 2)
    assert cond.vace_context[0, 32:, 1:].sum() > 0 and cond.vace_context[0, 32:, 0].sum() == 0


def test_clear_errors(vae):
    first, more = refs()
    with pytest.raises(ValueError, match="control_video is 4 frames of 16x16; expected 5 frames of 16x16"):
        WanFlowReferenceToVideo().build(text(), vae, first, 16, 16, 5, 1.0, control_video=torch.rand(4, 16, 16, 3))["result"]
    with pytest.raises(ValueError, match="at most 4"):
        WanFlowReferenceToVideo().build(text(), vae, first, 16, 16, 5, 1.0, reference_2=more, reference_3=more)["result"]
    out = WanFlowReferenceToVideo().build(text(), vae, first, 24, 16, 7, 1.0)
    assert out["ui"]["text"] == ["32x16, 5 frames (24x16 rounded: the model needs multiples of 16; "
                                 "7 frames rounded down to 5: the model needs 4n+1)"]
    with pytest.raises(ValueError, match="Wan 2.1 VAE"):
        WanFlowReferenceToVideo().build(text(), WanVAE22(TINY_WAN22_VAE), first, 32, 32, 5, 1.0)["result"]
