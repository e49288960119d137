"""The pack must import both ways users get it: as the pip package and as a ComfyUI folder."""
import ast
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE_LAYERS = ("wan", "model_loaders", "samplers", "distributed")
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


def test_registry_metadata_and_readme_install_agree():
    """The Comfy Registry fields (docs.comfy.org/registry/specifications) and the README's three
    install routes name the same node id, repository and minimum ComfyUI version."""
    import re

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = meta["project"], meta["tool"]["comfy"]
    node_id, repository = project["name"], project["urls"]["Repository"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", node_id) and len(node_id) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and isinstance(comfy.get("includes", []), list)
    minimum = re.fullmatch(r">=(\d+\.\d+\.\d+)", comfy["requires-comfyui"]).group(1)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install into ComfyUI"):]
    install = install[:install.index("\n## ", 1)]
    assert f"comfy node install {node_id}" in install and f"`{node_id}`" in install
    assert f"git clone {repository} {node_id}" in install
    assert f"ComfyUI {minimum} or newer" in install
    assert comfy["DisplayName"] in install and "Custom Nodes" in install  # ComfyUI-Manager's search
