"""Core VAEEncode/VAEDecode against WanFlow's on one VAE file: LATENT is raw mu in both."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start  # noqa: E402

vae_path, pack_dir = sys.argv[1:3]
start(pack_dir)
import torch  # noqa: E402

import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from wanflow_pack.model_loaders.vae_loader import load_vae  # noqa: E402
from wanflow_pack.nodes.vae_nodes import WanFlowVAEDecode, WanFlowVAEEncode  # noqa: E402

core = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
ours = load_vae(vae_path).model
images = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
core_latent = core.encode(images)
(our_latent,) = WanFlowVAEEncode().encode(images, ours)
latent = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
core_frames = core.decode(latent).reshape(-1, 32, 32, 3)
(our_frames,) = WanFlowVAEDecode().decode({"samples": latent}, ours, False, 32, 8)
(our_decoded_core,) = WanFlowVAEDecode().decode({"samples": core_latent}, ours, False, 32, 8)
core_decoded_core = core.decode(core_latent).reshape(-1, 32, 32, 3)
print(json.dumps({
    "core_latent_shape": list(core_latent.shape), "our_latent_shape": list(our_latent["samples"].shape),
    "encode_max_diff": float((core_latent.detach().float() - our_latent["samples"].float()).abs().max()),
    "latent_scale": float(core_latent.abs().max()),
    "core_frames_shape": list(core_frames.shape), "our_frames_shape": list(our_frames.shape),
    "decode_max_diff": float((core_frames.float() - our_frames.float()).abs().max()),
    "core_latent_through_our_decode_max_diff": float((our_decoded_core - core_decoded_core).abs().max()),
}))
