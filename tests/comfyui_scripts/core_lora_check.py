"""Core LoraLoaderModelOnly on a core Wan model with a LoRA file: which weights it patched, how."""
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_in_comfyui import start_comfyui  # noqa: E402

model_path, lora_path = sys.argv[1:3]
start_comfyui()
import torch  # noqa: E402

import comfy.sd  # noqa: E402
from nodes import LoraLoaderModelOnly  # noqa: E402  (ComfyUI's own nodes.py)

unmatched = []


class Catch(logging.Handler):
    def emit(self, record):
        if "lora key not loaded" in record.getMessage():
            unmatched.append(record.getMessage())


logging.getLogger().addHandler(Catch())
model = comfy.sd.load_diffusion_model(model_path)
(patched,) = LoraLoaderModelOnly().load_lora_model_only(model, os.path.basename(lora_path), 1.0)
before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
patched.patch_model()
after = patched.model.diffusion_model.state_dict()
changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
key = "blocks.0.self_attn.q.weight"
print(json.dumps({"unmatched": unmatched, "changed": changed, "patches": len(patched.patches),
                  "delta": (after[key].float() - before[key].float()).tolist()}))
