"""Headless block-swap choice (nodes/headless_placement.py) and the runner's ``--max-vram``."""
from __future__ import annotations

import argparse

import pytest
import torch

from lora_fixtures import random_dit
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes import headless_placement as hp
from wanflow.runner import cli, errors
from wanflow.runner.arguments import build_parser, parse_size
from wanflow.wan.block_swap import BlockSwap

GIB = 1024 ** 3


@pytest.fixture()
def headless(monkeypatch):
    """Headless, with the compute device reported as CUDA (nothing is moved in these tests)."""
    monkeypatch.setattr(ca, "in_comfyui", lambda: False)
    monkeypatch.setattr(ca, "compute_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(hp, "auto_reserve", lambda device: 1000)
    yield
    ca.configure_headless(None, None, None)


def test_budget_set_and_model_bigger_streams(headless):
    model = random_dit("t2v")
    size = ca.module_bytes(model)
    ca.configure_headless(max_vram=size - 1)
    swap = hp.block_swap_for(model)
    assert isinstance(swap, BlockSwap) and swap.budget == size - 1 and swap.model is model
    assert swap.plan_for(size - 1).streamed
    ca.configure_headless(max_vram=size)
    assert hp.block_swap_for(model) is None


def test_a_budget_too_small_names_max_vram(headless):
    ca.configure_headless(max_vram=1000)
    with pytest.raises(ca.BadSetting, match=r"--max-vram 1000 B: .*needs at least"):
        hp.block_swap_for(random_dit("t2v"))


def test_only_headless_only_wan_dits_and_not_on_the_cpu(headless, monkeypatch):
    model = random_dit("t2v")
    ca.configure_headless(max_vram=1000)
    assert hp.block_swap_for(torch.nn.Linear(100, 100)) is None
    monkeypatch.setattr(ca, "compute_device", lambda: torch.device("cpu"))
    assert hp.block_swap_for(model) is None
    monkeypatch.setattr(ca, "compute_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(ca, "in_comfyui", lambda: True)
    assert hp.block_swap_for(model) is None


def test_without_a_budget_free_memory_decides(headless, monkeypatch):
    model = random_dit("t2v")
    size = ca.module_bytes(model)
    ca.configure_headless()
    monkeypatch.setattr(hp, "free_device_bytes", lambda device, module: size + 1000)
    assert hp.block_swap_for(model) is None
    monkeypatch.setattr(hp, "free_device_bytes", lambda device, module: size + 999)
    swap = hp.block_swap_for(model)
    assert isinstance(swap, BlockSwap) and swap.budget is None and swap.reserve == 1000
    monkeypatch.setattr(ca, "compute_device", lambda: torch.device("cpu"))
    assert hp.block_swap_for(model) is None


@pytest.mark.parametrize("text, size", [("1GB", GIB), ("12GB", 12 * GIB), ("12000MB", 12000 * 1024 ** 2),
                                        ("11.5G", int(11.5 * GIB)), ("2GiB", 2 * GIB), ("123456", 123456),
                                        ("512k", 512 * 1024)])
def test_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["garbage", "12XB", "0", "-1GB", "GB", "12iB", ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_max_vram_on_the_command_line(tmp_path, capsys):
    assert build_parser().parse_args(["run", "flow.json", "--max-vram", "1GB"]).max_vram == GIB
    assert cli.main(["run", "flow.json", "--max-vram", "garbage"]) == errors.EXIT_USAGE
    assert "argument --max-vram: 'garbage' is not a size" in capsys.readouterr().err
    try:  # a missing workflow fails after the settings are stored
        assert cli.main(["run", str(tmp_path / "nope.json"), "--max-vram", "1GB", "--quiet"]) == errors.EXIT_USAGE
        assert ca.max_vram() == GIB
    finally:
        ca.configure_headless(None, None, None)
    assert ca.max_vram() is None
