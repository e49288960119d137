"""ComfyUI node classes: thin wrappers over wan/, model_loaders/ and samplers/.

Every node lives in the "WanFlow" menu; ``NODE_CLASS_MAPPINGS`` is what ComfyUI reads.
"""
from .save_video import WanFlowSaveVideo

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "WanFlowSaveVideo": WanFlowSaveVideo,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "WanFlowSaveVideo": "WanFlow Save Video",
}
