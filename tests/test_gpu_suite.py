"""bench/gpu_suite.py: its plan and FLOP arithmetic, the dry run on meta, and the CPU smoke run."""
from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from gpu_bench import plan  # noqa: E402
from gpu_bench.report import device_slug, table  # noqa: E402


def test_sizes_and_flops_meet_the_issues_roofline():
    """81 frames: latents 21x60x104 and 21x90x160; at 800 TFLOP/s, 40 CFG steps of an A14B expert
    take about 170 s at 480p and 650 s at 720p (issue 12's anchors)."""
    p480, p720 = plan.RESOLUTIONS
    assert (p480.latent, p480.tokens()) == ((21, 60, 104), 32760)
    assert (p720.latent, p720.tokens()) == ((21, 90, 160), 75600)
    for res, anchor in ((p480, 170.0), (p720, 650.0)):
        seconds = plan.STEPS * plan.forward_flops(plan.EXPERT, 2, res.tokens()) / 800e12
        assert seconds == pytest.approx(anchor, rel=0.03)
    # a 14B block is 1/40 of the expert's 14.3 B parameters (bf16)
    assert plan.block_bytes(plan.EXPERT) * plan.EXPERT.num_layers == pytest.approx(2 * 14.0e9, rel=0.03)


def test_peaks_and_names():
    assert plan.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert plan.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert plan.peak_tflops("NVIDIA H200") == 989.4
    assert plan.peak_tflops("Some Future GPU") is None
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    with pytest.raises(ValueError, match="3 cells"):
        table(["a", "b", "c"], [["1", "2"]])


def run_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=BENCH.parent)


def written(out_dir: Path, slug: str) -> str:
    return (out_dir / f"gpu-{slug}-{datetime.date.today():%Y-%m-%d}.md").read_text()


@pytest.mark.slow
def test_dry_run_builds_everything_on_meta_and_renders_the_report(tmp_path):
    done = run_suite("--dry-run", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = written(tmp_path, "dry-run")
    for title in ("Work per step", "FLOP formulas checked", "Seconds per step", "Speed-ups of the issue's items",
                  "VAE decode", "Block swap"):
        assert f"## {title}" in report
    assert "**Dry run**" in report and "failed" not in report and "## Problems" not in report
    # the analytic FLOPs equal torch's count for every size and batch
    assert re.findall(r"\| (480p|720p) \| [12] \| [\d.]+ \| [\d.]+ \| (\S+) \|", report) == [
        (res, "0.0e+00") for res in ("480p", "480p", "720p", "720p")]
    assert "| compiled blocks (item 2) | 3.39 | 1.00x |" in report  # traced on meta, roofline time


@pytest.mark.slow
def test_smoke_run_measures_every_section_on_the_cpu(tmp_path):
    done = run_suite("--smoke", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = written(tmp_path, "smoke")
    assert "failed" not in report and "skipped" not in report
    assert re.search(r"\| toy-b \| 36 \| yes \(batched\) \| [\d.e-]+ \| [\d.e-]+ \| [\d.e-]+ \|", report)
    assert re.search(r"\| compiled blocks \(item 2\) \| [\d.e-]+ \| [\d.]+x \|", report)
    assert re.search(r"\| toy-b \(9 frames\) \| 3x6x8 \| [\d.e-]+ \|", report)  # a decode was timed
    assert "fp8 weights (scaled e4m3)" in report
    if "not available: wan/block_swap.py" not in report:
        assert re.search(r"\| 320 KiB budget \| \d+ / [1-4] \| [\d.]+ \| [\d.e-]+ \| [\d.]+x \|", report)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_the_real_run_says_to_use_the_dry_run(capsys):
    import gpu_suite

    assert gpu_suite.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err
