"""Timing and peak memory on a CUDA device, or their roofline stand-ins in a dry run.

A dry run calls every function once on meta tensors (so shapes and code paths are exercised) and
returns ``flops / peak`` as its "time": the report then shows what the roofline predicts, and
says so.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Timing:
    seconds: float
    peak_bytes: Optional[int] = None  # device memory high-water mark during the calls


class Clock:
    """``time(fn, flops)``: median seconds of ``reps`` calls after ``warmup`` calls."""

    def __init__(self, device: torch.device, peak_tflops: float, reps: int = 3, warmup: int = 1) -> None:
        self.device, self.peak_tflops, self.reps, self.warmup = device, peak_tflops, reps, warmup
        self.dry = device.type == "meta"

    def roofline(self, flops: float) -> float:
        return flops / (self.peak_tflops * 1e12)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def time(self, fn: Callable[[], object], flops: float = 0.0, reps: Optional[int] = None,
             warmup: Optional[int] = None) -> Timing:
        if self.dry:
            fn()
            return Timing(self.roofline(flops))
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        self.sync()
        self.reset_peak()
        times = []
        for _ in range(self.reps if reps is None else reps):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return Timing(statistics.median(times), self.peak())

    @torch.no_grad()
    def once(self, fn: Callable[[], object]) -> Timing:
        """Wall time of a single call (a compile, a decode) and the memory peak it reached."""
        if self.dry:
            fn()
            return Timing(0.0)
        self.sync()
        self.reset_peak()
        start = time.perf_counter()
        fn()
        self.sync()
        return Timing(time.perf_counter() - start, self.peak())

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> Optional[int]:
        """The device's memory high-water mark (None off CUDA: not measured there)."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0


    def free_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
