"""Learning-rate schedules: linear warmup, then cosine, linear, warmup-stable-decay or constant,
planned over run.steps (`schedule.horizon = "steps"`) or over the time budget run.max_minutes
(`"time"`: the decay follows the elapsed fraction of the budget, or of the steps if they run out
first, so a run cut short by its time limit still ends its decay)."""

from __future__ import annotations

import math
from typing import Optional


def lr_at(
    step: int,
    total: int,
    lr: float,
    min_lr: float,
    kind: str,
    warmup: int,
    decay_fraction: float = 0.2,
    time_fraction: Optional[float] = None,
) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`. With `time_fraction` (the
    elapsed fraction of a time budget), progress after warmup is the larger of the two fractions."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if kind == "constant":
        return lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if time_fraction is not None:
        progress = max(progress, min(1.0, max(0.0, time_fraction)))
    if kind == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return lr + (min_lr - lr) * progress
    if kind == "wsd":
        decay_start = 1.0 - decay_fraction
        if progress < decay_start:
            return lr
        return lr + (min_lr - lr) * (progress - decay_start) / max(decay_fraction, 1e-12)
    raise ValueError(f"unknown schedule {kind!r}")


def describe(kind: str, horizon: str, steps: int, warmup: int, max_minutes: float) -> str:
    """The schedule in force, for the log."""
    shape = f"{kind} after {warmup} warmup steps" if warmup else kind
    if kind == "constant":
        return f"schedule: {shape} (no decay)"
    if horizon == "time":
        return (
            f"schedule: {shape}, decay planned over the time budget of {max_minutes:g} min "
            f"(or {steps} steps if they come first; schedule.horizon = time)"
        )
    note = (
        f"; run.max_minutes = {max_minutes:g} may stop the run before the decay ends "
        '(schedule.horizon = "time" plans it over the time budget)'
        if max_minutes
        else ""
    )
    return f"schedule: {shape}, decay planned over {steps} steps (schedule.horizon = steps){note}"
