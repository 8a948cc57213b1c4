"""What the trainer asks of the process group: `Single` (one process, no MPI: behaves exactly as
before this package existed) and `Mpi` (data-parallel ranks over mpi4py). Both offer the same
calls, so train/trainer.py has one code path:

- `start(trainer, resume)`: rank 0 takes the run lock and picks the checkpoint; every rank
  resumes from that one; ranks started with other configs, data or weights are refused;
- `exchange(params, loss_sum, stop)`: after backward, the rank-ordered gradient sum
  (reduce.py), the rank-ordered loss sum, and the agreed stop flag;
- `root_decides(flag)`: a decision taken on rank 0's clock (the time limit);
- `is_root`: only rank 0 writes metrics, samples and checkpoints.

Errors at start are agreed: every rank raises the same DistError naming the rank(s) at fault.
A rank lost mid-run is reported by the launcher (mpirun names it and stops the others)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import SosError
from . import cores
from .launch import Launch


class DistError(SosError, RuntimeError):
    """A data-parallel run cannot start or continue; the message names the rank(s) and the cause.
    `agreed` is True when every rank raises it (no rank is left waiting)."""

    def __init__(self, message: str, agreed: bool = False):
        super().__init__(message)
        self.agreed = agreed


class NullMetrics:
    """The metrics log of ranks other than 0: accepts everything, writes nothing."""

    def write(self, record: dict) -> None:
        pass

    def step(self, record: dict, show: bool) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def close(self) -> None:
        pass


def _quiet(_msg: str) -> None:
    pass


def note_rank_change(folder: Optional[pathlib.Path], world: int, log: Callable[[str], None]) -> None:
    """Says what stays exact when a checkpoint of one rank count is resumed with another."""
    if folder is None:
        return
    from ..train import checkpoint as ckpt

    saved = ckpt.read_state(folder, log=_quiet).get("ranks", 1)
    if saved != world:
        log(
            f"note: {folder} was written by {saved} rank(s), resuming with {world}: weights, optimizer "
            f"state, step and the data cursor carry over exactly and the token stream continues where it "
            f"stopped, but each step's global batch is now {world} rank slice(s), so the run no longer "
            f"matches an uninterrupted {saved}-rank run bit for bit"
        )


class Single:
    """One process: every call is what the trainer did before data parallelism."""

    rank, world, local_rank, is_root = 0, 1, 0, True
    stop_key = "flag"  # SIGINT sets the stop flag directly

    def start(self, trainer: Any, resume: str) -> None:
        note_rank_change(trainer._lock_and_resume(resume), 1, trainer.log)

    def exchange(self, params: Sequence[Any], loss_sum: float, stop: dict) -> float:
        return loss_sum

    def root_decides(self, flag: bool) -> bool:
        return flag

    def metrics_log(self, path: pathlib.Path, total: int, start: int) -> Any:
        from ..train.metrics import MetricsLog

        return MetricsLog(path, total, start)

    def step_stats(self) -> dict:
        return {}

    def fail(self, code: int, error: Optional[BaseException] = None) -> int:
        return code


def _span(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> 'cpu 0-2,5'."""
    runs: List[List[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "cpu " + ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _diff(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def data_fingerprint(trainer: Any) -> dict:
    """What identifies the prepared data a rank reads: meta.json and its shards' sizes."""
    out = {}
    dirs = [str(trainer.data.dir)] + [str(src["dir"]) for src in trainer.cfg.data.mixture]
    for d in dirs:
        meta = pathlib.Path(d) / "meta.json"
        shards = sorted(pathlib.Path(d).glob("*.sos"))
        out[d] = {
            "meta.json": hashlib.sha256(meta.read_bytes()).hexdigest(),
            "shards": {p.name: p.stat().st_size for p in shards},
        }
    return out


class Mpi:
    """Rank `rank` of `world` data-parallel ranks over mpi4py's COMM_WORLD."""

    stop_key = "request"  # SIGINT asks; the ranks agree in the next exchange

    def __init__(self, launch: Launch, comm: Any):
        self.launch, self.comm = launch, comm
        self.rank, self.world = comm.Get_rank(), comm.Get_size()
        self.local_rank = launch.local_rank
        self.is_root = self.rank == 0
        self.reducer: Any = None
        self.reducer_shapes: list = []
        self.small: Optional[np.ndarray] = None
        self.small_all: Optional[np.ndarray] = None
        self.last_stats = (0.0, 0)

    # ---- set-up -------------------------------------------------------------------------------
    def pin_cores(self, log: Callable[[str], None]) -> List[int]:
        """Splits the node's CPUs among its ranks (cores.py); call before the thread pool starts."""
        from mpi4py import MPI

        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        masks = node.allgather(cores.current_mask())
        mine = cores.assign(masks, node.Get_rank())
        node.Free()
        cores.apply(mine)
        everyone = self.comm.allgather((socket.gethostname(), mine))
        if self.is_root:
            log("cores per rank: " + " | ".join(f"{r}: {h} {_span(c)}" for r, (h, c) in enumerate(everyone)))
        return mine

    def agree(self, error: Optional[BaseException], what: str) -> None:
        """Every rank raises DistError if any rank failed `what` (messages by rank)."""
        errors = self.comm.allgather(None if error is None else str(error))
        bad = [(r, e) for r, e in enumerate(errors) if e is not None]
        if bad:
            if len({e for _, e in bad}) == 1:
                ranks = ", ".join(str(r) for r, _ in bad)
                raise DistError(f"{what} failed on rank {ranks}: {bad[0][1]}", agreed=True)
            detail = "; ".join(f"rank {r}: {e}" for r, e in bad)
            raise DistError(f"{what} failed: {detail}", agreed=True)

    def check_identical(self, trainer: Any) -> None:
        """Refuses ranks whose config, data or sos_rs version differ from rank 0's."""
        import sos_rs

        config = trainer.cfg.to_dict()
        config["run"].pop("threads", None)  # a per-rank choice
        try:
            ident = {"config": config, "data": data_fingerprint(trainer), "sos_rs": sos_rs.__version__}
        except OSError as e:
            ident = {"error": str(e)}
        everyone = self.comm.allgather((socket.gethostname(), ident))
        bad = []
        for r, (host, other) in enumerate(everyone):
            keys = _diff(everyone[0][1], other)
            if keys:
                shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
                bad.append(f"rank {r} on {host} differs from rank 0 in {shown}")
        if bad:
            raise DistError(
                "ranks were started with different configs or data: "
                + "; ".join(bad)
                + ". Every rank must run the same CONFIG.toml on the same prepared data",
                agreed=True,
            )

    def start(self, trainer: Any, resume: str) -> None:
        self.check_identical(trainer)
        from ..train import checkpoint as ckpt

        folder, error = None, None
        if self.is_root:
            try:
                folder = trainer._lock_and_resume(resume)
            except Exception as e:  # re-raised on every rank by agree()
                error = e
        self.agree(error, "start (run lock, resume)")
        folder = self.comm.bcast(None if folder is None else str(folder), root=0)
        error = None
        if not self.is_root and folder is not None:
            try:
                trainer._restore(pathlib.Path(folder), *ckpt.load(pathlib.Path(folder), trainer.log))
            except Exception as e:
                error = DistError(f"cannot load {folder}, which rank 0 resumes from (is run.out shared?): {e}")
        self.agree(error, "resume")
        if self.is_root:
            note_rank_change(None if folder is None else pathlib.Path(folder), self.world, trainer.log)
        self.check_weights(trainer)
        self._build_reducer(trainer.model.parameters())
        trainer.log(
            f"data parallel: {self.world} ranks ({self.launch.launcher}), {self.reducer.numel / 1e6:.2f}M "
            f"gradients in one flat f32 buffer, {len(self.reducer.buckets)} bucket(s), rank-ordered sum"
        )

    def _build_reducer(self, params: Sequence[Any]) -> None:
        """The flat buffer for `params`; rebuilt only when their shapes change (a curriculum stage
        that grows the model, which every rank does at the same step)."""
        from .reduce import GradReducer

        bucket = int(float(os.environ.get("SOS_DIST_BUCKET_MB", "8")) * 2**20 / 4)
        self.reducer_shapes = [tuple(p.shape) for p in params]
        self.reducer = GradReducer(self.comm, self.reducer_shapes, bucket_elems=bucket)
        self.small = np.zeros(2 + len(params), dtype=np.float64)
        self.small_all = np.zeros((self.world, self.small.size), dtype=np.float64)

    def check_weights(self, trainer: Any) -> None:
        """Rank 0 broadcasts a hash of weights, buffers, optimizer state, step and data cursor;
        a rank that holds anything else is refused."""
        opt, state = trainer.opt, trainer.model.state_dict()
        mine = _digest(
            *[state[k] for k in sorted(state)],
            *[m.numpy() for m in opt.m],
            *[v.numpy() for v in opt.v],
            {"step": trainer.step, "optimizer_step": opt.step_count, "belt": trainer.train_belt.state()},
        )
        root = self.comm.bcast(mine, root=0)
        self.agree(
            None if mine == root else DistError(f"weights/optimizer/cursor hash {mine} != rank 0's {root}"),
            "identical start state",
        )

    # ---- per step -----------------------------------------------------------------------------
    def exchange(self, params: Sequence[Any], loss_sum: float, stop: dict) -> float:
        """Sums gradients over ranks in rank order and returns the rank-ordered loss sum divided by
        the world size (the trainer divides by grad_accum); agrees on stopping."""
        if [tuple(p.shape) for p in params] != self.reducer_shapes:
            self._build_reducer(params)
        assert self.reducer is not None and self.small is not None and self.small_all is not None
        grads = [p.grad for p in params]
        self.reducer.pack(grads)
        self.small[0] = loss_sum
        self.small[1] = 1.0 if stop.get(self.stop_key) else 0.0
        self.small[2:] = [g is not None for g in grads]
        self.comm.Allgather(self.small, self.small_all)
        t, b = self.reducer.seconds, self.reducer.bytes_sent
        self.reducer.allreduce()
        self.last_stats = (self.reducer.seconds - t, self.reducer.bytes_sent - b)
        present = self.small_all[:, 2:].any(axis=0)
        for p, g in zip(params, self.reducer.unpack(present)):
            p.grad = g
        if self.small_all[:, 1].any():
            stop["flag"] = True
        total = 0.0
        for r in range(self.world):  # the order one process adds its micro-batch losses in
            total += float(self.small_all[r, 0])
        return total / self.world  # the trainer divides by grad_accum: the mean over all micro-batches

    def root_decides(self, flag: bool) -> bool:
        return bool(self.comm.bcast(flag, root=0))

    def metrics_log(self, path: pathlib.Path, total: int, start: int) -> Any:
        if self.is_root:
            from ..train.metrics import MetricsLog

            return MetricsLog(path, total, start)
        return NullMetrics()

    def step_stats(self) -> Dict[str, float]:
        """The last step's all-reduce: milliseconds and megabytes sent by this rank."""
        seconds, nbytes = self.last_stats
        return {"allreduce_ms": 1000 * seconds, "allreduce_mb": nbytes / 2**20}

    def fail(self, code: int, error: Optional[BaseException] = None) -> int:
        """After an error: agreed errors exit normally on every rank; any other stops the job
        (MPI_Abort), so no rank waits forever for this one."""
        if isinstance(error, DistError) and error.agreed:
            return code
        time.sleep(0.2)  # let stderr reach the launcher before the abort
        self.comm.Abort(code)
        return code
