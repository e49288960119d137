"""The pack inside a real ComfyUI server (headless, CPU), driven by the shared harness.

Runs only when ``COMFYUI_PATH`` points to a ComfyUI git checkout (bare or not); see
docs/comfyui-check.md. ``COMFYUI_HARNESS`` is the harness folder (default
/work/shared/comfyui-harness); ``COMFYUI_WORKDIR`` keeps the built ComfyUI + venv between runs
(default: a fresh temporary folder, which takes minutes to build).
"""
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_NAMES = [p.stem for p in (ROOT / "workflows").glob("*.json")]
PACK_NAME = "comfyui-wanflow"
HARNESS = Path(os.environ.get("COMFYUI_HARNESS", "/work/shared/comfyui-harness"))

pytestmark = pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"),
                                reason="set COMFYUI_PATH to a ComfyUI checkout to run the real-ComfyUI check")


def _run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (HARNESS / "comfy_env.sh").exists():
        pytest.skip(f"ComfyUI harness not found at {HARNESS} (set COMFYUI_HARNESS)")
    work = Path(os.environ.get("COMFYUI_WORKDIR") or tmp_path_factory.mktemp("comfyui"))
    env = _run([HARNESS / "comfy_env.sh", os.environ["COMFYUI_PATH"], work], timeout=3600)
    assert env.returncode == 0, env.stderr[-3000:]
    from wanflow.runner.demo import write_input_images
    from wanflow.runner.tiny_models import write_tiny_models

    write_tiny_models(work / "ComfyUI" / "models")  # tiny files next to whatever else is there
    write_input_images(work / "ComfyUI" / "input")
    serve = _run([HARNESS / "comfy_serve.sh", work, ROOT], timeout=600,
                 env={**os.environ, "COMFY_PACK_NAME": PACK_NAME})
    url = serve.stdout.strip().splitlines()[-1] if serve.stdout.strip() else ""
    try:
        assert serve.returncode == 0, f"pack failed to import or server did not start:\n{serve.stderr[-3000:]}"
        yield {"url": url, "work": work}
    finally:
        _run([HARNESS / "comfy_stop.sh", work], timeout=120)


def test_object_info_lists_every_node(server):
    from wanflow.nodes import NODE_CLASS_MAPPINGS

    with urllib.request.urlopen(server["url"] + "/object_info", timeout=120) as response:
        info = json.loads(response.read())
    ours = {name for name, entry in info.items() if entry.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert ours == set(NODE_CLASS_MAPPINGS)
    for name in ours:
        assert info[name]["category"].startswith("WanFlow")


def test_check_pack_and_templates(server):
    args = [HARNESS / "check_pack.py", "--server", server["url"], "--pack-prefix", PACK_NAME]
    if any((ROOT / "workflows").glob("*.json")):
        args.append("--require-templates")
    result = _run(args, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(TEMPLATE_NAMES))
def test_template_executes_on_tiny_models(server, name):
    """The template, converted to an API prompt against /object_info, runs in ComfyUI and saves a video."""
    from wanflow.runner.demo import TINY_OVERRIDES

    sets = [arg for item in TINY_OVERRIDES[name] for arg in ("--set", item)]
    result = _run([HARNESS / "run_workflow.py", "--server", server["url"], ROOT / "workflows" / f"{name}.json",
                   *sets, "--min-files", "1", "--timeout", "600"], timeout=700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ".mp4" in result.stdout
