"""Loader nodes: model files from the ComfyUI folders into WANFLOW_ handles.

All reading, format detection and dtype handling lives in model_loaders/; these nodes pick the
file from the right folder, check the name before the run, and report what was detected.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Optional, Union

from ..distributed import fsdp
from ..model_loaders.clip_vision_loader import load_clip_vision
from ..model_loaders.detect import WanVariant
from ..model_loaders.dit_loader import load_dit, peek_dit_variant, reload_dit
from ..model_loaders.parking import DiskBacked
from ..model_loaders.text_encoder_loader import load_text_encoder
from ..model_loaders.vae_loader import load_vae
from ..model_loaders.storage import STORAGE_DTYPES
from ..wan.attention import backend_names, backend_problem
from ..wan.block_swap import format_bytes
from ..wan.compiled_blocks import compile_blocks, compile_problem, compile_requested
from . import comfy_adapter
from .handles import ClipVisionHandle, ModelHandle, TextEncoderHandle
from .types import CLIP_VISION, LOADERS, MODEL, TEXT_ENCODER, VAE

log = logging.getLogger("wanflow")

STORAGE_CHOICES = ["default"] + list(STORAGE_DTYPES)
RAM_CHOICES = ["keep", "reload from disk"]
COMPILE_CHOICES = ["off", "blocks"]


class WanFlowModelLoader:
    DESCRIPTION = ("Load a Wan DiT (official, Comfy-Org, kijai or diffusers files; bf16/fp16/fp8/scaled fp8) and "
                   "detect its variant from the weights.")
    CATEGORY = LOADERS
    RETURN_TYPES = (MODEL, "STRING")
    RETURN_NAMES = ("model", "variant")
    OUTPUT_TOOLTIPS = ("The loaded model.", "What was detected, e.g. 'Wan 2.2 T2V-14B (high-noise expert)'.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model_name": (comfy_adapter.list_models("diffusion_models"), {"tooltip":
                           "DiT file in models/diffusion_models (or models/unet): .safetensors, .pth, or a "
                           "GGUF (Q8_0 to Q3_K, kept quantized in memory). For Wan 2.2 A14B load the "
                           "high-noise and the low-noise file with two loaders."}),
            "storage_dtype": (STORAGE_CHOICES, {"default": "default", "tooltip":
                              "Keep the file's dtypes (default) or convert while loading, e.g. fp8_e4m3fn to halve "
                              "memory of a bf16 file (a GGUF's quantized weights stay as they are). Compute runs in "
                              "bf16/fp16 either way."}),
            "attention": (backend_names(), {"default": "sdpa", "tooltip":
                          "Attention kernel used while sampling with this model. sdpa: PyTorch's, everywhere. "
                          "flash: pip install flash-attn. sage: pip install sageattention (8-bit, slightly "
                          "approximate). sdpa_fp8: FlashAttention 3 on Hopper GPUs (fp8, approximate). The optional "
                          "ones need a CUDA GPU; the run stops before loading if the chosen one cannot run."}),
        }, "optional": {
            "weights_in_ram": (RAM_CHOICES, {"default": "keep", "tooltip":
                               "keep: the weights stay in RAM between uses (fastest). reload from disk: they "
                               "leave RAM whenever this model is not sampling and are read back from the file, so "
                               "the idle Wan 2.2 A14B expert costs no RAM (each switch reads the file again)."}),
            "compile": (COMPILE_CHOICES, {"default": "off", "tooltip":
                        "blocks: torch.compile the transformer blocks (one compiled block serves all). The first "
                        "step at a new size compiles (tens of seconds), later steps run faster; LoRA strength or "
                        "stack changes and expert switches never recompile. Needs a C++ compiler on CPU, "
                        "Triton on CUDA. 'wanflow run --compile' turns it on for every loader."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str, attention: str = "sdpa", compile: str = "off") -> Union[bool, str]:
        """Checked before the run: a safe name of a file that exists, an attention backend and
        compiled blocks that run here."""
        problem = None if attention is None else backend_problem(attention)  # None: fed by a link
        if problem is not None:
            return f"model loader: attention: {problem}"
        problem = _compile_problem(compile)
        if problem is not None:
            return f"model loader: compile: {problem}"
        return comfy_adapter.model_file_verdict("diffusion_models", model_name, "model loader: model_name")

    @classmethod
    def peek_variant(cls, model_name: str) -> WanVariant:
        """The variant from the file header only (the headless runner checks the graph with it)."""
        return peek_dit_variant(comfy_adapter.model_path("diffusion_models", model_name, "model loader: model_name"))

    def load(self, model_name: str, storage_dtype: str, attention: str, weights_in_ram: str = "keep",
             compile: str = "off") -> dict:
        problem = backend_problem(attention)
        if problem is not None:
            raise ValueError(f"model loader: attention: {problem}")
        problem = _compile_problem(compile)
        if problem is not None:
            raise ValueError(f"model loader: compile: {problem}")
        path = comfy_adapter.model_path("diffusion_models", model_name, "model loader: model_name")
        storage = None if storage_dtype == "default" else storage_dtype
        loaded = load_dit(path, storage)
        loaded.model.to(comfy_adapter.offload_device())
        handle = ModelHandle(loaded.model, loaded.variant, attention, loaded.file_format, loaded.path)
        # `wanflow run --gpus N`: each rank keeps 1/N of the weights
        sharded = fsdp.fsdp_active() and shard_loaded(handle, model_name, weights_in_ram)
        if weights_in_ram == "reload from disk" and not sharded:
            handle.parking = DiskBacked(loaded.model, partial(reload_dit, path, storage_dtype=storage), model_name)
            handle.parking.park()
        if compile == "blocks" or compile_requested():
            log.info("model loader: %s: %d blocks compile at the first step", model_name, compile_blocks(loaded.model))
        text = handle.describe()
        for note in loaded.variant.notes:
            log.warning("model loader: %s: %s", model_name, note)
        log.info("model loader: %s -> %s", model_name, text)
        return {"ui": {"text": [text]}, "result": (handle, text)}


def shard_loaded(handle: ModelHandle, model_name: str, weights_in_ram: str) -> bool:
    """Shard a just-loaded DiT across the ranks (FSDP2); its shards go to the compute device.
    False (logged) when it cannot be sharded here: every rank then keeps a whole copy.

    "reload from disk" is ignored: a rank's shards are 1/N of the model and never leave the
    device, so there is nothing left to park on disk."""
    device_type = comfy_adapter.compute_device().type
    problem = fsdp.shard_problem(handle.model, device_type)
    if problem is not None:
        log.warning("model loader: %s is not sharded across the ranks (%s): each rank holds a whole copy",
                    model_name, problem)
        return False
    if weights_in_ram == "reload from disk":
        log.warning("model loader: %s: weights_in_ram 'reload from disk' is ignored: the model is sharded "
                    "across the ranks (FSDP); --no-fsdp keeps whole copies", model_name)
    fsdp.shard_dit(handle.model, device_type=device_type)
    log.info("model loader: %s sharded across %d ranks: %s of weights on this rank", model_name,
             fsdp.world_size(), format_bytes(fsdp.local_bytes(handle.model)))
    return True


def _compile_problem(choice: Optional[str]) -> Optional[str]:
    """Why compiled blocks cannot run on the compute device (None: they can, or compile is off)."""
    if choice is None:  # fed by a link: checked in load()
        return None
    if choice not in COMPILE_CHOICES:
        return f"{choice!r} is not one of {COMPILE_CHOICES}"
    if choice == "off" and not compile_requested():
        return None
    return compile_problem(comfy_adapter.compute_device())


class WanFlowVAELoader:
    DESCRIPTION = "Load a Wan VAE: 2.1 (wan_2.1_vae, for 14B/1.3B models) or 2.2 (wan2.2_vae, for TI2V-5B)."
    CATEGORY = LOADERS
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "vae_name": (comfy_adapter.list_models("vae"), {"tooltip":
                         "VAE file in models/vae: official .pth, ComfyUI safetensors or a diffusers file."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name: str) -> Union[bool, str]:
        return comfy_adapter.model_file_verdict("vae", vae_name, "VAE loader: vae_name")

    def load(self, vae_name: str) -> tuple:
        loaded = load_vae(comfy_adapter.model_path("vae", vae_name, "VAE loader: vae_name"))
        log.info("VAE loader: %s -> Wan %s VAE (%s)", vae_name, loaded.version, loaded.file_format)
        return (loaded.model.to(comfy_adapter.offload_device()),)


class WanFlowTextEncoderLoader:
    DESCRIPTION = ("Load the umT5-XXL text encoder (ComfyUI umt5_xxl_* files with their embedded tokenizer, the "
                   "official .pth, or an HF folder). It can stay on the CPU to save video memory.")
    CATEGORY = LOADERS
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text_encoder_name": (comfy_adapter.list_models("text_encoders"), {"tooltip":
                                  "umT5 file in models/text_encoders (or models/clip), e.g. "
                                  "umt5_xxl_fp8_e4m3fn_scaled.safetensors."}),
            "device": (["default", "cpu"], {"default": "default", "tooltip":
                       "cpu keeps the encoder out of video memory (slower prompts, cached afterwards)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder_name: str) -> Union[bool, str]:
        return comfy_adapter.model_file_verdict("text_encoders", text_encoder_name,
                                                "text encoder loader: text_encoder_name")

    def load(self, text_encoder_name: str, device: str) -> tuple:
        path = comfy_adapter.model_path("text_encoders", text_encoder_name, "text encoder loader: text_encoder_name")
        loaded = load_text_encoder(path)
        log.info("text encoder loader: %s (%s, tokenizer: %s)", text_encoder_name, loaded.file_format,
                 loaded.tokenizer_source)
        model = loaded.model.to(comfy_adapter.offload_device())
        return (TextEncoderHandle(model, loaded.tokenizer, on_cpu=(device == "cpu"), path=loaded.path),)


class WanFlowCLIPVisionLoader:
    DESCRIPTION = "Load the CLIP vision model used by Wan 2.1 I2V and FLF2V (clip_vision_h.safetensors)."
    CATEGORY = LOADERS
    RETURN_TYPES = (CLIP_VISION,)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "clip_vision_name": (comfy_adapter.list_models("clip_vision"), {"tooltip":
                                 "CLIP ViT-H/14 file in models/clip_vision (ComfyUI clip_vision_h or the official "
                                 "open-clip .pth). Wan 2.2 models do not use it."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, clip_vision_name: str) -> Union[bool, str]:
        return comfy_adapter.model_file_verdict("clip_vision", clip_vision_name, "CLIP vision loader: clip_vision_name")

    def load(self, clip_vision_name: str) -> tuple:
        path = comfy_adapter.model_path("clip_vision", clip_vision_name, "CLIP vision loader: clip_vision_name")
        loaded = load_clip_vision(path)
        return (ClipVisionHandle(loaded.model.to(comfy_adapter.offload_device()), loaded.path),)
