"""Where the real-ComfyUI tests find ComfyUI and the shared harness, and how they call them.

``COMFYUI_PATH`` is a ComfyUI git checkout (bare or not) or source tarball, by default the newest
tarball in ../shared/comfyui beside the checkout; ``COMFYUI_HARNESS`` the harness folder (default
../shared/comfyui-harness); ``COMFYUI_WORKDIR`` keeps the built ComfyUI + venv between runs
(default: a fresh temporary folder). One server serves every test module of a session
(the ``server`` fixture in conftest.py).
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
HARNESS = Path(os.environ.get("COMFYUI_HARNESS", SHARED / "comfyui-harness"))
PACK_NAME = "comfyui-wanflow"
SCRIPTS = Path(__file__).resolve().parent / "comfyui_scripts"


def _shared_tarball() -> str:
    """The newest ComfyUI source tarball the shared folder holds ('' when there is none)."""
    tarballs = sorted((SHARED / "comfyui").glob("ComfyUI-*.tar.gz"))
    return str(tarballs[-1]) if tarballs else ""


COMFYUI_PATH = os.environ.get("COMFYUI_PATH") or _shared_tarball()

requires_comfyui = [pytest.mark.slow,
                    pytest.mark.skipif(not COMFYUI_PATH, reason="no ComfyUI source: set COMFYUI_PATH to a checkout "
                                       "or tarball (none in ../shared/comfyui) to run the real-ComfyUI check")]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def run_in_comfyui(work: Path, script: str, *args, timeout: int = 900) -> dict:
    """Run ``comfyui_scripts/<script>`` with ComfyUI's venv from its folder; its last line, as JSON."""
    comfy = work / "ComfyUI"
    env = {**os.environ, "PYTHONPATH": f"{work / 'shims'}:{comfy}"}
    result = run([work / "venv" / "bin" / "python", SCRIPTS / script, *args], cwd=comfy, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def start_server(work: Path):
    """Build ComfyUI into ``work`` (idempotent), add the tiny model files and start the server with
    the pack; yields {"url", "work"} and stops the server afterwards."""
    if not (HARNESS / "comfy_env.sh").exists():
        pytest.skip(f"ComfyUI harness not found at {HARNESS} (set COMFYUI_HARNESS)")
    env = run([HARNESS / "comfy_env.sh", COMFYUI_PATH, work], timeout=3600)
    assert env.returncode == 0, env.stderr[-3000:]
    from wanflow.runner.tiny_models import write_tiny_models
    from wanflow.runner.tiny_runs import write_input_images

    write_tiny_models(work / "ComfyUI" / "models")  # tiny files next to whatever else is there
    write_input_images(work / "ComfyUI" / "input")
    serve = run([HARNESS / "comfy_serve.sh", work, ROOT], timeout=600, env={**os.environ, "COMFY_PACK_NAME": PACK_NAME})
    url = serve.stdout.strip().splitlines()[-1] if serve.stdout.strip() else ""
    try:
        assert serve.returncode == 0, f"pack failed to import or server did not start:\n{serve.stderr[-3000:]}"
        yield {"url": url, "work": work}
    finally:
        run([HARNESS / "comfy_stop.sh", work], timeout=120)
