"""CLIP vision tower: parity with transformers' CLIPVisionModel hidden_states[-2], key maps,
preprocessing (official squash-resize and the ComfyUI centre-crop variant)."""
from __future__ import annotations

import pytest
import torch

from wanflow.model_loaders import clip_keys
from wanflow.wan.clip_vision import (CLIP_MEAN, CLIP_STD, CLIPVisionConfig, CLIPVisionTower,
                                     preprocess, preprocess_comfy)

transformers = pytest.importorskip("transformers")

TINY = CLIPVisionConfig(image_size=42, patch_size=14, dim=48, num_layers=4, num_heads=4,
                        mlp_ratio=4, embed_dim=24)


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.CLIPVisionConfig(
        hidden_size=TINY.dim, intermediate_size=TINY.dim * TINY.mlp_ratio,
        num_hidden_layers=TINY.num_layers, num_attention_heads=TINY.num_heads,
        image_size=TINY.image_size, patch_size=TINY.patch_size, projection_dim=TINY.embed_dim,
        hidden_act="gelu", layer_norm_eps=TINY.eps)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # give every weight (norms and biases too) a visible effect
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def ours(hf_model):
    model = CLIPVisionTower(TINY).eval()
    model.load_state_dict(clip_keys.hf_to_official(hf_model.state_dict()), strict=True)
    return model


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(3))


def test_matches_transformers_penultimate_hidden_states(hf_model, ours):
    pixels = _pixels()
    with torch.no_grad():
        out = hf_model(pixel_values=pixels, output_hidden_states=True)
        got = ours(pixels)
    hidden = out.hidden_states
    # hidden_states = (after pre_layrnorm, layer 1, ..., layer N): [-2] is layer N-1's output
    assert len(hidden) == TINY.num_layers + 1
    assert got.shape == (2, TINY.num_tokens, TINY.dim)
    assert (got - hidden[-2]).abs().max().item() <= 1e-4
    assert (got - hidden[-1]).abs().max().item() > 1e-2  # not the last layer
    # hidden_states[0] is taken after pre_layrnorm, so our pre_norm placement matches too
    with torch.no_grad():
        x = ours.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([ours.cls_embedding.expand(2, -1, -1), x], 1) + ours.pos_embedding
        assert (ours.pre_norm(x) - hidden[0]).abs().max().item() <= 1e-5


def test_key_map_round_trip(hf_model):
    hf_sd = hf_model.state_dict()
    assert all(k.startswith("vision_model.") or k == "visual_projection.weight" for k in hf_sd)
    official = clip_keys.hf_to_official(hf_sd)
    assert official["cls_embedding"].shape == (1, 1, TINY.dim)
    assert official["pos_embedding"].shape == (1, TINY.num_tokens, TINY.dim)
    assert official["transformer.0.attn.to_qkv.weight"].shape == (3 * TINY.dim, TINY.dim)
    assert official["head"].shape == (TINY.dim, TINY.embed_dim)
    back = clip_keys.official_to_hf(official)
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in back)
    # q | k | v order inside to_qkv
    q = hf_sd["vision_model.encoder.layers.1.self_attn.q_proj.bias"]
    v = hf_sd["vision_model.encoder.layers.1.self_attn.v_proj.bias"]
    fused = official["transformer.1.attn.to_qkv.bias"]
    assert torch.equal(fused[: TINY.dim], q) and torch.equal(fused[2 * TINY.dim:], v)


def test_key_map_prefix_variants_and_errors(hf_model):
    hf_sd = hf_model.state_dict()
    official = clip_keys.hf_to_official(hf_sd)
    bare = clip_keys.official_to_hf(official, prefix="")  # transformers-5 CLIPVisionModel
    assert "pre_layrnorm.weight" in bare
    bare_back = clip_keys.hf_to_official({**bare, "embeddings.position_ids": torch.arange(3)})
    assert set(bare_back) == set(official)

    pth = {f"visual.{k}": v for k, v in official.items()}
    pth.update({"textual.token_embedding.weight": torch.zeros(2, 2), "log_scale": torch.zeros(())})
    assert set(clip_keys.official_visual(pth)) == set(official)
    with pytest.raises(ValueError, match="visual"):
        clip_keys.official_visual({"textual.x": torch.zeros(1)})

    with pytest.raises(ValueError, match="text_model.x"):
        clip_keys.hf_to_official({"text_model.x": torch.zeros(1)})
    incomplete = {k: v for k, v in hf_sd.items() if "layers.2.self_attn.k_proj" not in k}
    with pytest.raises(ValueError, match="k_proj"):
        clip_keys.hf_to_official(incomplete)
    with pytest.raises(ValueError, match="transformer.0.bogus.weight"):
        clip_keys.official_to_hf({"transformer.0.bogus.weight": torch.zeros(1)})


def test_meta_construction_and_assign_load(ours):
    with torch.device("meta"):
        lazy = CLIPVisionTower(TINY)
    lazy.load_state_dict(ours.state_dict(), assign=True, strict=True)
    pixels = _pixels()
    with torch.no_grad():
        assert torch.equal(lazy(pixels), ours(pixels))


def test_vit_h_preset_shapes():
    cfg = CLIPVisionConfig.vit_h_14()
    with torch.device("meta"):
        model = CLIPVisionTower(cfg)
    sd = model.state_dict()
    assert cfg.num_tokens == 257
    assert sd["patch_embedding.weight"].shape == (1280, 3, 14, 14)
    assert "patch_embedding.bias" not in sd
    assert sd["pos_embedding"].shape == (1, 257, 1280)
    assert sd["transformer.31.attn.to_qkv.weight"].shape == (3840, 1280)
    assert sd["transformer.31.mlp.0.weight"].shape == (5120, 1280)
    assert sd["head"].shape == (1280, 1024)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 632) < 2


def test_half_precision_runs(ours):
    pixels = _pixels()
    with torch.no_grad():
        ref = ours(pixels)
        half = ours(pixels.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_wrong_pixel_shape_is_named(ours):
    with pytest.raises(ValueError, match=r"\[N, 3, 42, 42\]"):
        ours(torch.zeros(1, 3, 40, 40))


def _expected_constant(value01: torch.Tensor) -> torch.Tensor:
    return (value01 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


def test_preprocess_official_squashes_whole_image():
    colour = torch.tensor([-1.0, 0.2, 0.9])
    images = colour.view(1, 3, 1, 1).expand(2, 3, 100, 300).clone()
    out = preprocess(images)
    assert out.shape == (2, 3, 224, 224)
    expected = _expected_constant(colour * 0.5 + 0.5).view(1, 3, 1, 1)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-5)
    # no crop: the left third of a wide image stays in the left third
    images = torch.zeros(1, 3, 64, 192)
    images[..., :64] = 1.0
    out = preprocess(images)
    left, right = out[0, 0, :, :60].mean(), out[0, 0, :, 90:].mean()
    assert left > right + 1.0


def test_preprocess_comfy_centre_crop_and_quantisation():
    # wide ComfyUI IMAGE [N, H, W, C]: red side bands, grey centre square
    image = torch.full((1, 100, 300, 3), 0.4)
    image[:, :, :90] = torch.tensor([1.0, 0.0, 0.0])
    image[:, :, 210:] = torch.tensor([1.0, 0.0, 0.0])
    cropped = preprocess_comfy(image, crop=True)
    assert cropped.shape == (1, 3, 224, 224)
    expected = _expected_constant(torch.full((3,), 102 / 255)).view(1, 3, 1, 1)
    assert torch.allclose(cropped[:, :, :, 10:-10], expected.expand(1, 3, 224, 204), atol=1e-5)
    squashed = preprocess_comfy(image, crop=False)
    red = _expected_constant(torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(squashed[0, :, 100, 5], red, atol=1e-5)
    # values land on the 1/255 grid before normalisation
    x = preprocess_comfy(torch.rand(1, 224, 224, 4))
    raw = x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    with pytest.raises(ValueError, match="ComfyUI IMAGE"):
        preprocess_comfy(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        preprocess(torch.zeros(1, 32, 32, 3))
