"""The I2V and R2V nodes build the same conditioning as diffusers' Wan pipelines.

Both sides get the same pre-sized images and the same VAE weights (our tiny VAE converted with
model_loaders/vae_keys.py into diffusers' AutoencoderKLWan). The pipelines' own preparation
methods are called on a minimal pipeline object that carries just the attributes they read.
"""
from types import SimpleNamespace

import pytest
import torch

from wanflow.model_loaders import clip_keys, vae_keys
from wanflow.model_loaders.detect import WanVariant, official_defaults
from wanflow.nodes.handles import ClipVisionHandle, ModelHandle
from wanflow.nodes.image_to_video import WanFlowImageToVideo
from wanflow.nodes.reference_to_video import WanFlowReferenceToVideo
from wanflow.samplers.conditioning import WanConditioning
from wanflow.wan.clip_vision import CLIPVisionConfig, CLIPVisionTower, preprocess
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline  # noqa: E402
from diffusers.pipelines.wan.pipeline_wan_vace import WanVACEPipeline  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)
TINY_CLIP = CLIPVisionConfig(image_size=28, patch_size=14, dim=40, num_layers=3, num_heads=2, embed_dim=8)


def twin_vaes(ours_cls, config, seed):
    torch.manual_seed(seed)
    ours = ours_cls(config).eval()
    theirs = diffusers.AutoencoderKLWan(**vae_keys.diffusers_config(config)).eval()
    theirs.load_state_dict(vae_keys.official_to_diffusers(ours.state_dict()))
    return ours, theirs  # diffusers_config carries the real latent statistics the pipelines normalise with


@pytest.fixture(scope="module")
def vae21():
    return twin_vaes(WanVAE21, TINY_WAN21_VAE, 0)


@pytest.fixture(scope="module")
def vae22():
    return twin_vaes(WanVAE22, TINY_WAN22_VAE, 1)


def handle(preset, family, task):
    config = TINY_PRESETS[preset]
    return ModelHandle(torch.nn.Identity(), WanVariant(family, task, "tiny", None, config,
                                                       official_defaults(family, task, "14B")))


def text():
    return WanConditioning(context=torch.zeros(1, 4, 32))


def image(h, w, seed):
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def as_pixels(img):
    return img.permute(0, 3, 1, 2) * 2 - 1


def i2v_pipeline(vae, spatial, expand_timesteps=False):
    return SimpleNamespace(vae=vae, vae_scale_factor_temporal=4, vae_scale_factor_spatial=spatial,
                           config=SimpleNamespace(expand_timesteps=expand_timesteps))


@pytest.mark.parametrize("preset, family, task, with_end", [
    ("i2v-2.2", "2.2", "i2v", False),   # Wan 2.2 I2V-A14B
    ("i2v-2.2", "2.2", "i2v", True),    # Wan 2.2 I2V-A14B / Wan2.2-Fun-A14B-InP, first-last-frame
    ("i2v", "2.1", "i2v", False),       # Wan 2.1 I2V (CLIP: see the next test)
    ("flf2v", "2.1", "flf2v", True),    # Wan 2.1 FLF2V
])
def test_i2v_condition_equals_wan_image_to_video_pipeline(vae21, preset, family, task, with_end):
    ours, theirs = vae21
    start, end = image(16, 32, 1), image(16, 32, 2)
    clip = ClipVisionHandle(CLIPVisionTower(TINY_CLIP).eval())
    cond, _ = WanFlowImageToVideo().build(handle(preset, family, task), text(), ours, start, 32, 16, 9,
                                          end_image=end if with_end else None, clip_vision=clip)["result"]
    _, condition = WanImageToVideoPipeline.prepare_latents(
        i2v_pipeline(theirs, 8), as_pixels(start), 1, 16, 16, 32, 9, torch.float32, torch.device("cpu"),
        None, torch.zeros(1, 16, 3, 2, 4), as_pixels(end) if with_end else None)
    torch.testing.assert_close(cond.y, condition, **TOL)


def test_ti2v_first_frame_equals_pipeline_expand_timesteps(vae22):
    ours, theirs = vae22
    start = image(32, 64, 3)
    cond, _ = WanFlowImageToVideo().build(handle("ti2v", "2.2", "ti2v"), text(), ours, start, 64, 32, 5)["result"]
    _, latent_condition, first_frame_mask = WanImageToVideoPipeline.prepare_latents(
        i2v_pipeline(theirs, 16, expand_timesteps=True), as_pixels(start), 1, 48, 32, 64, 5, torch.float32,
        torch.device("cpu"), None, torch.zeros(1, 48, 2, 2, 4), None)
    torch.testing.assert_close(cond.first_frame, latent_condition, **TOL)
    assert first_frame_mask[0, 0, 0].sum() == 0  # the frame the node pins is the one diffusers pins


def test_wan21_clip_features_are_the_penultimate_hidden_states():
    """diffusers' encode_image feeds the DiT hidden_states[-2] of a CLIPVisionModel."""
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=TINY_CLIP.dim, intermediate_size=TINY_CLIP.dim * TINY_CLIP.mlp_ratio,
        num_hidden_layers=TINY_CLIP.num_layers, num_attention_heads=TINY_CLIP.num_heads,
        image_size=TINY_CLIP.image_size, patch_size=TINY_CLIP.patch_size, projection_dim=TINY_CLIP.embed_dim,
        hidden_act="gelu", layer_norm_eps=TINY_CLIP.eps)
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModelWithProjection(hf_config).eval()
    tower = CLIPVisionTower(TINY_CLIP).eval()
    tower.load_state_dict(clip_keys.hf_to_official(hf.state_dict()))
    start = image(16, 32, 4)
    cond, _ = WanFlowImageToVideo().build(handle("i2v", "2.1", "i2v"), text(), WanVAE21(TINY_WAN21_VAE).eval(),
                                          start, 32, 16, 5, clip_vision=ClipVisionHandle(tower))["result"]
    with torch.no_grad():
        expected = hf(pixel_values=preprocess(as_pixels(start), size=28), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(cond.clip_fea, expected, **TOL)


def test_vace_reference_context_equals_wan_vace_pipeline(vae21):
    """Two references of other aspect ratios, letterboxed on white by diffusers' own preprocess_conditions.

    The official code puts the references first in the order given (``cat([*ref_latent, z])``);
    diffusers prepends them one at a time, i.e. in reverse, so it gets them in reverse order here.
    """
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    ours, theirs = vae21
    gen = torch.Generator().manual_seed(5)
    pictures = [torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8) for h, w in ((24, 16), (8, 40))]
    references = [(p.float() / 255.0)[None] for p in pictures]  # IMAGE, exactly what the PIL files hold
    cond, latent = WanFlowReferenceToVideo().build(text(), ours, references[0], 32, 16, 9, 1.0,
                                                   reference_2=references[1])["result"]
    pipe = SimpleNamespace(vae=theirs, vae_scale_factor_temporal=4, vae_scale_factor_spatial=8,
                           video_processor=VideoProcessor(vae_scale_factor=8),
                           transformer=SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2))))
    video, mask, canvases = WanVACEPipeline.preprocess_conditions(
        pipe, None, None, [[Image.fromarray(p.numpy()) for p in reversed(pictures)]], 1, 16, 32, 9, torch.float32,
        torch.device("cpu"))
    latents = WanVACEPipeline.prepare_video_latents(pipe, video, mask, canvases, None, torch.device("cpu"))
    masks = WanVACEPipeline.prepare_masks(pipe, mask, canvases, None)
    expected = torch.cat([latents, masks], dim=1)
    assert cond.vace_trim_frames == 2 and latent["samples"].shape == (1, 16, 2 + 3, 2, 4)
    torch.testing.assert_close(cond.vace_context, expected, **TOL)
