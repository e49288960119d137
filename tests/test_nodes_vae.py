"""VAE encode/decode and empty latent nodes on tiny random VAEs; LATENT stays raw (ComfyUI's rule)."""
import logging

import pytest
import torch

from wanflow.nodes.latent_nodes import WanFlowEmptyVideoLatent
from wanflow.nodes.vae_nodes import WanFlowVAEDecode, WanFlowVAEEncode, image_to_pixels, pixels_to_image
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22


@pytest.fixture(scope="module")
def vae21():
    torch.manual_seed(0)
    return WanVAE21(TINY_WAN21_VAE).eval()


@pytest.fixture(scope="module")
def vae22():
    torch.manual_seed(0)
    return WanVAE22(TINY_WAN22_VAE).eval()


def test_image_pixel_conversions_invert():
    images = torch.rand(5, 16, 24, 3)
    pixels = image_to_pixels(images)
    assert pixels.shape == (1, 3, 5, 16, 24) and pixels.min() >= -1
    torch.testing.assert_close(pixels_to_image(pixels), images)


def test_encode_gives_raw_latents(vae21):
    images = torch.rand(5, 8, 16, 3)
    (latent,) = WanFlowVAEEncode().encode(images, vae21)
    raw = vae21.encode(images.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1)
    assert latent["samples"].shape == (1, 16, 2, 1, 2)
    torch.testing.assert_close(latent["samples"], raw)  # not normalised: core VAEDecode can read it


@pytest.mark.parametrize("tiled", [False, True])
def test_decode_streams_into_image(vae21, tiled):
    z = torch.randn(2, 16, 2, 2, 3)
    (images,) = WanFlowVAEDecode().decode({"samples": z}, vae21, tiled, 8, 2)
    assert images.shape == (2 * 5, 16, 24, 3)
    assert images.min() >= 0 and images.max() <= 1
    expected = pixels_to_image(vae21.decode(z))
    if tiled:  # a single tile covers this latent, so tiling changes nothing
        torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(images, expected)


def test_tiled_decode_passes_tile_size_and_overlap(vae21):
    """A latent spanning several tiles: the node decodes exactly as decode_tiled with its widgets."""
    z = torch.randn(1, 16, 2, 6, 10, generator=torch.Generator().manual_seed(2))
    (images,) = WanFlowVAEDecode().decode({"samples": z}, vae21, True, 4, 2)
    torch.testing.assert_close(images, pixels_to_image(vae21.decode_tiled(z, tile=4, overlap=2)))
    assert not torch.allclose(images, pixels_to_image(vae21.decode_tiled(z, tile=8, overlap=2)))


def test_decode_rejects_wrong_vae(vae22):
    with pytest.raises(ValueError, match=r"this VAE decodes \[batch, 48"):
        WanFlowVAEDecode().decode({"samples": torch.zeros(1, 16, 2, 4, 4)}, vae22, False, 32, 8)


def test_encode_rejects_bad_sizes(vae21, vae22):
    with pytest.raises(ValueError, match="4n\\+1"):
        WanFlowVAEEncode().encode(torch.rand(4, 16, 16, 3), vae21)
    with pytest.raises(ValueError, match="multiples of 16"):
        WanFlowVAEEncode().encode(torch.rand(1, 24, 16, 3), vae22)


def test_empty_latent_matches_comfyui_layout(vae21, vae22, caplog):
    out = WanFlowEmptyVideoLatent().create(vae21, 832, 480, 81, 1)
    latent, w, h, n = out["result"]
    assert latent["samples"].shape == (1, 16, 21, 60, 104) and not latent["samples"].any()
    assert (w, h, n) == (832, 480, 81) and out["ui"]["text"] == ["832x480, 81 frames"]
    with caplog.at_level(logging.WARNING, logger="wanflow"):
        out = WanFlowEmptyVideoLatent().create(vae22, 1280, 720, 121, 2)
    latent, w, h, _ = out["result"]
    assert (w, h) == (1280, 704) and "using 1280x704, 121 frames (1280x720 rounded" in caplog.text
    assert out["ui"]["text"] == ["1280x704, 121 frames (1280x720 rounded: the model needs multiples of 32)"]
    assert latent["samples"].shape == (2, 48, 31, 44, 80)
    out = WanFlowEmptyVideoLatent().create(vae21, 832, 480, 80, 1)
    assert out["result"][3] == 77 and out["result"][0]["samples"].shape[2] == 20
    assert out["ui"]["text"] == ["832x480, 77 frames (80 frames rounded down to 77: the model needs 4n+1)"]


@pytest.mark.parametrize("native_bf16, expected", [("1", torch.bfloat16), ("0", torch.float32)])
def test_a_bf16_vae_computes_in_what_the_cpu_does_fast(monkeypatch, native_bf16, expected):
    """bf16 weights on a CPU without native bf16 run in float32 (several times faster there);
    the weights stay bf16 either way."""
    monkeypatch.setenv("WANFLOW_CPU_BF16", native_bf16)
    torch.manual_seed(0)
    vae = WanVAE21(TINY_WAN21_VAE).eval().to(torch.bfloat16)
    seen = []
    for method in ("encode", "decode_chunks"):  # what the nodes hand the VAE
        real = getattr(vae, method)
        spy = (lambda real: lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))(real)
        monkeypatch.setattr(vae, method, spy)
    (latent,) = WanFlowVAEEncode().encode(torch.rand(5, 8, 16, 3), vae)
    WanFlowVAEDecode().decode(latent, vae, False, 32, 8)
    assert seen and set(seen) == {expected}
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}
