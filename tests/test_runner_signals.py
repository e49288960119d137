"""Ctrl-C and SIGTERM on the command line: one line, exit 130/143, no staging folder, no new folder."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import execute, signals, workflow
from wanflow.runner.registry import node_classes


@pytest.fixture()
def handlers():
    """Install the command line's handlers for one test, then restore pytest's."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals.install()
    yield
    for s, handler in before.items():
        signal.signal(s, handler)
    signals._State.cleaning, signals._State.pending = 0, None


def signalling_classes(signum: int) -> dict:
    """The pack's nodes plus a LoadImage that saves a file and then receives ``signum``."""
    classes = dict(node_classes())
    base = classes["LoadImage"]

    class LoadImageThenSignal(base):
        def load_image(self, *args, **kwargs):
            out = super().load_image(*args, **kwargs)
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler raises here
            return out

    classes["LoadImage"] = LoadImageThenSignal
    return classes


@pytest.mark.parametrize("signum, exception", [(signal.SIGTERM, signals.Terminated),
                                                (signal.SIGINT, (KeyboardInterrupt, execute.RunInterrupted))])
def test_a_signal_mid_run_leaves_no_staging_and_no_new_folder(tmp_path, handlers, signum, exception):
    inp, out = tmp_path / "input", tmp_path / "new" / "output"
    inp.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(inp / "still.png")
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "still.png"}},
           "2": {"class_type": "WanFlowSaveVideo",
                 "inputs": {"images": ["1", 0], "filename_prefix": "x", "format": "png", "fps": 8.0, "quality": 90}}}
    classes = signalling_classes(signum)
    ca.configure_headless(None, inp, out)
    try:
        with pytest.raises(exception):
            execute.run(workflow.load_workflow(api, classes), classes)
    finally:
        ca.configure_headless(None, None, None)
    assert not (tmp_path / "new").exists()


def test_a_second_signal_during_cleanup_waits_for_it(handlers):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_ctrl_c_during_start_up_prints_one_line_and_exits_130(tmp_path):
    """The signal lands while the command imports torch and the nodes."""
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}))
    proc = subprocess.Popen([sys.executable, "-m", "wanflow.runner.launch", "run", str(flow)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # Python is up and the handlers are in; torch takes seconds more to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == signals.EXIT_SIGINT, err
    assert "Traceback" not in err and "wanflow: interrupted" in err, err


def test_help_and_version_answer_without_importing_torch(capsys):
    """``wanflow --help`` / ``--version`` come from the torch-free argument module (issue 11)."""
    code = ("import sys\nfrom wanflow.runner import launch\n"
            "assert launch.main(['--version']) == 0 and launch.main(['--help']) == 0\n"
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wanflow ") and "usage: wanflow" in done.stdout
    assert done.stdout.strip().endswith("torch not loaded"), done.stdout[-300:]


def test_the_check_weights_help_names_the_loaders_variable():
    from wanflow.model_loaders import finite_check
    from wanflow.runner.arguments import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    assert f"{finite_check.CHECK_ENV}=1" in run.format_help()
