"""WanFlow: ComfyUI nodes for Wan 2.1/2.2 video generation.

ComfyUI imports this folder by path (module named after the folder); pip installs it as the
package ``wanflow``. Everything inside the pack is imported relatively so both work.
"""
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported as a bare file (e.g. pytest in a checkout folder such as comfyui-wanflow): no nodes
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"  # frontend extension: the model loader shows the variant it detected

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
