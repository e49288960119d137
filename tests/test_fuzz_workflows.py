"""Fuzz ``wanflow run`` in process with mutated workflows, on a folder of tiny random models.

Two bases per template: its UI file as users share it (the models it names are not in the
folder, so runs end at validation or at the missing-file check) and its API prompt pointed at
the tiny files (runs that survive the mutation sample for real). The nano template's UI file names
the WanNano files the pack ships; the fake folder holds tiny random files under those names, which
shadow the shipped ones as a user's own files would, so its runs sample on tiny models too. Each run must exit 0 or with one
of the runner's error codes and a message, never a traceback or exit 1, and must write nothing when
it fails. Budgets: tests/fuzzing.py.
"""
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzing import FUZZ_EXAMPLES, FUZZ_SETTINGS, LONG_RUN, Timings, describe_changes, mutate_json
from wanflow.nano.files import NANO
from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import cli, errors, templates, workflow
from wanflow.runner.registry import node_classes
from wanflow.runner.tiny_models import write_tiny_models
from wanflow.runner.tiny_runs import TINY_OVERRIDES, write_input_images

pytestmark = pytest.mark.slow

PROJECT_EXITS = {errors.EXIT_OK, errors.EXIT_USAGE, errors.EXIT_INVALID, errors.EXIT_MISSING_FILE,
                 errors.EXIT_NODE_FAILED}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_run")
    tiny = write_tiny_models(root / "models")
    shadow_nano_files(root / "models", tiny)
    write_input_images(root / "input")
    yield root
    ca.configure_headless(None, None, None)


def shadow_nano_files(models: Path, tiny) -> None:
    """Tiny random copies under the WanNano file names: the issue's fuzzer runs on a fake models
    folder, and the user's folder is searched before the pack's own nano files."""
    for nano_name, tiny_name in ((NANO.t2v_high, tiny.t2v_high), (NANO.t2v_low, tiny.t2v_low),
                                 (NANO.vae, tiny.vae21), (NANO.umt5, tiny.umt5)):
        folder = models / NANO.folder_of(nano_name)
        shutil.copyfile(folder / tiny_name, folder / nano_name)


def api_prompt(name: str) -> dict:
    """Template ``name`` as an API prompt on the tiny models."""
    classes = node_classes()
    flow = workflow.load_workflow(templates.render(name, classes), classes, name)
    workflow.apply_overrides(flow.prompt, TINY_OVERRIDES[name], classes)
    return {node_id: {"class_type": e["class_type"], "inputs": e["inputs"]} for node_id, e in flow.prompt.items()}


BASES = {**{f"ui:{name}": (lambda n=name: json.loads((templates.WORKFLOWS_DIR / f"{n}.json").read_text()))
            for name in TINY_OVERRIDES},
         **{f"api:{name}": (lambda n=name: api_prompt(n)) for name in TINY_OVERRIDES}}


def examples_for(base: str) -> int:
    """Examples per base. In CI each UI base runs FUZZ_EXAMPLES and each API base a fifth (API
    prompts on the tiny models often sample for real, a second or two each). The long run splits
    FUZZ_EXAMPLES over all bases of the one entry point (``wanflow run``), 4:1 UI to API."""
    api = base.startswith("api:")
    if not LONG_RUN:
        return max(5, FUZZ_EXAMPLES // 5) if api else FUZZ_EXAMPLES
    share = FUZZ_EXAMPLES // 5 if api else FUZZ_EXAMPLES * 4 // 5
    return max(1, share // sum(name.startswith("api:") == api for name in BASES))


@pytest.mark.parametrize("base", sorted(BASES))
def test_mutated_workflows_run_or_fail_with_a_runner_error(folders, capsys, base):
    original = BASES[base]()
    counter = iter(range(10 ** 9))
    timings = Timings(f"wanflow run: {base}")

    @settings(FUZZ_SETTINGS, max_examples=examples_for(base))
    @given(data=st.data())
    def check(data):
        flow = mutate_json(original, data)
        run = folders / base.replace(":", "_") / f"run{next(counter)}"
        run.mkdir(parents=True)
        path = run / "flow.json"
        path.write_text(json.dumps(flow, allow_nan=True))
        out = run / "output"
        with timings.example("; ".join(describe_changes(original, flow)) if LONG_RUN else ""):
            code = cli.main(["run", str(path), "--models", str(folders / "models"), "--input",
                             str(folders / "input"), "--output", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code in PROJECT_EXITS, f"exit {code}: {err[-2000:]}"
        assert "Traceback" not in err, err[-2000:]
        if code != errors.EXIT_OK:
            assert "wanflow: error: " in err, err[-2000:]
            assert not out.exists() or not any(out.rglob("*")), f"a failed run left {list(out.rglob('*'))}"

    check()
    timings.report()


def test_the_long_run_report_says_what_was_mutated():
    before = {"nodes": [{"id": 7, "widgets_values": [64, 64, 17, 1]}], "version": 0.4}
    after = {"nodes": [{"id": 7, "widgets_values": [4000, 64, float("nan"), 1]}], "extra": None, "version": 0.4}
    assert describe_changes(before, after) == ["/nodes[0]/widgets_values[0]: 64 -> 4000",
                                               "/nodes[0]/widgets_values[2]: 17 -> NaN",
                                               '/extra: "<absent>" -> null']
    assert describe_changes(before, before) == []
