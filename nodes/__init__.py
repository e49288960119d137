"""ComfyUI node classes: thin wrappers over wan/, model_loaders/ and samplers/.

Every node lives in the "WanFlow" menu; ``NODE_CLASS_MAPPINGS`` is what ComfyUI reads.
"""
from . import comfy_adapter
from .core_bridge_nodes import WanFlowConditioningFromCore, WanFlowConditioningToCore
from .image_to_video import WanFlowImageToVideo
from .latent_nodes import WanFlowEmptyVideoLatent
from .loader_nodes import WanFlowCLIPVisionLoader, WanFlowModelLoader, WanFlowTextEncoderLoader, WanFlowVAELoader
from .lora_nodes import WanFlowLoraSelect
from .reference_to_video import WanFlowReferenceToVideo
from .sampler_nodes import WanFlowMoESampler
from .subject_to_video import WanFlowSubjectToVideo
from .text_nodes import WanFlowTextEncode
from .train_nodes import WanFlowTrainLora
from .save_video import WanFlowSaveVideo
from .vae_nodes import WanFlowVAEDecode, WanFlowVAEEncode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "WanFlowModelLoader": WanFlowModelLoader,
    "WanFlowVAELoader": WanFlowVAELoader,
    "WanFlowTextEncoderLoader": WanFlowTextEncoderLoader,
    "WanFlowCLIPVisionLoader": WanFlowCLIPVisionLoader,
    "WanFlowTextEncode": WanFlowTextEncode,
    "WanFlowLoraSelect": WanFlowLoraSelect,
    "WanFlowEmptyVideoLatent": WanFlowEmptyVideoLatent,
    "WanFlowImageToVideo": WanFlowImageToVideo,
    "WanFlowReferenceToVideo": WanFlowReferenceToVideo,
    "WanFlowSubjectToVideo": WanFlowSubjectToVideo,
    "WanFlowMoESampler": WanFlowMoESampler,
    "WanFlowVAEDecode": WanFlowVAEDecode,
    "WanFlowVAEEncode": WanFlowVAEEncode,
    "WanFlowSaveVideo": WanFlowSaveVideo,
    "WanFlowTrainLora": WanFlowTrainLora,
    "WanFlowConditioningFromCore": WanFlowConditioningFromCore,
    "WanFlowConditioningToCore": WanFlowConditioningToCore,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "WanFlowModelLoader": "WanFlow Model Loader",
    "WanFlowVAELoader": "WanFlow VAE Loader",
    "WanFlowTextEncoderLoader": "WanFlow Text Encoder Loader",
    "WanFlowCLIPVisionLoader": "WanFlow CLIP Vision Loader",
    "WanFlowTextEncode": "WanFlow Text Encode",
    "WanFlowLoraSelect": "WanFlow LoRA Select",
    "WanFlowEmptyVideoLatent": "WanFlow Empty Video Latent",
    "WanFlowImageToVideo": "WanFlow Image to Video",
    "WanFlowReferenceToVideo": "WanFlow Reference to Video (VACE)",
    "WanFlowSubjectToVideo": "WanFlow Subject to Video (Phantom)",
    "WanFlowMoESampler": "WanFlow MoE Sampler",
    "WanFlowVAEDecode": "WanFlow VAE Decode",
    "WanFlowVAEEncode": "WanFlow VAE Encode",
    "WanFlowSaveVideo": "WanFlow Save Video",
    "WanFlowTrainLora": "WanFlow Train LoRA",
    "WanFlowConditioningFromCore": "WanFlow Conditioning from Core",
    "WanFlowConditioningToCore": "WanFlow Conditioning to Core",
}

comfy_adapter.register_pack_models()  # the WanNano files appear in ComfyUI's model lists
