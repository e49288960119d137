"""Our models in ComfyUI's model management: loaded through it, unloaded by another node's
free_memory, and partially loaded (--lowvram style) with unchanged output, LoRA included."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start  # noqa: E402

pack_dir, = sys.argv[1:2]
start(pack_dir)
import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
from wanflow_pack.nodes import NODE_CLASS_MAPPINGS as N  # noqa: E402
from wanflow_pack.nodes import comfy_models  # noqa: E402
from wanflow_pack.runner.tiny_models import TinyFiles  # noqa: E402

files = TinyFiles()
(high, _), (low, _) = (N["WanFlowModelLoader"]().load(name, "default", "sdpa")["result"]
                       for name in (files.t2v_high, files.t2v_low))
(vae,) = N["WanFlowVAELoader"]().load(files.vae21)
(text_encoder,) = N["WanFlowTextEncoderLoader"]().load(files.umt5, "default")
(cond,) = N["WanFlowTextEncode"]().encode(text_encoder, "a red fox runs through snow", "")
latent = N["WanFlowEmptyVideoLatent"]().create(vae, 32, 32, 5, 1)
latent = latent["result"][0] if isinstance(latent, dict) else latent[0]
sampled = N["WanFlowMoESampler"]().sample(high, cond, latent, 0, 4, 5.0, "euler", "simple", 3.0, 3.0, 0.0, 1.0,
                                          model_low=low)["result"][0]
(frames,) = N["WanFlowVAEDecode"]().decode(sampled, vae, False, 256, 32)

modules = {"high": high.model, "low": low.model, "vae": vae, "text_encoder": text_encoder.encoder}
report = {"loaded_after_run": {k: comfy_models.is_loaded(m) for k, m in modules.items()},
          "frames": list(frames.shape)}
mm.free_memory(1e30, torch.device("cpu"))  # what another node does when it needs the room
report["loaded_after_free_memory"] = {k: comfy_models.is_loaded(m) for k, m in modules.items()}
report["weight_memory_after_free_memory"] = {k: int(m.model_loaded_weight_memory) for k, m in modules.items()}

# partial load: as under --lowvram, ComfyUI leaves layers in RAM and marks them for casting
model = high.model
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 16, 2, 4, 4, generator=g)
context = torch.randn(1, 12, model.config.text_dim, generator=g)
t = torch.tensor([700.0])
from wanflow_pack.nodes.lora_nodes import LoraChoice, build_lora_stack  # noqa: E402

stack = build_lora_stack((LoraChoice(files.lora_high, None, 1.0, 1.0),))
with torch.no_grad():
    plain = model(x, t, context)
    applied = stack.apply(model, "high")
    with_lora = model(x, t, context)
    patcher = comfy_models.patcher_for(model, "diffusion")
    patcher.patch_model(torch.device("cpu"), lowvram_model_memory=1)  # 1 byte: every layer stays behind
    cast = sum(1 for m in model.modules() if getattr(m, "comfy_cast_weights", False))
    partial_with_lora = model(x, t, context)
    patcher.unpatch_model(torch.device("cpu"))
    applied.remove()
    partial_plain = model(x, t, context)
report.update({"partial_lowvram": bool(cast), "cast_layers": cast,
               "lora_changes_output": float((with_lora - plain).abs().max()),
               "partial_lora_diff": float((partial_with_lora - with_lora).abs().max()),
               "partial_plain_diff": float((partial_plain - plain).abs().max())})
print(json.dumps(report))
