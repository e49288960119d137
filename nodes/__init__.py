"""ComfyUI node classes: thin wrappers over wan/, model_loaders/ and samplers/.

Every node lives in the "WanFlow" menu; ``NODE_CLASS_MAPPINGS`` is what ComfyUI reads.
"""
from .latent_nodes import WanFlowEmptyVideoLatent
from .save_video import WanFlowSaveVideo
from .vae_nodes import WanFlowVAEDecode, WanFlowVAEEncode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "WanFlowEmptyVideoLatent": WanFlowEmptyVideoLatent,
    "WanFlowVAEDecode": WanFlowVAEDecode,
    "WanFlowVAEEncode": WanFlowVAEEncode,
    "WanFlowSaveVideo": WanFlowSaveVideo,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "WanFlowEmptyVideoLatent": "WanFlow Empty Video Latent",
    "WanFlowVAEDecode": "WanFlow VAE Decode",
    "WanFlowVAEEncode": "WanFlow VAE Encode",
    "WanFlowSaveVideo": "WanFlow Save Video",
}
