"""Progress lines for `sos prepare` on stderr: redrawn in place on a terminal, one line per
stage otherwise (so logs stay readable). Timing per stage feeds the closing summary."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    """`stage(name, total)` starts a stage; `update(done)` redraws at most 10 times a second;
    `end()` prints the stage's final line and returns its wall seconds; `last_cpu` is then the
    stage's CPU seconds over all the process's threads, which a busy machine disturbs far less
    than wall time."""

    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None, n_stages: int = 0):
        self.enabled = enabled
        self.out = stream or sys.stderr
        self.tty = enabled and hasattr(self.out, "isatty") and self.out.isatty()
        self.n_stages = n_stages
        self.index = 0
        self.name = ""
        self.unit = ""
        self.total = 0.0
        self.start = 0.0
        self.last_draw = 0.0
        self.done = 0.0
        self.cpu_start = 0.0
        self.last_cpu = 0.0

    def stage(self, name: str, total: float = 0.0, unit: str = "MB") -> None:
        self.index += 1
        self.name, self.total, self.unit, self.done = name, total, unit, 0.0
        self.start = self.last_draw = time.perf_counter()
        self.cpu_start = time.process_time()
        if self.enabled and not self.tty:
            print(f"[{self.index}/{self.n_stages}] {name} ...", file=self.out, flush=True)

    def _line(self, done: float, note: str) -> str:
        secs = time.perf_counter() - self.start
        head = f"[{self.index}/{self.n_stages}] {self.name:<16}"
        if self.total > 0:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 24)
            rate = f"{done / secs:8.2f} {self.unit}/s" if secs > 0 else ""
            return f"{head} [{bar:<24}] {done:10.2f}/{self.total:.2f} {self.unit} {rate} {note}"
        return f"{head} {note} ({secs:.1f} s)"

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        now = time.perf_counter()
        if self.tty and now - self.last_draw >= 0.1:
            self.last_draw = now
            print("\r" + self._line(done, note)[:160], end="", file=self.out, flush=True)

    def end(self, done: Optional[float] = None, note: str = "") -> float:
        secs = time.perf_counter() - self.start
        self.last_cpu = time.process_time() - self.cpu_start
        if self.enabled:
            prefix = "\r" if self.tty else ""
            print(
                prefix + self._line(self.done if done is None else done, note)[:160] + f"  done in {secs:.1f} s",
                file=self.out,
                flush=True,
            )
        return secs

    def warn(self, message: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + f"warning: {message}", file=self.out, flush=True)
