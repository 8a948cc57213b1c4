"""The deterministic gradient all-reduce of data-parallel training.

All gradients live in one flat float32 buffer, allocated once with the receive and sum buffers
(`GradReducer.__init__`); a step copies each parameter's gradient into its slice, reduces, and
hands each parameter its slice of the result. The buffer is cut into buckets; each bucket is
reduced in three moves:

1. all-to-all: rank j receives chunk j of the bucket from every rank, laid out in rank order;
2. rank j sums its W copies strictly in rank order, ((g0 + g1) + g2) + ..., in float32;
3. all-gather: every rank receives every summed chunk.

Step 2 is the only arithmetic and it is the same chain of IEEE additions that one process with
grad_accum = W performs when backward adds micro-batch k's gradient to `.grad` (autograd.py:
`grad = g0`, then `grad = add(grad, g_k)`), so W ranks give bit-identical gradients and weights,
and every run gives the same bits. MPI's own reductions (MPI_Allreduce, ring or tree) fix no
summation order across sizes and algorithms, so none is used. The moves are pure data movement
and cost the same 2(W-1)/W of the buffer per rank as a ring all-reduce.

Buckets pipeline: the all-to-all of bucket b+1 and the all-gather of bucket b-1 are in flight
while bucket b is summed. The reduction starts after the whole backward pass (autograd has no
per-parameter hook); ARCHITECTURE.md gives the measurement that says why that is enough here."""

from __future__ import annotations

import time
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core

DEFAULT_BUCKET_ELEMS = 2 * 2**20  # 8 MiB of float32 per bucket


def _split(n: int, parts: int) -> Tuple[np.ndarray, np.ndarray]:
    """Counts and displacements of `n` elements cut into `parts` near-equal contiguous chunks."""
    base, extra = divmod(n, parts)
    counts = np.array([base + (1 if j < extra else 0) for j in range(parts)], dtype=np.int64)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return counts, displs


class GradReducer:
    """Sums the gradients of `shapes` (in parameter order) over the ranks of `comm` (an mpi4py
    communicator) in rank order. `timings` accumulates seconds and bytes for the benchmark."""

    def __init__(self, comm: Any, shapes: Sequence[Sequence[int]], bucket_elems: int = DEFAULT_BUCKET_ELEMS):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.world, self.rank = comm.Get_size(), comm.Get_rank()
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        self.flat = np.zeros(self.numel, dtype=np.float32)  # gradients in, sums out
        bucket_elems = max(int(bucket_elems), self.world)
        self.buckets = [(s, min(s + bucket_elems, self.numel)) for s in range(0, self.numel, bucket_elems)]
        self.plans = []  # per bucket: (send counts/displs, my received layout)
        for s, e in self.buckets:
            counts, displs = _split(e - s, self.world)
            mine = int(counts[self.rank])
            recv_counts = np.full(self.world, mine, dtype=np.int64)
            recv_displs = np.arange(self.world, dtype=np.int64) * mine
            self.plans.append((counts, displs, recv_counts, recv_displs))
        biggest = max((int(p[0][self.rank]) for p in self.plans), default=0)
        self.recv = [np.zeros(self.world * biggest, dtype=np.float32) for _ in range(2)]
        self.acc = [np.zeros(biggest, dtype=np.float32) for _ in range(2)]
        self.seconds = 0.0
        self.bytes_sent = 0
        self.calls = 0

    # ---- the flat buffer -------------------------------------------------------------------------
    def pack(self, grads: Sequence[Optional[_core.Tensor]]) -> None:
        """Copies each gradient into its slice of the flat buffer (zeros for None)."""
        for i, g in enumerate(grads):
            dst = self.flat[self.offsets[i] : self.offsets[i + 1]]
            if g is None:
                dst.fill(0.0)
            else:
                dst[...] = g.numpy().reshape(-1)

    def unpack(self, present: Sequence[bool]) -> List[Optional[_core.Tensor]]:
        """The reduced gradient of each parameter (None where no rank had one)."""
        out: List[Optional[_core.Tensor]] = []
        for i, shape in enumerate(self.shapes):
            if not present[i]:
                out.append(None)
                continue
            out.append(_core.Tensor(self.flat[self.offsets[i] : self.offsets[i + 1]].reshape(shape)))
        return out

    # ---- the reduction ---------------------------------------------------------------------------
    def _start_exchange(self, b: int):
        s, e = self.buckets[b]
        counts, displs, recv_counts, recv_displs = self.plans[b]
        F = self.MPI.FLOAT
        recv = self.recv[b % 2]
        return self.comm.Ialltoallv([self.flat[s:e], (counts, displs), F], [recv, (recv_counts, recv_displs), F])

    def _sum(self, b: int) -> np.ndarray:
        """Rank j's chunk of bucket b: its W received copies added in rank order."""
        mine = int(self.plans[b][0][self.rank])
        recv, acc = self.recv[b % 2], self.acc[b % 2][:mine]
        acc[...] = recv[:mine]
        for k in range(1, self.world):
            np.add(acc, recv[k * mine : (k + 1) * mine], out=acc)
        return acc

    def _start_gather(self, b: int, acc: np.ndarray):
        s, e = self.buckets[b]
        counts, displs = self.plans[b][0], self.plans[b][1]
        F = self.MPI.FLOAT
        return self.comm.Iallgatherv([acc, F], [self.flat[s:e], (counts, displs), F])

    def allreduce(self) -> None:
        """Replaces the flat buffer with its rank-ordered sum over all ranks."""
        t0 = time.perf_counter()
        n = len(self.buckets)
        gathers: List[Any] = [None, None]  # the gather of bucket b still reads acc[b % 2]
        exchange = self._start_exchange(0) if n else None
        for b in range(n):
            assert exchange is not None
            exchange.Wait()
            if gathers[b % 2] is not None:  # acc[b % 2] is free once bucket b-2's gather is done
                gathers[b % 2].Wait()
            if b + 1 < n:  # recv[(b+1) % 2] was last read by bucket b-1's sum, which is done
                exchange = self._start_exchange(b + 1)
            gathers[b % 2] = self._start_gather(b, self._sum(b))
        for g in gathers:
            if g is not None:
                g.Wait()
        self.seconds += time.perf_counter() - t0
        self.bytes_sent += 2 * 4 * (self.numel - self.numel // self.world)  # all-to-all + all-gather
        self.calls += 1
