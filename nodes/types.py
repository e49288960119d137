"""Names shared by every node: the menu category and the socket types that cross between nodes.

Our own types carry the ``WANFLOW_`` prefix so they never connect to another pack's sockets by
accident; ``IMAGE``, ``MASK``, ``LATENT`` and ``INT`` are ComfyUI's standard types:
``IMAGE`` is ``[frames, height, width, 3]`` float 0..1 and ``LATENT`` is
``{"samples": raw VAE latents [batch, channels, frames, height, width]}``.
"""
CATEGORY = "WanFlow"
LOADERS = f"{CATEGORY}/loaders"
CONDITIONING_MENU = f"{CATEGORY}/conditioning"
SAMPLING = f"{CATEGORY}/sampling"
VIDEO = f"{CATEGORY}/video"

MODEL = "WANFLOW_MODEL"
VAE = "WANFLOW_VAE"
TEXT_ENCODER = "WANFLOW_TEXT_ENCODER"
CLIP_VISION = "WANFLOW_CLIP_VISION"
CONDITIONING = "WANFLOW_CONDITIONING"
LORA_STACK = "WANFLOW_LORA_STACK"

# ComfyUI core types some sockets also take (nodes/core_bridge.py converts them)
CORE_MODEL = "MODEL"
CORE_CONDITIONING = "CONDITIONING"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
MODEL_OR_CORE = f"{MODEL},{CORE_MODEL}"

IMAGE = "IMAGE"
MASK = "MASK"
LATENT = "LATENT"
