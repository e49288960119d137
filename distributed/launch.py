"""Starting the process group: N local processes (``spawn``) or the ranks ``torchrun`` started.

NCCL where CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo on CPU. Only rank 0
should write outputs (:func:`is_writer`).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of a local spawn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(local_rank: int, backend: str) -> torch.device:
    """``cuda:local_rank`` for NCCL (set as the current device), else the CPU."""
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(rank: int, world: int, port: int, backend: Optional[str] = None,
         address: str = "127.0.0.1") -> torch.device:
    """Join a ``world``-rank group at ``address:port``; returns this rank's device."""
    backend = backend or default_backend()
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise ValueError(f"--gpus {world}: only {torch.cuda.device_count()} CUDA device(s) here")
    device = device_for(rank, backend)
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                            world_size=world)
    return device


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARS)


def init_from_env(backend: Optional[str] = None) -> torch.device:
    """Join the group ``torchrun`` describes in the environment; returns this rank's device."""
    backend = backend or default_backend()
    device = device_for(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), backend)
    dist.init_process_group(backend, init_method="env://")
    return device


def is_writer() -> bool:
    """Rank 0 (or no process group at all) writes the outputs."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, backend: Optional[str],
           args: tuple) -> None:
    device = init(rank, world, port, backend)
    try:
        fn(rank, world, device, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world: int, args: tuple = (), backend: Optional[str] = None) -> None:
    """Run ``fn(rank, world, device, *args)`` in ``world`` fresh processes joined in one group.

    ``fn`` must be importable (a module-level function). An exception in any rank is raised here.
    """
    if world < 1:
        raise ValueError(f"--gpus must be >= 1; got {world}")
    mp.spawn(_entry, args=(fn, world, free_port(), backend, args), nprocs=world, join=True)
