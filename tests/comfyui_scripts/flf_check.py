"""Core WanFirstLastFrameToVideo / WanFunInpaintToVideo against WanFlow Image to Video.

One VAE file and one tiny Fun-InP model serve both sides: ``a14b`` is a Wan 2.2 I2V-architecture
expert (36 input channels) with the Wan 2.1 VAE, ``5b`` a Fun-5B-InP-architecture model (100 input
channels) with the Wan 2.2 VAE. For a start image, an end image, both, and several start and end
frames, the condition core's Wan model concatenates to the noise (``WAN21.concat_cond``:
``1 - concat_mask``, then the normalised ``concat_latent_image``) is compared with the ``y`` our
node builds. Images are given at the video size, so neither side resizes them.

Usage: flf_check.py VAE_FILE PACK_DIR {a14b,5b}
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start  # noqa: E402

vae_path, pack_dir, kind = sys.argv[1:4]
start(pack_dir)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
from comfy_extras.nodes_wan import WanFirstLastFrameToVideo, WanFunInpaintToVideo  # noqa: E402
from wanflow_pack.model_loaders.dit_loader import load_dit  # noqa: E402
from wanflow_pack.model_loaders.vae_loader import load_vae  # noqa: E402
from wanflow_pack.nodes.handles import ModelHandle  # noqa: E402
from wanflow_pack.nodes.image_to_video import WanFlowImageToVideo  # noqa: E402
from wanflow_pack.samplers.conditioning import WanConditioning  # noqa: E402
from wanflow_pack.wan.dit import WanDiT  # noqa: E402
from wanflow_pack.wan.dit_config import WanDiTConfig  # noqa: E402

WIDTH = HEIGHT = 32
LENGTH = 9  # 3 latent frames: start, a free middle one, end
CHANNELS, SCALE, FILE_NAME = {"a14b": (16, 8, "wanflow_check_wan2.2_fun_inpaint_high_noise_14B.safetensors"),
                              "5b": (48, 16, "wanflow_check_wan2.2_fun_inpaint_5B.safetensors")}[kind]
# core ComfyUI builds Wan with umT5-XXL's text width, so the tiny model needs text_dim 4096
CONFIG = WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, in_dim=2 * CHANNELS + 4,
                      out_dim=CHANNELS, text_dim=4096, model_type="i2v")

folder = tempfile.mkdtemp()
expert_path = os.path.join(folder, FILE_NAME)
torch.manual_seed(0)
save_file({"model.diffusion_model." + k: v.contiguous() for k, v in WanDiT(CONFIG).state_dict().items()},
          expert_path)
core_model = comfy.sd.load_diffusion_model(expert_path)
loaded = load_dit(expert_path)
handle = ModelHandle(loaded.model, loaded.variant)

core_vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
our_vae = load_vae(vae_path, torch.float32).model  # core computes a VAE in float32 on the CPU
g = torch.Generator().manual_seed(0)
images = {"start": torch.rand(1, HEIGHT, WIDTH, 3, generator=g), "end": torch.rand(1, HEIGHT, WIDTH, 3, generator=g)}
frames = {"start": torch.rand(6, HEIGHT, WIDTH, 3, generator=g), "end": torch.rand(2, HEIGHT, WIDTH, 3, generator=g)}
positive = [[torch.zeros(1, 8, 4096), {}]]
negative = [[torch.zeros(1, 8, 4096), {}]]
noise = torch.zeros(1, CHANNELS, (LENGTH - 1) // 4 + 1, HEIGHT // SCALE, WIDTH // SCALE)


def core_condition(node, given: dict) -> torch.Tensor:
    """What core's Wan model concatenates to the noise for this node's positive conditioning."""
    kwargs = {f"{k}_image": v for k, v in given.items()}
    out = node.execute(positive, negative, core_vae, WIDTH, HEIGHT, LENGTH, 1, **kwargs)
    cond = out.result[0][0][1]
    assert out.result[1][0][1]["concat_mask"] is cond["concat_mask"]  # negative gets the same
    return core_model.model.concat_cond(noise=noise, device=torch.device("cpu"),
                                        concat_latent_image=cond["concat_latent_image"],
                                        concat_mask=cond["concat_mask"]).float()


def our_condition(given: dict) -> torch.Tensor:
    text = WanConditioning(context=torch.zeros(1, 8, 4096))
    out = WanFlowImageToVideo().build(handle, text, our_vae, given.get("start"), WIDTH, HEIGHT, LENGTH,
                                      end_image=given.get("end"))
    return out["result"][0].y.float()


torch.set_grad_enabled(False)
report = {"variant": loaded.variant.name, "cases": {}}
for case in ("start", "end", "start+end", "6 starts+2 ends"):
    given = ({name: images[name] for name in case.split("+")} if case[0] != "6"
             else dict(frames))
    ours = our_condition(given)
    for node in (WanFirstLastFrameToVideo, WanFunInpaintToVideo):
        core = core_condition(node, given)
        report["cases"][f"{node.__name__}:{case}"] = {
            "core_shape": list(core.shape), "our_shape": list(ours.shape),
            "mask_max_diff": float((core[:, :4] - ours[:, :4]).abs().max()),
            "latent_max_diff": float((core[:, 4:] - ours[:, 4:]).abs().max()),
            "latent_scale": float(core[:, 4:].abs().max()),
            "known_latent_frames": [int(v) for v in core[0, :4].amax(dim=(0, 2, 3)).tolist()],
            "known_slots": [[int(v) for v in row] for row in core[0, :4, :, 0, 0].T.tolist()],
        }
print(json.dumps(report))
