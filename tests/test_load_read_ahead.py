"""Parallel reads (``Checkpoint.read_ahead``) give what one-by-one reads give, in order.

Each tensor must land in its own allocated buffer (not a view of a file mapping or a shared
slab): the file's offsets are deliberately odd here, and the loaded tensors must still start at
64-byte aligned addresses, as CPU kernels round differently on unaligned weights.
"""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from wanflow.model_loaders.errors import CorruptCheckpointError
from wanflow.model_loaders.files import open_checkpoint


@pytest.fixture
def odd_file(tmp_path):
    """Tensors whose byte sizes (3, 5, 7, ... bytes) put every later offset off alignment."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"t{i:02d}": torch.randint(0, 255, (2 * i + 3,), dtype=torch.uint8, generator=generator)
               for i in range(12)}
    tensors["bf16"] = torch.randn(33, 7, generator=generator).to(torch.bfloat16)
    tensors["f32"] = torch.randn(5, 3, generator=generator)
    path = tmp_path / "odd.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_read_ahead_matches_single_reads(odd_file, workers):
    path, tensors = odd_file
    ckpt = open_checkpoint(path)
    keys = sorted(ckpt, reverse=True)  # not file order: the requested order must be kept
    got = list(ckpt.read_ahead(keys, workers))
    assert [k for k, _ in got] == keys
    pointers = set()
    for key, tensor in got:
        assert tensor.dtype == tensors[key].dtype
        torch.testing.assert_close(tensor, tensors[key], rtol=0, atol=0)
        assert tensor.data_ptr() % 64 == 0, f"{key} is not in its own aligned buffer"
        pointers.add(tensor.data_ptr())
    assert len(pointers) == len(keys)


def test_read_ahead_reports_a_file_truncated_after_opening(odd_file):
    path, _ = odd_file
    ckpt = open_checkpoint(path)
    os.truncate(path, path.stat().st_size - 40)
    with pytest.raises(CorruptCheckpointError, match="ends after .* bytes"):
        list(ckpt.read_ahead(sorted(ckpt), workers=3))


def test_read_ahead_can_stop_early(odd_file):
    path, tensors = odd_file
    ckpt = open_checkpoint(path)
    reads = ckpt.read_ahead(sorted(ckpt), workers=3)
    first_key, first = next(reads)
    reads.close()  # waits for the reads in flight, leaves no threads behind
    torch.testing.assert_close(first, tensors[first_key], rtol=0, atol=0)
