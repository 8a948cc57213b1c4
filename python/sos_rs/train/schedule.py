"""Learning-rate schedules: linear warmup, then cosine, linear, warmup-stable-decay or constant."""

from __future__ import annotations

import math


def lr_at(
    step: int, total: int, lr: float, min_lr: float, kind: str, warmup: int, decay_fraction: float = 0.2
) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if kind == "constant":
        return lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
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
