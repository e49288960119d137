"""Start ComfyUI's modules in this process (headless, CPU) and import the pack as ComfyUI does.

Run the check scripts beside this file with ComfyUI's venv, from the ComfyUI folder; each one
calls :func:`start` (or :func:`start_comfyui` when it needs no pack) first and prints one JSON
line for the test to read.
"""
import importlib.util
import sys


def start_comfyui(extra_args: tuple[str, ...] = ()) -> None:
    """ComfyUI's options (``--cpu``), model management and folders."""
    sys.argv = [sys.argv[0], "--cpu", *extra_args]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.model_management  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import folder_paths  # noqa: F401


def start(pack_dir: str, extra_args: tuple[str, ...] = ()):
    """ComfyUI started, then the pack imported as the module ``wanflow_pack`` (returned)."""
    start_comfyui(extra_args)
    spec = importlib.util.spec_from_file_location("wanflow_pack", f"{pack_dir}/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["wanflow_pack"] = pack
    spec.loader.exec_module(pack)
    return pack
