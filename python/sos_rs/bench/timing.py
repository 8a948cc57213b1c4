"""Timing helpers shared by `sos bench` and the side-by-side benches in benches/."""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Sequence


def interleaved_medians(
    fns: Sequence[Callable[[], object]], runs: int, warmup: int = 2, rounds: int = 3
) -> List[float]:
    """Median seconds of each fn over `runs` timed calls, taken in `rounds` blocks that alternate
    between the fns (so all see the same background load), with a pause before each block so the
    other library's spinning worker threads (OpenMP's or Rayon's) have gone idle."""
    times: List[List[float]] = [[] for _ in fns]
    per_block = -(-runs // rounds)
    for r in range(rounds):
        for f, ts in zip(fns, times):
            time.sleep(0.3)
            for _ in range(warmup if r == 0 else 0):
                f()
            for _ in range(per_block):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def gflops(flops: float, fn: Callable[[], object], budget: float = 0.15) -> float:
    """GFLOP/s of `fn` doing `flops` per call: one warm-up call, one to size the loop, then as
    many calls as fit in `budget` seconds."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    n = max(1, int(budget / one))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return flops * n / (time.perf_counter() - t) / 1e9
