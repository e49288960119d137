"""``wanflow batch``: the jobs file, warm models between jobs, and the Ray workers (local cluster of
2 CPU workers on the WanNano T2V template, 1 step, 5 frames)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import wanflow
from wanflow.nano.files import NANO
from wanflow.nodes import comfy_adapter as ca
from wanflow.runner import batch_jobs, cli, errors
from wanflow.runner.batch_jobs import Job, Manifest, Settings
from wanflow.runner.loader_cache import LoaderCache

from nano_testing import need_nano

NANO_FLOW = Path(wanflow.__file__).parent / "workflows" / "wanflow_nano_t2v.json"
FAST = ["8.steps=1", "7.length=5", "10.format=png"]
PROMPTS = ["a red circle moving left on a white background", "a blue square moving up on a black background"]


def job_lines(count):
    """``count`` jobs: a seed sweep over two prompts."""
    return [{"workflow": str(NANO_FLOW), "name": f"seed{seed}",
             "set": FAST + [f"8.seed={seed}", f"5.positive={PROMPTS[seed % 2]}"]} for seed in range(count)]


def write_jobs(tmp_path, lines):
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def reset_adapter():
    yield
    ca.configure_headless(None, None, None)


def single_runs(tmp_path, lines, threads=None):
    """Each job's frames from its own ``wanflow run``-style run (fresh models): name -> {file: bytes}.

    ``threads``: torch's CPU threads for these runs. A Ray worker that needs one CPU computes on one
    thread (Ray sets OMP_NUM_THREADS=1), and CPU sums over other thread counts can differ in the
    last bit, so the references are computed as the workers compute."""
    frames = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for line in lines:
            out = tmp_path / "single" / line["name"]
            result = cli.run_workflow(NANO_FLOW, None, tmp_path / "input", out, line["set"], "cpu")
            frames[line["name"]] = {os.path.relpath(f, out): Path(f).read_bytes() for f in result.files}
    finally:
        torch.set_num_threads(before)
    return frames


def batch_frames(output):
    """name -> {file: bytes} from a batch's manifest (which must list every job as ok)."""
    records = json.loads((output / batch_jobs.MANIFEST).read_text())["jobs"]
    assert [r["status"] for r in records] == ["ok"] * len(records), records
    return {r["job"]: {os.path.relpath(f, r["job"]): (output / f).read_bytes() for f in r["files"]}
            for r in records}


# --------------------------------------------------------------------------- the jobs file

def test_bad_line_is_named_before_anything_runs(tmp_path, capsys):
    lines = job_lines(2) + ['{"workflow": "x.json", "sett": []}']
    code = cli.main(["batch", str(write_jobs(tmp_path, lines)), "--output", str(tmp_path / "out"), "--quiet"])
    assert code == errors.EXIT_USAGE
    assert "jobs file line 3: unknown key(s) 'sett'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1: not JSON"),
    ('{"set": []}', "line 1: 'workflow' must be"),
    ('{"workflow": "w.json", "set": "8.seed=1"}', "line 1: 'set' must be a list"),
    ('{"workflow": "w.json", "name": "../up"}', "line 1: 'name' '../up'"),
])
def test_parse_errors_name_the_line(tmp_path, line, message):
    with pytest.raises(errors.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        batch_jobs.read_jobs(write_jobs(tmp_path, [line]))


def test_every_job_is_checked_up_front(tmp_path):
    """A bad override on the last line stops the batch before the first job renders."""
    lines = job_lines(2)
    lines[1]["set"] = lines[1]["set"] + ["8.steps=0"]
    jobs = batch_jobs.read_jobs(write_jobs(tmp_path, lines))
    with pytest.raises(errors.InvalidWorkflow, match=r"jobs file line 2 .*'steps': 0 is outside"):
        batch_jobs.check_jobs(jobs, Settings(output=str(tmp_path / "out")))


def test_repeated_name_is_refused(tmp_path):
    lines = job_lines(2)
    lines[1]["name"] = lines[0]["name"]
    with pytest.raises(errors.UsageError, match="line 2: name 'seed0' is already used on line 1"):
        batch_jobs.read_jobs(write_jobs(tmp_path, lines))


def test_missing_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without Ray
    code = cli.main(["batch", str(write_jobs(tmp_path, job_lines(1))), "--ray", "--output", str(tmp_path / "out")])
    assert code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--ray needs Ray" in err and "pip install 'comfyui-wanflow[ray]'" in err


# --------------------------------------------------------------------------- warm models

@pytest.mark.slow
def test_second_job_reuses_the_loaded_models_and_matches_a_fresh_run(tmp_path):
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    lines = job_lines(2)
    jobs = [Job(i + 1, line["name"], line["workflow"], tuple(line["set"])) for i, line in enumerate(lines)]
    settings = Settings(output=str(tmp_path / "out"), device="cpu")
    cache = LoaderCache()
    first = batch_jobs.run_job(jobs[0], settings, cache)
    assert first["status"] == "ok" and cache.loads == 4 and cache.hits == 0  # 2 experts, text encoder, VAE
    second = batch_jobs.run_job(jobs[1], settings, cache)
    assert second["status"] == "ok" and second["seed"] == 1
    assert cache.loads == 4 and cache.hits == 4
    manifest = Manifest(tmp_path / "out", jobs)
    manifest.add(first | {"attempts": 1})
    manifest.add(second | {"attempts": 1})
    assert batch_frames(tmp_path / "out") == single_runs(tmp_path, lines)


# --------------------------------------------------------------------------- Ray

@pytest.fixture()
def local_ray():
    import ray  # a test dependency (pyproject's test extra): these tests never skip
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
    assert not ray.is_initialized()


def ray_batch(tmp_path, count, on_record=None):
    from wanflow.runner.ray_batch import RayBatch

    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    lines = job_lines(count)
    settings = Settings(output=str(tmp_path / "out"), device="cpu")
    jobs = batch_jobs.read_jobs(write_jobs(tmp_path, lines))
    batch_jobs.check_jobs(jobs, settings)
    return lines, RayBatch(jobs, settings, Manifest(tmp_path / "out", jobs), workers=2, on_record=on_record)


@pytest.mark.slow
def test_eight_jobs_on_two_workers_match_single_runs(tmp_path, local_ray, capsys):
    """Through the command: ``wanflow batch JOBS --ray --workers 2`` on the running local Ray."""
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    lines = job_lines(8)
    code = cli.main(["batch", str(write_jobs(tmp_path, lines)), "--ray", "--workers", "2", "--device", "cpu",
                     "--output", str(tmp_path / "out"), "--quiet"])
    assert code == errors.EXIT_OK, capsys.readouterr().err
    assert local_ray.is_initialized()  # a Ray it did not start is left running
    assert batch_frames(tmp_path / "out") == single_runs(tmp_path, lines, threads=1)
    records = json.loads((tmp_path / "out" / batch_jobs.MANIFEST).read_text())["jobs"]
    assert [r["seed"] for r in records] == list(range(8)) and {r["attempts"] for r in records} == {1}
    by_worker = {}
    for record in records:
        by_worker.setdefault(record["pid"], []).append(record["models_loaded"])
    assert len(by_worker) == 2, by_worker
    for loaded in by_worker.values():  # each worker loads the 4 models (2 experts, umT5, VAE) once
        assert sorted(loaded) == [0] * (len(loaded) - 1) + [4], by_worker


@pytest.mark.slow
def test_killed_worker_still_completes_every_job(tmp_path, local_ray):
    killed = []

    def kill_the_other_worker(batch, record):
        if killed:
            return
        for _job, _attempt, actor in batch.in_flight.values():
            os.kill(pids[actor], signal.SIGKILL)  # a crash mid-job, not a polite stop
            killed.append(pids[actor])

    lines, batch = ray_batch(tmp_path, 8, on_record=kill_the_other_worker)
    pids = dict(zip(batch.actors, batch.pids()))
    try:
        batch.run()
    finally:
        batch.shutdown()
    assert killed and batch.replaced >= 1
    records = json.loads((tmp_path / "out" / batch_jobs.MANIFEST).read_text())["jobs"]
    assert any(r["attempts"] == 2 for r in records)
    assert batch_frames(tmp_path / "out") == single_runs(tmp_path, lines, threads=1)


def test_loader_cache_keeps_only_the_last_runs_models():
    cache = LoaderCache()
    cache.begin_run()
    assert cache.get_or_load("a", lambda: 1) == 1 and cache.get_or_load("b", lambda: 2) == 2
    cache.end_run()
    cache.begin_run()
    assert cache.get_or_load("a", lambda: 3) == 1  # reused, not reloaded
    cache.end_run()
    assert set(cache.outputs) == {"a"} and (cache.loads, cache.hits) == (2, 1)


def ray_processes(marker):
    """Pids of processes whose command line names ``marker`` (the Ray session's temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_ctrl_c_cancels_the_rest_and_leaves_no_ray_process(tmp_path):
    """``wanflow batch --ray`` in its own process: SIGINT once a job is done -> exit 130, the
    finished jobs ok, the others cancelled, and the local Ray it started is gone."""
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    lines = job_lines(8)
    for line in lines:
        line["set"] = [s for s in line["set"] if not s.startswith("8.steps=")] + ["8.steps=100"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="wfray-"))  # short: Ray's socket paths must fit 107 bytes
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp))
    proc = subprocess.Popen([sys.executable, "-m", "wanflow.runner.launch", "batch", str(write_jobs(tmp_path, lines)),
                             "--ray", "--workers", "2", "--device", "cpu", "--output", str(tmp_path / "out"),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    manifest = tmp_path / "out" / batch_jobs.MANIFEST
    try:
        while proc.poll() is None:  # until the first job is in the manifest
            if manifest.is_file() and '"ok"' in manifest.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        assert ray_processes(str(ray_tmp))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "interrupted" in err
    statuses = [r["status"] for r in json.loads(manifest.read_text())["jobs"]]
    assert set(statuses) == {"ok", "cancelled"}, statuses
    assert not ray_processes(str(ray_tmp))
