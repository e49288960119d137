"""The training building blocks: sigma ranges, the flow-matching loss, resumable loops, the nano
text encoder, and the VAE's differentiable streaming path."""
from pathlib import Path

import pytest
import torch

from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.nano.vocabulary import vocabulary
from wanflow.samplers.schedules import shift_sigmas
from wanflow.train import flow_matching, loop, nano_dit, nano_files, nano_text, vae_training
from wanflow.wan.dit import WanDiT
from wanflow.wan.vae2_1 import WanVAE21, WanVAE21Config
from wanflow.wan.vae_common import RMSNorm


@pytest.mark.parametrize("low, high", [(0.0, 0.875), (0.875, 1.0), (0.3, 0.6)])
def test_sigma_range_samples_inside_it_with_the_shift(low, high):
    rng = flow_matching.SigmaRange(3.0, low, high)
    sigmas = rng.sample(4000, torch.Generator().manual_seed(0))
    assert sigmas.min() >= max(low, 1e-4) - 1e-6 and sigmas.max() <= high + 1e-6
    u = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    full = shift_sigmas(u, 3.0)
    share = ((full >= low) & (full < high)).float().mean()
    assert 0 < share < 1 or (low, high) == (0.0, 1.0)


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    x0, noise = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 16, 2, 4, 4)
    sigma = torch.tensor([0.2, 0.9])

    def oracle(x_t, t, context, y=None):
        s = (t / 1000).reshape(-1, 1, 1, 1, 1)
        assert torch.allclose(x_t, (1 - s) * x0 + s * noise)
        return noise - x0

    assert flow_matching.flow_matching_loss(oracle, x0, torch.zeros(2, 3, 8), sigma, noise).item() == 0.0


def _tiny_run(work: Path, stop_at: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    gen = torch.Generator().manual_seed(3)

    def loss_fn(step):
        if step == stop_at:
            raise KeyboardInterrupt  # the session ends mid-stage
        x = torch.randn(8, 4, generator=gen)
        return (model(x) - x.sum(1, keepdim=True)).pow(2).mean(), {}

    cfg = loop.LoopConfig(steps=20, lr=0.05, warmup=2, checkpoint_every=5, log_every=1)
    loop.train("tiny", model, model.parameters(), loss_fn, cfg, work, {"data": gen}, quiet=True)
    return model


def test_a_stopped_loop_resumes_to_the_same_weights(tmp_path):
    straight = _tiny_run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "b", stop_at=13)   # last checkpoint: step 10
    resumed = _tiny_run(tmp_path / "b")
    assert torch.equal(straight.weight, resumed.weight)
    steps = [row.split(",")[0] for row in (tmp_path / "b" / "loss.csv").read_text().splitlines()]
    assert steps[0] == "step" and steps[1:] == [str(i) for i in range(20)]


def test_relaxed_norms_blend_and_restore():
    norm = RMSNorm(4, images=False)
    with torch.no_grad():
        norm.gamma.mul_(2.0)
    model = torch.nn.Sequential(norm)
    x = torch.randn(2, 4, 1, 3, 3)
    real = norm(x)
    with vae_training.relaxed_norms(model, 0.0):
        assert torch.allclose(norm(x), x * norm.gamma)
    with vae_training.relaxed_norms(model, 1.0):
        assert torch.equal(norm(x), real)
    assert type(norm) is RMSNorm and torch.equal(norm(x), real)


def test_vae_training_path_equals_inference():
    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8)).eval()
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae_training.encode_with_grad(vae, x)
        assert torch.equal(z, vae.encode(x))
        assert torch.equal(vae_training.decode_with_grad(vae, z).clamp(-1, 1), vae.decode(z))


def test_the_decoder_pass_trains_the_decoder_and_leaves_the_encoder():
    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8))
    loss, _ = vae_training.decoder_loss(vae, torch.rand(2, 3, 1, 16, 16) * 2 - 1, vae_training.VAELossWeights(),
                                        torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in [*vae.encoder.parameters(), *vae.conv1.parameters()])
    assert vae.conv2.weight.grad is not None and vae.decoder.head[-1].weight.grad is not None


def test_rescaling_about_the_background_keeps_the_background_and_stays_in_range():
    anchor, latent = torch.randn(64, 16, 1, 2, 2), torch.randn(64, 16, 1, 2, 2)
    moved = vae_training.rescaled_about(latent, anchor, 1.25, torch.Generator().manual_seed(0))
    k = ((moved - anchor) / (latent - anchor)).flatten(1)
    assert torch.allclose(k, k[:, :1], atol=1e-4)                 # one factor per sample
    assert k.min() >= 0.8 - 1e-4 and k.max() <= 1.25 + 1e-4 and k.min() < 0.9 and k.max() > 1.1
    assert torch.equal(vae_training.rescaled_about(anchor, anchor, 1.25, torch.Generator()), anchor)
    assert torch.allclose(vae_training.rescaled_about(latent, anchor, 1.0, torch.Generator()), latent, atol=1e-6)


def test_the_latent_scale_needs_the_backgrounds_and_draws_them_from_the_batch():
    from wanflow.train.nano_data import VAE_BACKGROUNDS, vae_batch

    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8))
    batch = vae_batch(torch.Generator().manual_seed(0), 4, frames=1, crop=16)
    allowed = torch.tensor(VAE_BACKGROUNDS, dtype=torch.float32) / 127.5 - 1
    assert all((allowed == row).all(dim=1).any() for row in batch.backgrounds)
    weights = vae_training.VAELossWeights(latent_scale=1.25)
    with pytest.raises(ValueError, match="background"):
        vae_training.autoencoder_loss(vae, batch.pixels, weights, torch.Generator())
    loss, _ = vae_training.autoencoder_loss(vae, batch.pixels, weights, torch.Generator(), batch.backgrounds)
    loss.backward()
    assert vae.encoder.conv1.weight.grad is not None


def test_the_background_cache_gives_the_encoders_latents_once_per_colour():
    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8)).eval()
    like = torch.zeros(3, 3, 5, 16, 16)
    backgrounds = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    cache = vae_training.BackgroundLatentCache(vae)
    cached = cache(backgrounds, like)
    assert torch.allclose(cached, vae_training.background_latents(vae, backgrounds, like), atol=1e-5)
    assert len(cache._latents) == 2 and torch.equal(cache(backgrounds, like), cached)


def test_nano_tokenizer_has_one_token_per_word_and_loads_like_comfyui_umt5(tmp_path):
    spiece = nano_text.train_tokenizer(0)
    assert spiece == nano_text.train_tokenizer(0)
    path = tmp_path / "umt5_nano.safetensors"
    nano_files.save_tensors(path, nano_text.text_encoder_file(0))
    loaded = load_text_encoder(path)
    for word in vocabulary():
        assert loaded.tokenizer([word]).mask.sum().item() == 2, word  # the word and </s>
    assert loaded.tokenizer(["A Blue SQUARE"]).ids[0, :3].tolist() == loaded.tokenizer(["a blue square"]).ids[0, :3].tolist()


@pytest.mark.parametrize("dropout", [nano_dit.CFG_DROPOUT, nano_dit.UNCOND_DROPOUT])
def test_batches_drop_about_their_share_of_captions_to_an_unconditional_prompt(dropout):
    from wanflow.train.nano_latents import LatentSet, TextTable
    data = LatentSet(torch.zeros(4, 16, 1, 2, 2), torch.tensor([0, 1, 0, 1]), None, [])
    text = TextTable(["a", "b"], torch.ones(2, 3, 4), -torch.ones(2, 3, 4))
    batches = nano_dit.Batches(data, text, torch.Generator().manual_seed(0), with_y=False, dropout=dropout)
    _, context, _ = batches(4000)
    dropped = (context[:, 0, 0] < 0).float().mean().item()
    assert abs(dropped - dropout) < 0.03


def test_i2v_starts_as_the_t2v_model():
    torch.manual_seed(0)
    t2v = WanDiT(nano_dit.NANO_DIT).eval()
    i2v = nano_dit.i2v_from_t2v(t2v).eval()
    x, context = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, nano_dit.NANO_DIT.text_dim)
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert torch.allclose(i2v(x, t, context, y=torch.randn(1, 20, 2, 4, 4)), t2v(x, t, context), atol=1e-5)


def test_vace_training_context_equals_the_nodes_context():
    from wanflow.samplers.vace_conditioning import build_vace_context
    from wanflow.train import nano_vace
    from wanflow.train.nano_latents import normalised_encoder

    torch.manual_seed(0)
    vae = WanVAE21(WanVAE21Config(dim=8)).eval()
    encode = normalised_encoder(vae)
    pictures = [torch.rand(1, 3, 64, 64) * 2 - 1 for _ in range(2)]
    with torch.no_grad():
        expected, trim = build_vace_context(encode, num_frames=17, height=64, width=64, references=pictures)
        refs = torch.stack([encode(p.unsqueeze(2)) for p in pictures], dim=1)   # [1, N, 16, 1, 8, 8]
        got = nano_vace.vace_context(refs, nano_vace.video_part(vae, 17, 64, 64))
    assert trim == 2 and torch.allclose(got, expected, atol=1e-6)


def test_vace_starts_as_the_t2v_model():
    from wanflow.train import nano_vace

    torch.manual_seed(0)
    t2v = WanDiT(nano_dit.NANO_DIT).eval()
    vace = nano_vace.vace_from_t2v(t2v).eval()
    x, context = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 5, nano_dit.NANO_DIT.text_dim)
    t = torch.tensor([300.0])
    with torch.no_grad():
        hinted = vace(x, t, context, vace_context=torch.randn(1, 96, 3, 4, 4))
        assert torch.allclose(hinted, t2v(x, t, context), atol=1e-5)


def _pooled(pixels: torch.Tensor, keep_colour: bool) -> torch.Tensor:
    """A stand-in encoder: 8x8 average pooling of the pixels, or (colour-blind) of a mask of where
    they differ from the corner pixel (the background)."""
    if not keep_colour:
        differs = (pixels - pixels[..., :1, :1]).abs().sum(dim=1, keepdim=True) > 0.1
        pixels = differs.float().expand(-1, 3, -1, -1, -1)
    return torch.nn.functional.avg_pool3d(pixels, (1, 8, 8))


def test_colour_separation_tells_a_colour_blind_latent_from_a_colour_one():
    from wanflow.train.nano_checks import colour_separation

    seeing = colour_separation(lambda px: _pooled(px, True), count=48)
    blind = colour_separation(lambda px: _pooled(px, False), count=48)
    for background in ("white", "black"):
        assert seeing[background]["min"] > 3 * blind[background]["min"], (seeing, blind)
        assert seeing[background]["min"] > 0.3, seeing


def _object_colour(pixels: torch.Tensor) -> torch.Tensor:
    """A shape-blind stand-in encoder: the mean colour of the pixels that differ from the corner
    pixel (the object), one latent cell per frame."""
    differs = ((pixels - pixels[..., :1, :1]).abs().sum(dim=1, keepdim=True) > 0.1).float()
    return (pixels * differs).sum(dim=(-2, -1), keepdim=True) / differs.sum(dim=(-2, -1), keepdim=True).clamp(min=1)


def test_shape_separation_tells_a_shape_blind_latent_from_one_that_sees_shapes():
    from wanflow.train.nano_checks import shape_separation

    seeing = shape_separation(lambda px: _pooled(px, True), places=1)
    blind = shape_separation(_object_colour, places=1)
    assert seeing["square"] > 0.2 * seeing["close colour"], seeing
    assert blind["square"] < 0.05 * blind["close colour"] and blind["close colour"] > 0.3, blind
