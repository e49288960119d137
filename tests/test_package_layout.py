"""The pack must import both ways users get it: as the pip package and as a ComfyUI folder."""
import ast
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE_LAYERS = ("wan", "model_loaders", "samplers")
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes"}


def test_pip_package_imports():
    import wanflow

    assert isinstance(wanflow.NODE_CLASS_MAPPINGS, dict)


def test_loads_by_folder_path_like_comfyui():
    """ComfyUI imports a pack with spec_from_file_location under an arbitrary module name."""
    name = "custom_nodes_x_comfyui-wanflow"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert module.NODE_CLASS_MAPPINGS is not None
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def _absolute_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_layers_never_import_comfyui_or_nodes():
    for layer in CORE_LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            bad = _absolute_imports(path) & COMFY_MODULES
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
            text = path.read_text()
            assert "from ..nodes" not in text and "from ...nodes" not in text, path


def test_pack_imports_are_relative():
    """Inside ComfyUI the pack is not importable by name, so no module may import `wanflow`."""
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", "bench", ".venv", "build"} or "site-packages" in rel.parts:
            continue
        assert "wanflow" not in _absolute_imports(path), f"{rel} imports wanflow absolutely"
