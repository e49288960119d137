"""Wan VAE 2.1 / 2.2 against diffusers ``AutoencoderKLWan`` with the same (random) weights.

Our models hold official keys; diffusers weights reach them through model_loaders/vae_keys.py,
so these tests check the architecture, the chunked/streaming schedule and the key map at once.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from wanflow.model_loaders import vae_keys
from wanflow.wan import latent_stats, vae_common
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WAN22_VAE, WanVAE22, patchify, unpatchify
from wanflow.wan.vae_common import blend_weights, tile_starts

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
VERSIONS = {"2.1": (WanVAE21, TINY_WAN21_VAE, WAN21_VAE), "2.2": (WanVAE22, TINY_WAN22_VAE, WAN22_VAE)}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (diffusers' init leaves some layers at zero / one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if name.endswith("gamma") else noise)


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def pair(request):
    """(version, ours, diffusers) with identical tiny random weights, fp32, eval mode."""
    cls, tiny, _ = VERSIONS[request.param]
    reference = diffusers.AutoencoderKLWan(**vae_keys.diffusers_config(tiny)).eval()
    _randomize(reference, seed=1 if request.param == "2.1" else 2)
    with torch.device("meta"):
        ours = cls(tiny)
    ours.load_state_dict(vae_keys.diffusers_to_official(reference.state_dict()), strict=True, assign=True)
    return request.param, ours.eval(), reference


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_encode_matches_diffusers(pair, frames):
    _, ours, reference = pair
    s = ours.spatial_factor
    x = torch.rand(2, 3, frames, 2 * s, 3 * s, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.mode()
    mu = ours.encode(x)
    assert mu.shape == (2, ours.z_dim, (frames - 1) // 4 + 1, 2, 3) == expected.shape
    assert (mu - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("latent_frames", [1, 2, 5])
def test_decode_matches_diffusers(pair, latent_frames):
    _, ours, reference = pair
    z = torch.randn(2, ours.z_dim, latent_frames, 3, 2, generator=torch.Generator().manual_seed(latent_frames))
    with torch.no_grad():
        expected = reference.decode(z).sample
    pixels = ours.decode(z)
    s = ours.spatial_factor
    assert pixels.shape == (2, 3, 4 * (latent_frames - 1) + 1, 3 * s, 2 * s) == expected.shape
    assert (pixels - expected).abs().max().item() <= TOL
    unclamped = (pixels.abs() < 0.999).float().mean().item()
    assert unclamped > 0.2, "random weights saturate the output; the comparison would be weak"


def test_decode_chunks_stream_one_latent_frame_at_a_time(pair):
    _, ours, _ = pair
    z = torch.randn(1, ours.z_dim, 3, 2, 2, generator=torch.Generator().manual_seed(7))
    chunks = list(ours.decode_chunks(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert all(c.min() >= -1 and c.max() <= 1 for c in chunks)
    out = torch.full(ours.pixel_shape(tuple(z.shape)), float("nan"))
    assert ours.decode(z, out=out) is out
    assert torch.equal(out, torch.cat(chunks, dim=2))
    with pytest.raises(ValueError, match="expected"):
        ours.decode(z, out=torch.empty(1, 3, 8, 2, 2))
    out64 = torch.empty(out.shape, dtype=torch.float64)
    assert torch.equal(ours.decode_tiled(z, tile=4, overlap=1, out=out64), out.double())


def test_feature_cache_stops_growing(pair, monkeypatch):
    """The only state carried between chunks is the feature cache: after the second latent
    frame its size must stay fixed, whatever the clip length, and its buffers are reused in
    place (no new long-lived tensor per latent frame to fragment the heap)."""
    _, ours, _ = pair
    sizes, buffers = [], []

    class MeasuredCache(vae_common.FeatureCache):
        def start_chunk(self) -> None:
            tensors = [v for v in self.slots if isinstance(v, torch.Tensor)]
            sizes.append(sum(v.numel() for v in tensors))
            buffers.append([v.data_ptr() for v in tensors])
            super().start_chunk()

    monkeypatch.setattr(vae_common, "FeatureCache", MeasuredCache)
    z = torch.randn(1, ours.z_dim, 5, 2, 2, generator=torch.Generator().manual_seed(9))
    for _ in ours.decode_chunks(z):
        pass
    assert sizes[0] == 0 and sizes[1] > 0
    assert sizes[2] == sizes[3] == sizes[4]
    assert len(buffers[2]) > 0 and buffers[2] == buffers[3] == buffers[4]


def test_tiled_decode(pair):
    """Two tiles side by side: each tile's own area is its plain decode, the overlap is the
    linear cross-fade of both."""
    _, ours, _ = pair
    z = torch.randn(1, ours.z_dim, 2, 2, 6, generator=torch.Generator().manual_seed(3))
    full = ours.decode(z)
    assert torch.equal(ours.decode_tiled(z, tile=8, overlap=2), full), "one tile must equal plain decode"
    tiled = ours.decode_tiled(z, tile=4, overlap=2)  # tiles at latent columns 0-3 and 2-5
    left, right = ours.decode(z[..., 0:4]), ours.decode(z[..., 2:6])
    s = ours.spatial_factor
    m = 2 * s  # overlap in pixels
    assert torch.allclose(tiled[..., :m], left[..., :m], atol=1e-6)
    assert torch.allclose(tiled[..., 2 * m:], right[..., m:], atol=1e-6)
    w_right = (torch.arange(m) + 1.0) / (m + 1)
    blend = left[..., m:] * (1 - w_right) + right[..., :m] * w_right
    assert torch.allclose(tiled[..., m:2 * m], blend, atol=1e-6)
    assert not torch.allclose(left[..., m:], right[..., :m], atol=1e-3), "tiles agree: test would be weak"


def test_tile_layout_and_blend_weights():
    assert tile_starts(5, 8, 2) == [0]
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    w = blend_weights(4, 4, 2, 1, (True, False, False, True))
    assert w.shape == (8, 8) and w.min() > 0 and w.max() == 1
    assert w[0, 0] < w[1, 0] < w[2, 0] == 1          # rises at the top edge
    assert w[4, 7] < w[4, 6] < w[4, 5] == 1          # falls at the right edge


def test_encode_rejects_bad_shapes(pair):
    _, ours, _ = pair
    s = ours.spatial_factor
    with pytest.raises(ValueError, match="4n\\+1"):
        ours.encode(torch.zeros(1, 3, 4, s, s))
    with pytest.raises(ValueError, match=f"multiples of {s}"):
        ours.encode(torch.zeros(1, 3, 1, s + 2, s))
    with pytest.raises(ValueError, match="latents"):
        ours.decode(torch.zeros(1, ours.z_dim + 1, 1, 2, 2))


def test_bf16_weights_stay_bf16(pair):
    """A bf16 file keeps its dtype; compute in fp32 equals fp32 weights rounded to bf16."""
    version, ours, _ = pair
    cls, tiny, _ = VERSIONS[version]
    sd16 = {k: v.to(torch.bfloat16) for k, v in ours.state_dict().items()}
    with torch.device("meta"):
        stored = cls(tiny)
    stored.load_state_dict(sd16, assign=True)
    assert stored.decoder.conv1.weight.dtype == torch.bfloat16
    rounded = cls(tiny)
    rounded.load_state_dict({k: v.float() for k, v in sd16.items()})
    z = torch.randn(1, ours.z_dim, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    assert (stored.decode(z) - rounded.decode(z)).abs().max() <= TOL


def test_bf16_compute(pair):
    """bf16 activations over fp32 weights: outputs keep the input dtype and stay close."""
    _, ours, _ = pair
    s = ours.spatial_factor
    x = torch.rand(1, 3, 5, s, 2 * s, generator=torch.Generator().manual_seed(6)) * 2 - 1
    mu = ours.encode(x)
    mu16 = ours.encode(x.bfloat16())
    assert mu16.dtype == torch.bfloat16 and (mu16.float() - mu).abs().max() < 0.05
    pixels16 = ours.decode(mu.bfloat16())
    assert pixels16.dtype == torch.bfloat16 and (pixels16.float() - ours.decode(mu)).abs().max() < 0.1


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_key_map_round_trip_full_size(version):
    """Real-size models on the meta device: every key maps, both ways, with matching shapes."""
    cls, _, real = VERSIONS[version]
    with torch.device("meta"):
        ours = cls(real)
        reference = diffusers.AutoencoderKLWan(**vae_keys.diffusers_config(real))
    official, theirs = ours.state_dict(), reference.state_dict()
    assert len(official) == {"2.1": 194, "2.2": 196}[version]
    assert vae_keys.detect_version(official) == vae_keys.detect_version(theirs) == version
    converted = vae_keys.official_to_diffusers(official)
    assert sorted(converted) == sorted(theirs)
    assert all(converted[k].shape == theirs[k].shape for k in theirs)
    assert sorted(vae_keys.diffusers_to_official(theirs)) == sorted(official)
    assert sorted(vae_keys.diffusers_to_official(converted)) == sorted(official)
    assert vae_keys.config_from_official(official) == real
    with pytest.raises(ValueError, match="already"):
        vae_keys.diffusers_to_official(official)


def test_key_map_examples():
    with torch.device("meta"):
        sd = WanVAE21(WAN21_VAE).state_dict()
    d = vae_keys.official_to_diffusers(sd)
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in d        # official upsamples.4.shortcut
    assert "decoder.up_blocks.2.upsamplers.0.time_conv.weight" not in d     # level 2 is upsample2d
    assert "decoder.up_blocks.0.upsamplers.0.time_conv.weight" in d
    assert "decoder.mid_block.attentions.0.to_qkv.weight" in d
    assert "post_quant_conv.weight" in d and "encoder.norm_out.gamma" in d
    with pytest.raises(ValueError, match="not a Wan VAE"):
        vae_keys.detect_layout({"foo.weight": torch.zeros(1)})


def test_latent_stats():
    assert latent_stats.stats_for("2.1").channels == 16 and latent_stats.stats_for("2.2").channels == 48
    params = inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters
    assert tuple(params["latents_mean"].default) == latent_stats.WAN21.mean
    assert tuple(params["latents_std"].default) == latent_stats.WAN21.std
    z = torch.randn(2, 48, 3, 4, 4)
    n = latent_stats.normalize(z, "2.2")
    assert torch.allclose(n[:, 5], (z[:, 5] - latent_stats.WAN22.mean[5]) / latent_stats.WAN22.std[5])
    assert torch.allclose(latent_stats.denormalize(n, "2.2"), z, atol=1e-5)
    assert latent_stats.stats_for_channels(16) is latent_stats.WAN21
    with pytest.raises(ValueError, match="16"):
        latent_stats.normalize(z, "2.1")
    with pytest.raises(ValueError, match="version"):
        latent_stats.stats_for("3.0")


def test_patchify_round_trip_and_order():
    x = torch.arange(2 * 3 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 3, 1, 4, 6)
    p = patchify(x)
    assert p.shape == (2, 12, 1, 2, 3)
    # channel c*4 + col*2 + row holds pixel (2h + row, 2w + col) of colour c
    assert p[0, 1 * 4 + 1 * 2 + 0, 0, 1, 2] == x[0, 1, 0, 2, 5]
    assert torch.equal(unpatchify(p), x)
