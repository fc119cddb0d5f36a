"""The benchmarks' one way to time code: wall time with the GPU synchronised, paths interleaved round by round."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, with the GPU's queued work finished before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(paths: dict[str, Callable[[], object]], rounds: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds per path; each round times every path once, in turn, so that a busy machine slows
    them alike."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}
