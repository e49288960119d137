"""The latent fit folded into a VAE: encode gives the whitened latent, decode is unchanged."""
import torch

from wanflow.train.latent_fit import fold_into_vae, whitening
from wanflow.wan.latent_stats import WAN21
from wanflow.wan.vae2_1 import WanVAE21, WanVAE21Config


def _latents_with_one_weak_direction(n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 16, 1, 2, 2, generator=g) * 3.0 + 0.5
    z[:, 7] = z[:, 7] * 0.01  # a direction the encoder barely uses
    return z


def test_whitening_gives_unit_mean_variance_and_lifts_weak_directions():
    z = _latents_with_one_weak_direction()
    latent_map = whitening(z)
    out = torch.einsum("ij,njthw->nithw", latent_map.gain, (z.double() - latent_map.mean[None, :, None, None, None]))
    tokens = out.movedim(1, -1).reshape(-1, 16)
    assert tokens.mean(0).abs().max() < 1e-6
    assert abs(tokens.var(0).mean().item() - 1.0) < 1e-3
    before = z.double().movedim(1, -1).reshape(-1, 16).std(0)
    # the weak direction now counts ~10x more next to the others (the floor caps the lift)
    assert tokens[:, 7].std() / tokens[:, 0].std() > 8 * before[7] / before[0]


def test_fold_changes_encode_by_the_map_and_leaves_reconstruction_alone():
    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8)).float()
    pixels = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    before = WAN21.normalize(vae.encode(pixels))
    recon_before = vae.decode(vae.encode(pixels))
    latent_map = whitening(_latents_with_one_weak_direction())
    fold_into_vae(vae, latent_map)
    after = WAN21.normalize(vae.encode(pixels))
    expected = torch.einsum("ij,bjthw->bithw", latent_map.gain.float(),
                            before - latent_map.mean.float()[None, :, None, None, None])
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vae.decode(vae.encode(pixels)), recon_before, atol=1e-4, rtol=1e-4)
