"""Timing helper shared by the Python side-by-side benches."""

from __future__ import annotations

import statistics
import time


def interleaved_medians(fns, runs, warmup: int = 2, rounds: int = 3):
    """Median seconds of each fn over `runs` timed calls, taken in `rounds` blocks that alternate
    between the fns (so all see the same background load), with a pause before each block so the
    other library's spinning worker threads (OpenMP's or Rayon's) have gone idle."""
    times = [[] for _ in fns]
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
