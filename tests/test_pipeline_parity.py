"""End-to-end: our MoE sampler with tiny WanDiT experts vs diffusers' Wan pipelines.

Both sides get the same random weights (through model_loaders/dit_keys.py), the same initial
latents, the same prompt embeddings and the official sigma grid (diffusers' scheduler built with
flow_shift=1 and given the official shifted sigmas: the exact-parity recipe of the sampling fact
sheet). Image conditions are built on our side with our VAE and samplers/conditioning.py, and on
diffusers' side by the pipeline with an AutoencoderKLWan holding the same weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wanflow.model_loaders import vae_keys
from wanflow.samplers import schedules as S
from wanflow.samplers.conditioning import WanConditioning, encode_first_frame, encode_i2v_condition
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.wan import latent_stats
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.vae2_1 import TINY_WAN21_VAE, WanVAE21
from wanflow.wan.vae2_2 import TINY_WAN22_VAE, WanVAE22

from dit_testing import diffusers_twin
from moe_testing import single_thread  # noqa: F401

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


def official_sigmas(solver: str, steps: int, shift: float) -> np.ndarray:
    """The official float64 grids, written out here independently of samplers/schedules.py."""
    if solver == "unipc":
        grid = np.linspace(float(np.float32(0.999)), 0, steps + 1)[:-1]
    else:
        grid = np.linspace(1.0, 0, steps + 1)[:steps]
    return shift * grid / (1 + (shift - 1) * grid)


def parity_scheduler(solver: str, shift: float):
    """A diffusers scheduler whose ``set_timesteps(N)`` installs the official grid for ``shift``."""
    if solver == "unipc":
        class OfficialUniPC(diffusers.UniPCMultistepScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
                super().set_timesteps(device=device,
                                      sigmas=official_sigmas("unipc", num_inference_steps, shift))

        return OfficialUniPC(prediction_type="flow_prediction", use_flow_sigmas=True,
                             num_train_timesteps=1000, flow_shift=1.0, solver_order=2,
                             solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")

    class OfficialDPM(diffusers.DPMSolverMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, mu=None, timesteps=None):
            super().set_timesteps(num_inference_steps, device=device)
            sigmas = official_sigmas("dpm++", num_inference_steps, shift)
            self.timesteps = torch.from_numpy(sigmas * 1000).to(torch.int64)
            self.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))

    return OfficialDPM(prediction_type="flow_prediction", use_flow_sigmas=True,
                       num_train_timesteps=1000, flow_shift=1.0, solver_order=2,
                       algorithm_type="dpmsolver++", solver_type="midpoint",
                       lower_order_final=True, final_sigmas_type="zero")


def build_schedule(solver: str, steps: int, shift: float) -> S.Schedule:
    return S.official_unipc(steps, shift) if solver == "unipc" else S.official_dpmpp(steps, shift)


def prompt_pair(cfg, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings zero-padded to text_len, as the text encoder delivers them."""
    g = torch.Generator().manual_seed(seed)
    positive = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    negative = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    positive[:, 9:] = 0
    negative[:, 4:] = 0
    return positive, negative


def vae_pair(cls, tiny, seed: int):
    """Our VAE and a diffusers AutoencoderKLWan with the same random weights."""
    reference = diffusers.AutoencoderKLWan(**vae_keys.diffusers_config(tiny)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if name.endswith("gamma") else noise)
    ours = cls(tiny).eval()
    ours.load_state_dict(vae_keys.diffusers_to_official(reference.state_dict()), strict=True)
    return ours, reference


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_t2v_moe_matches_wan_pipeline(solver):
    cfg = TINY_PRESETS["t2v"]
    high, high_ref = diffusers_twin(cfg, seed=0)
    low, low_ref = diffusers_twin(cfg, seed=1)
    steps, shift = 40, 12.0
    latents = seeded_noise((1, 16, 2, 4, 6), seed=11)
    positive, negative = prompt_pair(cfg, seed=3)

    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                 scheduler=parity_scheduler(solver, shift), transformer=high_ref,
                                 transformer_2=low_ref, boundary_ratio=0.875)
    with torch.no_grad():
        expected = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, latents=latents,
                        height=32, width=48, num_frames=5, num_inference_steps=steps,
                        guidance_scale=4.0, guidance_scale_2=3.0, output_type="latent").frames

        result = MoESampler(high, low).sample(
            latents, build_schedule(solver, steps, shift),
            WanConditioning(context=positive, negative_context=negative),
            solver=solver, cfg_high=4.0, cfg_low=3.0)
    assert result.steps_per_expert == {"high": 26, "low": 14}
    assert max_diff(result.latent, expected) <= TOL


def test_i2v_22_moe_matches_wan_image_to_video_pipeline():
    cfg = TINY_PRESETS["i2v-2.2"]
    high, high_ref = diffusers_twin(cfg, seed=2)
    low, low_ref = diffusers_twin(cfg, seed=3)
    vae, vae_ref = vae_pair(WanVAE21, TINY_WAN21_VAE, seed=4)
    steps, shift, frames, height, width = 40, 5.0, 5, 32, 48
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(5))
    latents = seeded_noise((1, 16, 2, height // 8, width // 8), seed=12)
    positive, negative = prompt_pair(cfg, seed=6)

    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae_ref, scheduler=parity_scheduler("unipc", shift),
        image_processor=None, image_encoder=None, transformer=high_ref, transformer_2=low_ref,
        boundary_ratio=0.9)
    with torch.no_grad():
        expected = pipe(image=image, prompt_embeds=positive, negative_prompt_embeds=negative,
                        latents=latents, height=height, width=width, num_frames=frames,
                        num_inference_steps=steps, guidance_scale=3.5,
                        output_type="latent").frames

        def encode(pixels):
            return latent_stats.normalize(vae.encode(pixels), "2.1")

        y = encode_i2v_condition(encode, image * 2 - 1, frames)
        result = MoESampler(high, low).sample(
            latents, S.official_unipc(steps, shift),
            WanConditioning(context=positive, negative_context=negative, y=y), cfg_high=3.5)
    assert result.steps_per_expert == {"high": 15, "low": 25}
    assert max_diff(result.latent, expected) <= TOL


def test_ti2v_matches_pipeline_with_expand_timesteps():
    cfg = TINY_PRESETS["ti2v"]
    model, model_ref = diffusers_twin(cfg, seed=7)
    vae, vae_ref = vae_pair(WanVAE22, TINY_WAN22_VAE, seed=8)
    steps, shift, frames, height, width = 20, 5.0, 5, 64, 96
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(9))
    latents = seeded_noise((1, 48, 2, height // 16, width // 16), seed=13)
    positive, negative = prompt_pair(cfg, seed=10)

    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae_ref, scheduler=parity_scheduler("unipc", shift),
        image_processor=None, image_encoder=None, transformer=model_ref, expand_timesteps=True)
    with torch.no_grad():
        expected = pipe(image=image, prompt_embeds=positive, negative_prompt_embeds=negative,
                        latents=latents, height=height, width=width, num_frames=frames,
                        num_inference_steps=steps, guidance_scale=5.0,
                        output_type="latent").frames

        first = encode_first_frame(lambda px: latent_stats.normalize(vae.encode(px), "2.2"),
                                   image * 2 - 1)
        result = MoESampler(model).sample(
            latents, S.official_unipc(steps, shift),
            WanConditioning(context=positive, negative_context=negative, first_frame=first),
            cfg_high=5.0)
    assert result.steps_per_expert == {"high": steps}
    assert torch.equal(result.latent[:, :, :1], first)
    assert max_diff(result.latent, expected) <= TOL


@pytest.mark.parametrize("kind", ["i2v", "flf2v"])
def test_wan21_i2v_and_flf2v_with_clip_match_the_pipeline(kind):
    """Wan 2.1 I2V / FLF2V: concat condition (first, or first and last frame) plus CLIP tokens."""
    cfg = TINY_PRESETS[kind]
    model, model_ref = diffusers_twin(cfg, seed=14)
    vae, vae_ref = vae_pair(WanVAE21, TINY_WAN21_VAE, seed=15)
    steps, shift, frames, height, width = 12, 5.0, 9, 32, 32
    g = torch.Generator().manual_seed(16)
    image = torch.rand(1, 3, height, width, generator=g)
    last = torch.rand(1, 3, height, width, generator=g) if kind == "flf2v" else None
    clip_fea = torch.randn(1, cfg.flf_pos_len or 257, cfg.clip_dim, generator=g)
    latents = seeded_noise((1, 16, 3, height // 8, width // 8), seed=17)
    positive, negative = prompt_pair(cfg, seed=18)

    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae_ref, scheduler=parity_scheduler("unipc", shift),
        image_processor=None, image_encoder=None, transformer=model_ref)
    # The CLIP vision tower has its own parity test; here both sides get the same CLIP tokens
    # (diffusers refuses image and image_embeds together, so its encoder step returns them;
    # for FLF2V it returns one row per image and the transformer joins them: 2 × 5 = 10 tokens).
    per_image = clip_fea.reshape(2, -1, cfg.clip_dim) if kind == "flf2v" else clip_fea
    pipe.encode_image = lambda images, device=None: per_image
    with torch.no_grad():
        expected = pipe(image=image, last_image=last,
                        prompt_embeds=positive, negative_prompt_embeds=negative, latents=latents,
                        height=height, width=width, num_frames=frames, num_inference_steps=steps,
                        guidance_scale=5.0, output_type="latent").frames

        def encode(pixels):
            return latent_stats.normalize(vae.encode(pixels), "2.1")

        y = encode_i2v_condition(encode, image * 2 - 1, frames,
                                 None if last is None else last * 2 - 1)
        result = MoESampler(model).sample(
            latents, S.official_unipc(steps, shift),
            WanConditioning(context=positive, negative_context=negative, y=y, clip_fea=clip_fea),
            cfg_high=5.0)
    assert max_diff(result.latent, expected) <= TOL


def _pil_and_tensor(array: np.ndarray):
    """A PIL image for diffusers and the same pixels as a [1, 3, H, W] tensor in [−1, 1] for us."""
    from PIL import Image

    tensor = torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return Image.fromarray(array), tensor * 2 - 1


@pytest.mark.parametrize("mode", ["reference", "control"])
def test_vace_matches_wan_vace_pipeline(mode):
    """VACE R2V (one letterboxed reference, trimmed after sampling) and control video + mask."""
    import dataclasses

    from wanflow.samplers.vace_conditioning import build_vace_context

    cfg = dataclasses.replace(TINY_PRESETS["vace"], vace_in_dim=96)   # 2×16 latent + 64 mask
    model, model_ref = diffusers_twin(cfg, seed=19)
    vae, vae_ref = vae_pair(WanVAE21, TINY_WAN21_VAE, seed=20)
    steps, shift, frames, height, width, strength = 10, 5.0, 5, 32, 48, 0.7
    rng = np.random.default_rng(21)
    kwargs, ours = {}, {}
    if mode == "reference":
        pil, tensor = _pil_and_tensor(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        kwargs["reference_images"] = [pil]
        ours["references"] = [tensor]
    else:
        video = [_pil_and_tensor(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
                 for _ in range(frames)]
        keep = rng.random((frames, height, width)) > 0.5
        masks = [_pil_and_tensor(np.repeat(k[..., None] * 255, 3, axis=2).astype(np.uint8))
                 for k in keep]
        kwargs.update(video=[v[0] for v in video], mask=[m[0] for m in masks])
        ours["video"] = torch.stack([v[1][0] for v in video], dim=1)[None]
        ours["mask"] = torch.stack([(m[1][0, :1] + 1) / 2 for m in masks], dim=1)[None]
    refs = len(ours.get("references", []))
    latents = seeded_noise((1, 16, refs + 2, height // 8, width // 8), seed=22)
    positive, negative = prompt_pair(cfg, seed=23)

    pipe = diffusers.WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae_ref,
                                     scheduler=parity_scheduler("unipc", shift),
                                     transformer=model_ref)
    with torch.no_grad():
        expected = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, latents=latents,
                        height=height, width=width, num_frames=frames, num_inference_steps=steps,
                        guidance_scale=5.0, conditioning_scale=strength, output_type="latent",
                        **kwargs).frames
        expected = expected[:, :, refs:]     # diffusers trims the references only when decoding

        context, trim = build_vace_context(
            lambda px: latent_stats.normalize(vae.encode(px), "2.1"), num_frames=frames,
            height=height, width=width, **ours)
        result = MoESampler(model).sample(
            latents, S.official_unipc(steps, shift),
            WanConditioning(context=positive, negative_context=negative, vace_context=context,
                            vace_strength=strength, vace_trim_frames=trim), cfg_high=5.0)
    assert context.shape == (1, 96, refs + 2, height // 8, width // 8) and trim == refs
    assert result.latent.shape[2] == 2
    assert max_diff(result.latent, expected) <= TOL


def test_ti2v_text_only_matches_wan_pipeline_with_expand_timesteps():
    """TI2V-5B in text-to-video mode: diffusers sends equal per-token timesteps, we send [B]."""
    cfg = TINY_PRESETS["ti2v"]
    model, model_ref = diffusers_twin(cfg, seed=24)
    steps, shift = 12, 5.0
    latents = seeded_noise((1, 48, 2, 4, 6), seed=25)
    positive, negative = prompt_pair(cfg, seed=26)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                 scheduler=parity_scheduler("dpm++", shift),
                                 transformer=model_ref, expand_timesteps=True)
    with torch.no_grad():
        expected = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, latents=latents,
                        height=32, width=48, num_frames=5, num_inference_steps=steps,
                        guidance_scale=5.0, output_type="latent").frames
        result = MoESampler(model).sample(
            latents, S.official_dpmpp(steps, shift),
            WanConditioning(context=positive, negative_context=negative), solver="dpm++",
            cfg_high=5.0)
    assert max_diff(result.latent, expected) <= TOL
