"""Rollback on loss spikes, for every family (SPEC §6.4: the self-model "rolls back on anomaly").

The trainer keeps fast and slow EMAs of the training loss and an in-memory snapshot of the last
good state (weights and buffers, AdamW moments and step, belt cursor, batch counter, EMAs) taken
every `rollback.every` steps. A step whose loss or gradient norm is non-finite, or whose surprise
(fast − slow) / slow exceeds `rollback.threshold`, is not applied: the weights, moments, buffers
and EMAs of the snapshot are restored while the data belt keeps its place, so every micro-batch
drawn since the snapshot (the ones that led to the anomaly) is skipped; the learning rate is
optionally scaled and an event is logged. After `rollback.max` rollbacks the run
stops with a clear message and a checkpoint of the last good state.

Determinism: micro-batches are numbered in draw order; the EMAs, the counter, the rollback count
and the snapshot (written beside a checkpoint as rollback.safetensors when it is older than the
checkpoint) are part of every checkpoint, so a resumed run makes the same decisions.
`rollback.inject_spikes` multiplies the loss of chosen micro-batches (tests and demonstrations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _core

SNAPSHOT_FILE = "rollback.safetensors"


@dataclass
class RollbackConfig:
    enabled: bool = True
    """Watch the loss and roll back on anomalies; off, a non-finite gradient stops the run."""
    every: int = 50
    """Steps between snapshots of the last good state (kept in memory, and beside checkpoints)."""
    threshold: float = 0.5
    """A step whose surprise (fast − slow) / slow exceeds this is an anomaly."""
    ema_fast: float = 0.1
    """Weight of the newest loss in the fast EMA (the author's ema_fast)."""
    ema_slow: float = 0.002
    """Weight of the newest loss in the slow EMA (the author's ema_slow)."""
    warmup: int = 20
    """Steps before the surprise test applies (the EMAs need a history); non-finite values are
    anomalies from the first step."""
    max: int = 5
    """Rollbacks allowed in a run; one more stops the run with a checkpoint of the last good state."""
    lr_scale: float = 1.0
    """Factor applied to the learning rate after each rollback (e.g. 0.5); 1 leaves it unchanged."""
    inject_spikes: list = field(default_factory=list)
    """Micro-batch numbers (0-based, in draw order) whose loss and gradient are multiplied by
    inject_scale: a deterministic spike for tests and demonstrations. Empty in real runs."""
    inject_scale: float = 100.0
    """Factor of an injected spike (nan makes the step non-finite)."""


def validate(cfg: RollbackConfig) -> List[Tuple[bool, str]]:
    """(ok, message) checks for config.py's validation."""
    return [
        (cfg.every >= 1, "rollback.every must be >= 1"),
        (cfg.threshold > 0, "rollback.threshold must be positive"),
        (0 < cfg.ema_slow < cfg.ema_fast <= 1, "rollback needs 0 < ema_slow < ema_fast <= 1"),
        (cfg.max >= 0 and cfg.warmup >= 0, "rollback.max and rollback.warmup must be >= 0"),
        (cfg.lr_scale > 0, "rollback.lr_scale must be positive"),
        (all(isinstance(i, int) and i >= 0 for i in cfg.inject_spikes), "rollback.inject_spikes: integers >= 0"),
    ]


def all_finite(tensors) -> bool:
    """Whether every _core.Tensor given holds only finite values."""
    return all(t.is_finite() for t in tensors)


@dataclass
class Snapshot:
    """The last good state: arrays by name (model.*, m.*, v.*) and the scalars beside them
    (`batch` and `belt`: the data position then, reported as the start of the skipped range)."""

    step: int
    optimizer_step: int
    batch: int
    belt: dict
    fast: Optional[float]
    slow: Optional[float]
    arrays: Dict[str, np.ndarray]

    def meta(self) -> dict:
        return {k: getattr(self, k) for k in ("step", "optimizer_step", "batch", "belt", "fast", "slow")}


class Rollback:
    """The loss monitor, batch counter and snapshot of one run. The trainer calls `next_batch`,
    `observe` after the backward pass, `restore` on an anomaly and `after_step` after an update."""

    def __init__(self, cfg: RollbackConfig, model, opt, names: List[str], belt):
        self.cfg, self.model, self.opt, self.names, self.belt = cfg, model, opt, names, belt
        self.fast: Optional[float] = None
        self.slow: Optional[float] = None
        self.batch = 0  # micro-batches drawn so far
        self.count = 0
        self.lr_factor = 1.0
        self.snapshot: Optional[Snapshot] = None
        self.last_surprise: Optional[float] = None

    # ---- data ----------------------------------------------------------------------------------
    def next_batch(self) -> Tuple[np.ndarray, np.ndarray, float]:
        """The next micro-batch with its loss factor (1, or the injected spike's)."""
        index = self.batch
        ids, targets = self.belt.next_batch()
        self.batch += 1
        return ids, targets, (self.cfg.inject_scale if index in self.cfg.inject_spikes else 1.0)

    # ---- the monitor ---------------------------------------------------------------------------
    def observe(self, step: int, loss: float, grad_norm: float) -> Optional[str]:
        """Updates the EMAs with a step's loss; returns why the step is an anomaly, or None."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'}"
        if self.fast is None or self.slow is None:
            self.fast = self.slow = loss
        else:
            self.fast += self.cfg.ema_fast * (loss - self.fast)
            self.slow += self.cfg.ema_slow * (loss - self.slow)
        self.last_surprise = (self.fast - self.slow) / max(abs(self.slow), 1e-12)
        if self.cfg.enabled and step >= self.cfg.warmup and self.last_surprise > self.cfg.threshold:
            return f"surprise {self.last_surprise:.3f} > threshold {self.cfg.threshold}"
        return None

    def after_step(self, step: int) -> None:
        """Called after an applied update (step is the new step count): snapshot when due."""
        if step % self.cfg.every == 0 and self.cfg.enabled:
            self.take(step)

    # ---- snapshots -----------------------------------------------------------------------------
    def take(self, step: int) -> None:
        arrays = {f"model.{k}": v.copy() for k, v in self.model.state_dict().items()}
        for name, m, v in zip(self.names, self.opt.m, self.opt.v):
            arrays[f"m.{name}"], arrays[f"v.{name}"] = m.numpy().copy(), v.numpy().copy()
        self.snapshot = Snapshot(step, self.opt.step_count, self.batch, self.belt.state(), self.fast, self.slow, arrays)

    def restore(self, step: int, reason: str, loss: float) -> dict:
        """Puts the snapshot back (the belt keeps its place: the micro-batches drawn since the
        snapshot are skipped) and returns the event to log. The caller checks `exhausted` first."""
        snap = self.snapshot
        assert snap is not None, "Rollback.restore before the first snapshot"
        self._load(snap)
        self.count += 1
        self.lr_factor *= self.cfg.lr_scale
        return {
            "event": "rollback",
            "step": step,
            "reason": reason,
            "loss": loss if math.isfinite(loss) else str(loss),
            "restored_step": snap.step,
            "skipped_batches": [snap.batch, self.batch],
            "rollbacks": self.count,
            "lr_factor": self.lr_factor,
        }

    @property
    def exhausted(self) -> bool:
        """Whether one more rollback would exceed rollback.max."""
        return self.count >= self.cfg.max

    def restore_last_good(self) -> None:
        """The snapshot back without counting a rollback (before the final checkpoint of a run
        stopped for too many anomalies)."""
        if self.snapshot is not None:
            self._load(self.snapshot)

    def _load(self, snap: Snapshot) -> None:
        self.model.load_state_dict({k[len("model.") :]: v for k, v in snap.arrays.items() if k.startswith("model.")})
        for name, m, v in zip(self.names, self.opt.m, self.opt.v):
            m.copy_(_core.Tensor(snap.arrays[f"m.{name}"]))
            v.copy_(_core.Tensor(snap.arrays[f"v.{name}"]))
        self.opt.step_count = snap.optimizer_step
        self.opt.zero_grad()
        self.fast, self.slow = snap.fast, snap.slow

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self, step: int) -> Tuple[dict, Optional[Dict[str, np.ndarray]]]:
        """state.json's `rollback` entry and the snapshot arrays to write beside the checkpoint
        (None when the snapshot is the checkpoint itself or there is none)."""
        snap = self.snapshot
        same = snap is not None and snap.step == step
        meta: Dict[str, Any] = {
            "fast": self.fast,
            "slow": self.slow,
            "batch": self.batch,
            "count": self.count,
            "lr_factor": self.lr_factor,
            "snapshot": None if snap is None else snap.meta(),
            "snapshot_file": None if snap is None or same else SNAPSHOT_FILE,
        }
        return meta, (None if snap is None or same else snap.arrays)

    def load_state(self, meta: Optional[dict], arrays: Optional[Dict[str, np.ndarray]], step: int) -> None:
        """Back to a checkpoint's rollback state; the snapshot is the file beside it, or the
        checkpoint itself (which the trainer has just loaded)."""
        if not meta:  # a checkpoint written before rollback existed: start watching from here
            self.take(step) if self.cfg.enabled else None
            return
        self.fast, self.slow, self.batch = meta["fast"], meta["slow"], meta["batch"]
        self.count, self.lr_factor = meta["count"], meta["lr_factor"]
        snap = meta.get("snapshot")
        if snap is None:
            self.snapshot = None
        elif meta.get("snapshot_file"):
            if arrays is None:
                raise ValueError(f"the checkpoint lacks {SNAPSHOT_FILE}")
            self.snapshot = Snapshot(**snap, arrays=arrays)
        else:
            self.take(step)
            self.snapshot = Snapshot(**snap, arrays=self.snapshot.arrays if self.snapshot else {})
