"""Metrics as JSON lines (one object per logged step) and a terminal progress display: a tqdm
bar on a terminal, plain lines otherwise (logs, CI)."""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Optional


class MetricsLog:
    def __init__(self, path: pathlib.Path, total_steps: int, start_step: int):
        self.path = path
        self.file = open(path, "a", buffering=1)
        self.total = total_steps
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def step(self, record: dict, show: bool) -> None:
        self.write(record)
        if self.bar is not None:
            self.bar.n = record["step"]
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            self.bar.refresh()
        elif show:
            print(
                f"step {record['step']:>6}/{self.total} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
                f"gnorm {record['grad_norm']:.3f} | {record['tokens_per_s']:.0f} tok/s | "
                f"{record['ms_per_step']:.0f} ms/step | "
                f"ETA {format_seconds(record['eta_s'])} | RSS {record['rss_mb']:.0f} MB",
                flush=True,
            )

    def info(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()


def format_seconds(s: Optional[float]) -> str:
    if s is None or s != s:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def read_metrics(path: pathlib.Path) -> list:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return out


class Timer:
    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0
