"""Write trained nano models in the layouts of the real Wan files, so the normal loaders read them.

* DiTs: Comfy-Org repackaged layout (``model.diffusion_model.`` + official keys), fp16;
* VAE: official keys (as ComfyUI's ``wan_2.1_vae.safetensors``), fp32;
* text encoder: HF umT5 keys with the tokenizer embedded as ``spiece_model`` (ComfyUI's layout);
* LoRAs: ComfyUI LoRA format (``diffusion_model.<module>.lora_A/B.weight`` + ``.alpha``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from ..wan.dit import WanDiT
from ..wan.vae2_1 import WanVAE21

DIT_PREFIX = "model.diffusion_model."
DIT_DTYPE = torch.float16


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write safetensors atomically (a stopped run never leaves half a model file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp),
              metadata={"format": "pt", **(metadata or {})})
    tmp.replace(path)


def save_dit(model: WanDiT, path: Path, note: str) -> None:
    save_tensors(path, {DIT_PREFIX + k: v.to(DIT_DTYPE) for k, v in model.state_dict().items()},
                 {"wanflow_nano": note})


def save_vae(model: WanVAE21, path: Path) -> None:
    save_tensors(path, model.state_dict(), {"wanflow_nano": "vae"})
