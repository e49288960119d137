"""ComfyUI node classes: thin wrappers over wan/, model_loaders/ and samplers/."""
NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
