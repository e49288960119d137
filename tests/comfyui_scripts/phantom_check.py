"""Phantom subject-to-video against core: WanPhantomSubjectToVideo's three conditionings and
DualCFGGuider ("regular") on a tiny Wan DiT file and one VAE file, against WanFlow Subject to Video
and our MoE sampler (Euler, simple schedule), with core's MODEL and with our DiT from the same file."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start  # noqa: E402

pack_dir, models_dir, vae_path = sys.argv[1:4]
start(pack_dir)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.latent_formats  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from comfy_extras.nodes_custom_sampler import Guider_DualCFG, Noise_RandomNoise  # noqa: E402
from comfy_extras.nodes_model_advanced import ModelSamplingSD3  # noqa: E402
from comfy_extras.nodes_wan import WanPhantomSubjectToVideo  # noqa: E402
from wanflow_pack.model_loaders.dit_loader import load_dit  # noqa: E402
from wanflow_pack.model_loaders.vae_loader import load_vae  # noqa: E402
from wanflow_pack.nodes import NODE_CLASS_MAPPINGS as N  # noqa: E402
from wanflow_pack.nodes.handles import ModelHandle  # noqa: E402
from wanflow_pack.wan.dit import WanDiT  # noqa: E402
from wanflow_pack.wan.dit_config import WanDiTConfig  # noqa: E402
from wanflow_pack.wan.latent_stats import WAN21  # noqa: E402

torch.set_grad_enabled(False)  # as ComfyUI runs nodes
SHIFT, SEED, CFG_TEXT, CFG_IMAGE = 5.0, 11, 7.5, 5.0
WIDTH, HEIGHT, LENGTH = 32, 32, 5
# core ComfyUI builds Wan with umT5-XXL's text width, so the tiny DiT needs text_dim 4096
CONFIG = WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=4096, model_type="t2v")

path = os.path.join(models_dir, "diffusion_models", "wanflow_phantom_check_t2v.safetensors")
generator = torch.Generator().manual_seed(1)
model = WanDiT(CONFIG)
with torch.no_grad():
    for tensor in model.state_dict().values():
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
save_file({"model.diffusion_model." + k: v.contiguous() for k, v in model.state_dict().items()}, path)

core_model = ModelSamplingSD3().patch(comfy.sd.load_diffusion_model(path), SHIFT)[0]
core_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
our_vae = load_vae(vae_path).model
loaded = load_dit(path)
our_model = ModelHandle(loaded.model.float(), loaded.variant)

g = torch.Generator().manual_seed(0)
positive = [[torch.randn(1, 77, 4096, generator=g), {}]]
negative = [[torch.randn(1, 30, 4096, generator=g), {}]]
# two subject pictures of another aspect (ComfyUI crops them to cover the frame)
images = torch.rand(2, 48, 64, 3, generator=g)

core_pos, core_neg_text, core_neg_img_text, core_latent = WanPhantomSubjectToVideo.execute(
    positive, negative, core_vae, WIDTH, HEIGHT, LENGTH, 1, images).result
(text,) = N["WanFlowConditioningFromCore"]().convert(positive, negative)
cond, latent = N["WanFlowSubjectToVideo"]().build(text, our_vae, images, WIDTH, HEIGHT, LENGTH, CFG_IMAGE,
                                                  "crop")["result"]
core_subjects = core_pos[0][1]["time_dim_concat"].float()
ours_raw = WAN21.denormalize(cond.subjects.float())
zero_in = core_model.model.process_latent_in(core_neg_img_text[0][1]["time_dim_concat"].float())


def core_sample(steps: int) -> torch.Tensor:
    guider = Guider_DualCFG(core_model)
    guider.set_conds(core_pos, core_neg_text, core_neg_img_text)
    guider.set_cfg(CFG_TEXT, CFG_IMAGE)
    sigmas = comfy.samplers.calculate_sigmas(core_model.get_model_object("model_sampling"), "simple", steps)
    start_latent = comfy.sample.fix_empty_latent_channels(core_model, core_latent["samples"])
    noise = Noise_RandomNoise(SEED).generate_noise({"samples": start_latent})
    out = guider.sample(noise, start_latent, comfy.samplers.sampler_object("euler"), sigmas,
                        disable_pbar=True, seed=SEED)
    return out.float()


def our_sample(handle, steps: int) -> torch.Tensor:
    out = N["WanFlowMoESampler"]().sample(handle, cond, latent, SEED, steps, SHIFT, "euler", "simple",
                                          CFG_TEXT, CFG_TEXT, 0.0, 1.0)
    return out["result"][0]["samples"].float()


report = {
    "core_subjects_shape": list(core_subjects.shape), "our_subjects_shape": list(cond.subjects.shape),
    "subjects_max_diff": float((ours_raw - core_subjects).abs().max()),
    "subjects_scale": float(core_subjects.abs().max()),
    "core_zero_subjects_max": float(zero_in.abs().max()),
    "core_latent_shape": list(core_latent["samples"].shape), "our_latent_shape": list(latent["samples"].shape),
}
for steps in (1, 3):
    core = core_sample(steps)
    report[f"scale_{steps}"] = float(core.abs().max())
    report[f"core_model_max_diff_{steps}"] = float((our_sample(core_model, steps) - core).abs().max())
    report[f"our_dit_max_diff_{steps}"] = float((our_sample(our_model, steps) - core).abs().max())
    report[f"result_shape_{steps}"] = list(core.shape)
print(json.dumps(report))
