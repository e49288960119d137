"""Wan2.2-VACE-Fun-A14B against diffusers at its released layout.

Each expert is a Wan 2.2 T2V-A14B expert with VACE blocks: 40 main blocks, VACE hints added after
blocks 0, 5, ..., 35, 96 VACE input channels (diffusers' convert_wan_to_diffusers entry
"Wan2.2-VACE-Fun-14B", the config of alibaba-pai/Wan2.2-VACE-Fun-A14B). The tests keep that layout
and shrink only the widths: our WanDiT against ``WanVACETransformer3DModel`` (same random weights
through model_loaders/dit_keys.py, fp32), then the two experts through our MoE sampler against
``WanVACEPipeline`` with ``transformer_2`` and the T2V switch (reference-to-video, trimmed).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wanflow.model_loaders import dit_keys
from wanflow.samplers import schedules as S
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.samplers.vace_conditioning import build_vace_context
from wanflow.wan import latent_stats
from wanflow.wan.dit_config import PRESETS
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21

from dit_testing import diffusers_twin
from moe_testing import single_thread  # noqa: F401
from test_pipeline_parity import _pil_and_tensor, max_diff, parity_scheduler, prompt_pair, vae_pair

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
BATCH = 2
RELEASED = PRESETS["wan2.2-vace-fun-a14b"]
# the released block and VACE layout at tiny widths (head_dim 16)
TINY = dataclasses.replace(RELEASED, dim=48, ffn_dim=64, num_heads=3, text_dim=32)
# diffusers scripts/convert_wan_to_diffusers.py, model_type "Wan2.2-VACE-Fun-14B"
DIFFUSERS_RELEASE_CONFIG = {
    "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06,
    "ffn_dim": 13824, "freq_dim": 256, "in_channels": 16, "num_attention_heads": 40, "num_layers": 40,
    "out_channels": 16, "patch_size": (1, 2, 2), "qk_norm": "rms_norm_across_heads", "text_dim": 4096,
    "vace_layers": [0, 5, 10, 15, 20, 25, 30, 35], "vace_in_channels": 96,
}


@pytest.fixture(scope="module")
def experts():
    """High- and low-noise experts with different random weights, each with its diffusers twin."""
    return {"high": diffusers_twin(TINY, seed=31), "low": diffusers_twin(TINY, seed=32)}


def test_preset_is_the_released_diffusers_config():
    assert dit_keys.diffusers_class_name(RELEASED) == "WanVACETransformer3DModel"
    ours = dit_keys.diffusers_config(RELEASED)
    assert {key: ours[key] for key in DIFFUSERS_RELEASE_CONFIG} == DIFFUSERS_RELEASE_CONFIG
    assert (TINY.num_layers, TINY.vace_layers, TINY.vace_in_dim, TINY.in_dim) == (40, tuple(range(0, 40, 5)), 96, 16)


@pytest.mark.parametrize("expert", ["high", "low"])
@pytest.mark.parametrize("shape", [(1, 4, 6), (3, 6, 4)])
def test_expert_matches_diffusers_vace_transformer(experts, expert, shape):
    ours, reference = experts[expert]
    gen = torch.Generator().manual_seed(33)
    x = torch.randn(BATCH, 16, *shape, generator=gen)
    t = torch.tensor([980.0, 310.5])
    context = torch.randn(BATCH, TINY.text_len, TINY.text_dim, generator=gen)
    context[0, 9:] = 0
    context[1, 25:] = 0
    vace = torch.randn(BATCH, TINY.vace_in_dim, *shape, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, vace_context=vace, vace_scale=0.8)
        without = ours(x, t, context)
        expected = reference(x, t, context, control_hidden_states=vace,
                             control_hidden_states_scale=torch.full((8,), 0.8), return_dict=False)[0]
    assert max_diff(out, expected) <= TOL
    assert max_diff(out, without) > 1e-3  # the eight hints reach the output


def test_expert_pair_r2v_matches_wan_vace_pipeline_with_transformer_2(experts):
    """One letterboxed reference, UniPC at the authors' shift 12, guidance 5 on both experts,
    switch at t = 875; the reference frame is trimmed after sampling on both sides."""
    (high, high_ref), (low, low_ref) = experts["high"], experts["low"]
    vae, vae_ref = vae_pair(WanVAE21, TINY_WAN21_VAE, seed=34)
    steps, shift, frames, height, width, strength = 10, 12.0, 5, 32, 48, 1.0
    pil, tensor = _pil_and_tensor(np.random.default_rng(35).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    latents = seeded_noise((1, 16, 3, height // 8, width // 8), seed=36)
    positive, negative = prompt_pair(TINY, seed=37)
    pipe = diffusers.WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae_ref,
                                     scheduler=parity_scheduler("unipc", shift), transformer=high_ref,
                                     transformer_2=low_ref, boundary_ratio=0.875)
    with torch.no_grad():
        expected = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, latents=latents,
                        height=height, width=width, num_frames=frames, num_inference_steps=steps,
                        guidance_scale=5.0, guidance_scale_2=5.0, conditioning_scale=strength,
                        reference_images=[pil], output_type="latent").frames[:, :, 1:]
        context, trim = build_vace_context(lambda px: latent_stats.normalize(vae.encode(px), "2.1"),
                                           num_frames=frames, height=height, width=width, references=[tensor])
        result = MoESampler(high, low).sample(
            latents, S.official_unipc(steps, shift),
            WanConditioning(context=positive, negative_context=negative, vace_context=context,
                            vace_strength=strength, vace_trim_frames=trim),
            cfg_high=5.0, cfg_low=5.0, boundary=0.875)
    assert trim == 1 and result.latent.shape[2] == 2
    assert 0 < result.steps_per_expert["high"] < steps
    assert max_diff(result.latent, expected) <= TOL
