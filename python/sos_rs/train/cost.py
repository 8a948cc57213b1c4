"""What a run costs: CPU-seconds of this process (all compute threads; `time.process_time`),
wall-clock seconds, and money at `[run] price_per_hour` (the price of the machine per wall-clock
hour). Carried across resumes through the checkpoint's `elapsed_s` and `cpu_s`."""

from __future__ import annotations

import time
from typing import Dict


class CostMeter:
    def __init__(self, price_per_hour: float, wall_before: float = 0.0, cpu_before: float = 0.0):
        self.price_per_hour = price_per_hour
        self.wall_before = wall_before
        self.cpu_before = cpu_before
        self.cpu0 = time.process_time()

    def cpu_s(self) -> float:
        """CPU-seconds of the run so far, earlier sessions included."""
        return self.cpu_before + time.process_time() - self.cpu0

    def fields(self, wall_s: float) -> Dict[str, float]:
        """cpu_s, cpu_hours and (with a price) cost for a run `wall_s` seconds long."""
        cpu = self.cpu_s()
        out = {"cpu_s": cpu, "cpu_hours": cpu / 3600}
        if self.price_per_hour > 0:
            out["cost"] = self.price_per_hour * wall_s / 3600
        return out
