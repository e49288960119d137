"""WanFlow: ComfyUI nodes for Wan 2.1/2.2 video generation.

ComfyUI imports this folder by path (module named after the folder); pip installs it as the
package ``wanflow``. Everything inside the pack is imported relatively so both work.

The node mappings load on first access (PEP 562 ``__getattr__``): ComfyUI reads them right after
importing the pack, while the ``wanflow`` command can start (and handle Ctrl-C) before torch and
the nodes are imported.
"""
WEB_DIRECTORY = "./web"  # frontend extension: status text on nodes, "auto" on the sampler's boundary at 0

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def __getattr__(name: str):
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        if not __package__:  # imported as a bare file (e.g. pytest in a checkout folder): no nodes
            return {}
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
