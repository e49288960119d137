"""WanDiT against diffusers' WanTransformer3DModel / WanVACETransformer3DModel (same weights through
model_loaders/dit_keys.py, fp32, tiny sizes), plus key-map, preset and contract checks."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from wanflow.model_loaders import dit_keys
from wanflow.wan import attention as attention_mod
from wanflow.wan import ops
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import PRESETS, TINY_PRESETS

from dit_testing import diffusers_twin, randomize_

TOL = 1e-4
BATCH = 2
# latent (F, H, W): 1, 2 and 5 frames, all non-square
SHAPES = [(1, 4, 6), (2, 6, 4), (5, 4, 8)]


@pytest.fixture(scope="module")
def twins():
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = diffusers_twin(TINY_PRESETS[kind], seed=sorted(TINY_PRESETS).index(kind))
        return cache[kind]

    return get


def _latent_and_text(cfg, shape, seed=0, in_channels=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, in_channels or cfg.out_dim, *shape, generator=gen)
    t = torch.tensor([999.0, 417.25])
    context = torch.randn(BATCH, cfg.text_len, cfg.text_dim, generator=gen)
    context[0, 7:] = 0   # prompts of different lengths, zero-padded like the text encoder output
    context[1, 30:] = 0
    return x, t, context, gen


def _diffusers(model, *args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*args, return_dict=False, **kwargs)[0]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ---- forward parity ------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_t2v_matches_diffusers(twins, shape):
    """Wan 2.1 T2V; the Wan 2.2 T2V-A14B experts are the same architecture."""
    ours, ref = twins("t2v")
    x, t, context, _ = _latent_and_text(ours.config, shape)
    with torch.no_grad():
        out = ours(x, t, context)
    assert out.dtype == torch.float32
    assert _max_diff(out, _diffusers(ref, x, t, context)) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_i2v_with_clip_matches_diffusers(twins, shape):
    ours, ref = twins("i2v")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, shape)
    y = torch.randn(BATCH, cfg.in_dim - cfg.out_dim, *shape, generator=gen)
    clip_fea = torch.randn(BATCH, 257, cfg.clip_dim, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, y=y, clip_fea=clip_fea)
    expected = _diffusers(ref, torch.cat([x, y], 1), t, context, encoder_hidden_states_image=clip_fea)
    assert _max_diff(out, expected) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_flf2v_matches_diffusers(twins, shape):
    ours, ref = twins("flf2v")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, shape)
    y = torch.randn(BATCH, cfg.in_dim - cfg.out_dim, *shape, generator=gen)
    # first- and last-frame CLIP tokens, concatenated per sample
    clip_fea = torch.randn(BATCH, cfg.flf_pos_len, cfg.clip_dim, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, y=y, clip_fea=clip_fea)
    # diffusers takes them as 2B separate images and regroups pairs itself
    pairs = clip_fea.reshape(2 * BATCH, cfg.flf_pos_len // 2, cfg.clip_dim)
    expected = _diffusers(ref, torch.cat([x, y], 1), t, context, encoder_hidden_states_image=pairs)
    assert _max_diff(out, expected) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_wan22_i2v_without_clip_matches_diffusers(twins, shape):
    ours, ref = twins("i2v-2.2")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, shape)
    y = torch.randn(BATCH, cfg.in_dim - cfg.out_dim, *shape, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, y=y)
    assert _max_diff(out, _diffusers(ref, torch.cat([x, y], 1), t, context)) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_ti2v_per_token_timesteps_match_diffusers(twins, shape):
    """TI2V-5B image-to-video: first-frame tokens carry t=0, the rest the sampler's t."""
    ours, ref = twins("ti2v")
    cfg = ours.config
    x, t, context, _ = _latent_and_text(cfg, shape)
    frames, height, width = shape
    per_frame = height // 2 * width // 2
    t_tokens = t[:, None].repeat(1, frames * per_frame)
    t_tokens[:, :per_frame] = 0.0
    with torch.no_grad():
        out = ours(x, t_tokens, context)
        out_shared_t = ours(x, t, context)
    assert _max_diff(out, _diffusers(ref, x, t_tokens, context)) <= TOL
    assert _max_diff(out_shared_t, _diffusers(ref, x, t, context)) <= TOL
    with torch.no_grad():   # the same timesteps given per frame (ComfyUI style) or shared
        per_frame_t = t[:, None].repeat(1, frames)
        per_frame_t[:, 0] = 0.0
        assert _max_diff(ours(x, per_frame_t, context), out) <= 1e-5
        same = ours(x, t[:, None].repeat(1, frames * per_frame), context)
    assert _max_diff(same, out_shared_t) <= 1e-5


def test_ti2v_arbitrary_per_token_timesteps_match_diffusers(twins):
    """Timesteps that vary inside a frame take the general per-token path."""
    ours, ref = twins("ti2v")
    x, _, context, gen = _latent_and_text(ours.config, (2, 6, 4))
    t_tokens = torch.rand(BATCH, 2 * 3 * 2, generator=gen) * 1000
    with torch.no_grad():
        out = ours(x, t_tokens, context)
    assert _max_diff(out, _diffusers(ref, x, t_tokens, context)) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_vace_matches_diffusers(twins, shape):
    ours, ref = twins("vace")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, shape)
    vace = torch.randn(BATCH, cfg.vace_in_dim, *shape, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, vace_context=vace, vace_scale=0.7)
    scales = torch.full((len(cfg.vace_layers),), 0.7)
    expected = _diffusers(ref, x, t, context, control_hidden_states=vace,
                          control_hidden_states_scale=scales)
    assert _max_diff(out, expected) <= TOL


def test_vace_context_with_fewer_frames_is_zero_padded_like_diffusers(twins):
    ours, ref = twins("vace")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, (5, 4, 6))
    vace = torch.randn(BATCH, cfg.vace_in_dim, 3, 4, 6, generator=gen)
    with torch.no_grad():
        out = ours(x, t, context, vace_context=vace)
    assert _max_diff(out, _diffusers(ref, x, t, context, control_hidden_states=vace)) <= TOL


def test_several_vace_contexts_each_with_its_own_strength(twins):
    ours, ref = twins("vace")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, (2, 4, 6))
    first = torch.randn(BATCH, cfg.vace_in_dim, 2, 4, 6, generator=gen)
    second = torch.randn(BATCH, cfg.vace_in_dim, 2, 4, 6, generator=gen)
    scales = torch.full((len(cfg.vace_layers),), 0.6)
    with torch.no_grad():
        only_first = ours(x, t, context, vace_context=[first, second], vace_scale=[0.6, 0.0])
        both = ours(x, t, context, vace_context=[first, second], vace_scale=[0.6, 0.9])
        first_alone = ours(x, t, context, vace_context=first, vace_scale=0.6)
        second_alone = ours(x, t, context, vace_context=second, vace_scale=0.9)
        no_vace = ours(x, t, context)
    expected = _diffusers(ref, x, t, context, control_hidden_states=first,
                          control_hidden_states_scale=scales)
    assert _max_diff(only_first, expected) <= TOL
    assert _max_diff(only_first, first_alone) <= 1e-6
    assert _max_diff(both, first_alone) > 1e-3 and _max_diff(both, second_alone) > 1e-3
    assert _max_diff(no_vace, first_alone) > 1e-3


def test_short_context_is_zero_padded_to_text_len(twins):
    """The original pads text to 512 tokens and the padding takes part in cross-attention."""
    ours, _ = twins("t2v")
    x, t, context, _ = _latent_and_text(ours.config, (2, 4, 6))
    short = context[:, :30]
    with torch.no_grad():
        assert _max_diff(ours(x, t, short), ours(x, t, context)) <= 1e-6


def test_unpadded_context_is_taken_at_its_length_like_diffusers_and_comfyui(twins):
    """ComfyUI's core text encoders never pad; with ``pad_context=False`` the DiT takes a 77-token
    context as given, as diffusers' transformer and core's Wan model do (tests/test_comfyui_models.py
    checks core), while the default pads it to 512 as the official code does."""
    ours, ref = twins("t2v")
    x, t, context, _ = _latent_and_text(ours.config, (2, 4, 6))
    short = torch.randn(BATCH, 77, ours.config.text_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        unpadded = ours(x, t, short, pad_context=False)
        padded = ours(x, t, short)
    assert _max_diff(unpadded, _diffusers(ref, x, t, short)) <= TOL
    assert _max_diff(padded, unpadded) > 1e-3


# ---- key maps ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(TINY_PRESETS))
def test_key_maps_round_trip_and_load_strictly(kind):
    import diffusers

    cfg = TINY_PRESETS[kind]
    ours = WanDiT(cfg)
    randomize_(ours, seed=3)
    official = ours.state_dict()
    as_diffusers = dit_keys.official_to_diffusers(official)
    back = dit_keys.diffusers_to_official(as_diffusers)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)

    ref = getattr(diffusers, dit_keys.diffusers_class_name(cfg))(**dit_keys.diffusers_config(cfg))
    ref.load_state_dict(as_diffusers, strict=True)
    again = WanDiT(cfg)
    again.load_state_dict(dit_keys.diffusers_to_official(ref.state_dict()), strict=True)
    for key, value in again.state_dict().items():
        assert torch.equal(value, official[key]), key


def test_key_map_keeps_extra_tensors_and_rejects_unknown_keys():
    sd = {"blocks.3.self_attn.q.scale_weight": torch.ones(()),
          "head.modulation": torch.zeros(1, 2, 8)}
    assert set(dit_keys.official_to_diffusers(sd)) == {"blocks.3.attn1.to_q.scale_weight",
                                                       "scale_shift_table"}
    with pytest.raises(KeyError, match="model.diffusion_model.blocks.0.ffn.0"):
        dit_keys.official_to_diffusers({"model.diffusion_model.blocks.0.ffn.0.weight": 0})


# ---- presets, meta construction and the layers used ----------------------------------------

# DiT parameter counts of the released models (billions, 3 decimals).
RELEASED_SIZES = {
    "wan2.1-t2v-1.3b": 1.419, "wan2.1-t2v-14b": 14.288, "wan2.1-i2v-14b": 16.395,
    "wan2.1-flf2v-14b": 16.396, "wan2.2-t2v-a14b": 14.288, "wan2.2-i2v-a14b": 14.289,
    "wan2.2-ti2v-5b": 5.000,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_meta_and_match_diffusers_layout(name):
    import diffusers

    cfg = PRESETS[name]
    with torch.device("meta"):
        ours = WanDiT(cfg)
        ref = getattr(diffusers, dit_keys.diffusers_class_name(cfg))(**dit_keys.diffusers_config(cfg))
    assert all(p.is_meta for p in ours.parameters())
    if name in RELEASED_SIZES:
        billions = sum(p.numel() for p in ours.parameters()) / 1e9
        assert abs(billions - RELEASED_SIZES[name]) < 6e-4, billions
    converted = dit_keys.official_to_diffusers(ours.state_dict())
    expected = ref.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert cfg.head_dim != 128 or cfg.rope_axes == (44, 42, 42)


def test_meta_construction_then_assign_load_gives_the_same_model(twins):
    ours, _ = twins("i2v")
    with torch.device("meta"):
        lazy = WanDiT(ours.config)
    lazy.load_state_dict(ours.state_dict(), assign=True, strict=True)
    x, t, context, gen = _latent_and_text(ours.config, (2, 4, 6))
    y = torch.randn(BATCH, 20, 2, 4, 6, generator=gen)
    clip_fea = torch.randn(BATCH, 257, ours.config.clip_dim, generator=gen)
    with torch.no_grad():
        assert torch.equal(lazy(x, t, context, y=y, clip_fea=clip_fea),
                           ours(x, t, context, y=y, clip_fea=clip_fea))


def test_every_linear_and_conv_is_a_storage_dtype_layer():
    model = WanDiT(TINY_PRESETS["vace"])
    for kind in ("i2v", "flf2v"):
        model.add_module(kind, WanDiT(TINY_PRESETS[kind]))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            assert isinstance(module, ops.Linear), name
        if isinstance(module, nn.Conv3d):
            assert isinstance(module, ops.Conv3d), name
    assert isinstance(model.get_submodule("i2v.blocks.0.cross_attn.k_img"), ops.Linear)
    assert isinstance(model.get_submodule("vace_blocks.0.before_proj"), ops.Linear)


def test_all_attention_goes_through_the_pluggable_function(twins):
    ours, _ = twins("i2v")
    calls = []

    def counting(q, k, v, k_lens=None):
        calls.append(k.shape[1])
        return attention_mod.sdpa_attention(q, k, v, k_lens)

    attention_mod.register_backend("counting-test", counting)
    x, t, context, gen = _latent_and_text(ours.config, (1, 4, 6))
    y = torch.randn(BATCH, 20, 1, 4, 6, generator=gen)
    clip_fea = torch.randn(BATCH, 257, ours.config.clip_dim, generator=gen)
    with attention_mod.use_backend("counting-test"), torch.no_grad():
        ours(x, t, context, y=y, clip_fea=clip_fea)
    # per block: self-attention over 6 tokens, text (512) and image (257) cross-attention
    assert sorted(calls) == sorted([6, 512, 257] * ours.config.num_layers)


def test_bf16_storage_is_cast_per_call(twins):
    """bf16-stored weights with fp32 latents compute exactly like fp32 weights rounded to bf16."""
    ours, _ = twins("vace")
    stored = copy.deepcopy(ours).to(torch.bfloat16)
    rounded = copy.deepcopy(ours)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.bfloat16().float())
    assert all(p.dtype == torch.bfloat16 for p in stored.parameters())
    x, t, context, gen = _latent_and_text(ours.config, (2, 4, 6))
    vace = torch.randn(BATCH, ours.config.vace_in_dim, 2, 4, 6, generator=gen)
    with torch.no_grad():
        out = stored(x, t, context, vace_context=vace)
        expected = rounded(x, t, context, vace_context=vace)
    assert out.dtype == torch.float32
    assert _max_diff(out, expected) <= 1e-5


def test_lower_precision_compute_follows_the_latent_dtype(twins):
    ours, _ = twins("t2v")
    x, t, context, _ = _latent_and_text(ours.config, (2, 4, 6))
    with torch.no_grad():
        full = ours(x, t, context)
        half = ours(x.bfloat16(), t, context)
    assert half.dtype == torch.float32
    error = (half - full).abs().max() / full.abs().max()
    assert 0 < error < 0.05


# ---- clear errors on bad input --------------------------------------------------------------

def test_bad_inputs_raise_clear_errors(twins):
    ours, _ = twins("i2v")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, (2, 4, 6))
    y = torch.randn(BATCH, 20, 2, 4, 6, generator=gen)
    clip_fea = torch.randn(BATCH, 257, cfg.clip_dim, generator=gen)
    with pytest.raises(ValueError, match="in_dim=36"):
        ours(x, t, context, clip_fea=clip_fea)
    with pytest.raises(ValueError, match="needs clip_fea"):
        ours(x, t, context, y=y)
    with pytest.raises(ValueError, match="per-token"):
        ours(x, torch.zeros(BATCH, 5), context, y=y, clip_fea=clip_fea)
    with pytest.raises(ValueError, match="context must be"):
        ours(x, t, context[..., :8], y=y, clip_fea=clip_fea)
    with pytest.raises(ValueError, match="not divisible"):
        ours(x[..., :5], t, context, y=y[..., :5], clip_fea=clip_fea)
    with pytest.raises(ValueError, match="no VACE blocks"):
        ours(x, t, context, y=y, clip_fea=clip_fea, vace_context=x)
    with pytest.raises(ValueError, match="model_type"):
        type(cfg)(dim=48, ffn_dim=64, num_heads=4, num_layers=2, model_type="s2v")
    with pytest.raises(ValueError, match="vace_layers"):
        type(cfg)(dim=48, ffn_dim=64, num_heads=4, num_layers=2, model_type="vace",
                  vace_layers=(2, 0))


def test_bad_vace_inputs_raise_clear_errors(twins):
    ours, _ = twins("vace")
    cfg = ours.config
    x, t, context, gen = _latent_and_text(cfg, (2, 4, 6))
    vace = torch.randn(BATCH, cfg.vace_in_dim, 2, 4, 6, generator=gen)
    with pytest.raises(ValueError, match=r"F'<=2"):
        ours(x, t, context, vace_context=torch.cat([vace, vace], dim=2))
    with pytest.raises(ValueError, match=r"vace_context\[1\] must be"):
        ours(x, t, context, vace_context=[vace, vace[:, :8]], vace_scale=[1.0, 1.0])
    with pytest.raises(ValueError, match="2 VACE contexts but 3"):
        ours(x, t, context, vace_context=[vace, vace], vace_scale=[1.0, 0.5, 0.2])
