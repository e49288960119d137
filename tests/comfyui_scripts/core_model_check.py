"""Core MODEL and CONDITIONING through our MoE sampler, against core KSamplerAdvanced two-stage
sampling on the same files (Euler, simple schedule); and our DiT on an unpadded core context
against core's Wan model."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start  # noqa: E402

pack_dir, models_dir = sys.argv[1:3]
start(pack_dir)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.sd  # noqa: E402
from comfy_extras.nodes_model_advanced import ModelSamplingSD3  # noqa: E402
from nodes import KSamplerAdvanced, LoraLoaderModelOnly  # noqa: E402  (ComfyUI's own nodes.py)
from wanflow_pack.model_loaders.dit_loader import load_dit  # noqa: E402
from wanflow_pack.nodes import NODE_CLASS_MAPPINGS as N  # noqa: E402
from wanflow_pack.samplers.schedules import build_schedule  # noqa: E402
from wanflow_pack.wan.dit import WanDiT  # noqa: E402
from wanflow_pack.wan.dit_config import WanDiTConfig  # noqa: E402

STEPS, SWITCH, SHIFT, SEED, CFG_HIGH, CFG_LOW = 6, 2, 8.0, 7, 4.0, 3.0
# core ComfyUI builds Wan with umT5-XXL's text width, so the tiny experts need text_dim 4096
CONFIG = WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=4096, model_type="t2v")


def write_expert(name: str, seed: int) -> str:
    path = os.path.join(models_dir, "diffusion_models", name)
    generator = torch.Generator().manual_seed(seed)
    model = WanDiT(CONFIG)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def write_lora(name: str) -> str:
    generator = torch.Generator().manual_seed(3)
    tensors = {"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.randn(4, 128, generator=generator) * 0.3,
               "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.randn(64, 4, generator=generator) * 0.3}
    save_file(tensors, os.path.join(models_dir, "loras", name))
    return name


high_path = write_expert("wanflow_core_check_high_noise.safetensors", 1)
low_path = write_expert("wanflow_core_check_low_noise.safetensors", 2)
lora = write_lora("wanflow_core_check_lora.safetensors")


def core_model(path: str):
    return ModelSamplingSD3().patch(comfy.sd.load_diffusion_model(path), SHIFT)[0]


high, low = core_model(high_path), core_model(low_path)
(high_lora,) = LoraLoaderModelOnly().load_lora_model_only(high, lora, 1.0)
g = torch.Generator().manual_seed(0)
# what CLIPTextEncode with a wan CLIP gives: unpadded umT5 states, each prompt at its own length
positive = [[torch.randn(1, 77, 4096, generator=g), {}]]
negative = [[torch.randn(1, 30, 4096, generator=g), {}]]
latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}


def core_two_stage(model_high) -> torch.Tensor:
    sampler = KSamplerAdvanced()
    (first,) = sampler.sample(model_high, "enable", SEED, STEPS, CFG_HIGH, "euler", "simple", positive, negative,
                              latent, start_at_step=0, end_at_step=SWITCH, return_with_leftover_noise="enable")
    (second,) = sampler.sample(low, "disable", SEED, STEPS, CFG_LOW, "euler", "simple", positive, negative,
                               first, start_at_step=SWITCH, end_at_step=10000, return_with_leftover_noise="disable")
    return second["samples"].float()


def ours(model_high) -> tuple[torch.Tensor, str]:
    (cond,) = N["WanFlowConditioningFromCore"]().convert(positive, negative)
    timesteps = build_schedule("simple", STEPS, SHIFT, 1.0).timesteps
    boundary = float(timesteps[SWITCH - 1] + timesteps[SWITCH]) / 2000  # switch exactly before step SWITCH
    out = N["WanFlowMoESampler"]().sample(model_high, cond, latent, SEED, STEPS, SHIFT, "euler", "simple",
                                          CFG_HIGH, CFG_LOW, boundary, 1.0, model_low=low)
    return out["result"][0]["samples"].float(), out["ui"]["text"][0]


# first, before any run patches the LoRA into the shared weights: our DiT on the same file, with
# core's unpadded context and with the official 512 padding
mine = load_dit(high_path).model.float()
x = torch.randn(1, 16, 2, 4, 4, generator=g)
t = torch.tensor([600.0])
context = positive[0][0]
with torch.no_grad():
    core_out = high.model.diffusion_model(x, t, context=context).float()
    unpadded = mine(x, t, context, pad_context=False)
    padded = mine(x, t, context)
    padded_context = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[1]))
    core_padded = high.model.diffusion_model(x, t, context=padded_context).float()

core, core_lora = core_two_stage(high), core_two_stage(high_lora)
(ours_plain, note), (ours_lora, _) = ours(high), ours(high_lora)

print(json.dumps({
    "note": note, "scale": float(core.abs().max()),
    "sampler_max_diff": float((ours_plain - core).abs().max()),
    "sampler_lora_max_diff": float((ours_lora - core_lora).abs().max()),
    "lora_changes_result": float((core_lora - core).abs().max()),
    "dit_unpadded_max_diff": float((unpadded - core_out).abs().max()),
    "dit_padded_max_diff": float((padded - core_out).abs().max()),
    "dit_scale": float(core_out.abs().max()),
    "dit_both_padded_max_diff": float((padded - core_padded).abs().max()),
}))
