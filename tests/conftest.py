"""Fixtures shared by several test modules."""
import os
from pathlib import Path

import pytest

from comfyui_setup import start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real ComfyUI server (headless, CPU) with the pack, for every real-ComfyUI test module."""
    work = Path(os.environ.get("COMFYUI_WORKDIR") or tmp_path_factory.mktemp("comfyui"))
    yield from start_server(work)
