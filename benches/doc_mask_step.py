"""Training step with and without document masks (data.doc_mask): the dense model's forward +
backward on the same batch, unmasked and with the belt-style positions/segments of documents
packed into each row, timed interleaved (medians of wall time, and of process CPU time, which a
loaded machine's time slicing does not inflate). Fully masked tiles are skipped, so the masked
step should cost no more than the unmasked one.

    python -m benches.doc_mask_step [--d 256] [--layers 4] [--seq 1024] [--batch 2] [--mean-doc 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sos_rs import DenseConfig, DenseLM, _core
from sos_rs.bench.timing import interleaved_medians


def packed_docs(rng: np.random.Generator, b: int, t: int, mean: int):
    """positions, segments [B, T] of documents with geometric lengths (mean `mean`) end to end."""
    seg = np.zeros((b, t), np.int64)
    pos = np.zeros((b, t), np.int64)
    for r in range(b):
        i, s = 0, 0
        while i < t:
            n = min(int(rng.geometric(1.0 / mean)), t - i)
            seg[r, i : i + n], pos[r, i : i + n] = s, np.arange(n)
            i, s = i + n, s + 1
    return pos, seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--mean-doc", type=int, default=300, help="mean document length in tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    _core.set_num_threads(a.threads)
    cfg = DenseConfig(
        vocab_size=a.vocab, d_model=a.d, n_layers=a.layers, n_heads=a.heads, ffn_hidden=4 * a.d, max_seq_len=a.seq
    )
    model = DenseLM(cfg)
    rng = np.random.default_rng(0)
    seq = rng.integers(0, a.vocab, (a.batch, a.seq + 1))
    ids, targets = seq[:, :-1], seq[:, 1:]
    pos, seg = packed_docs(rng, a.batch, a.seq, a.mean_doc)

    def step(masked: bool):
        def run():
            kw = {"positions": pos, "segments": seg} if masked else {}
            model.loss(ids, targets, **kw).backward()
            model.zero_grad()

        return run

    plain, masked = interleaved_medians([step(False), step(True)], a.runs)
    cpu: list = [[], []]
    for _ in range(a.runs):
        for i, f in enumerate((step(False), step(True))):
            t0 = time.process_time()
            f()
            cpu[i].append(time.process_time() - t0)
    cp, cm = (statistics.median(c) for c in cpu)
    docs = int(seg.max(1).sum() + a.batch)
    print(
        f"dense d{a.d} L{a.layers} T{a.seq} B{a.batch}, {a.threads} threads, {docs} documents "
        f"(mean {a.batch * a.seq / docs:.0f} tokens), forward+backward:\n"
        f"  wall: unmasked {plain * 1e3:.1f} ms, doc-masked {masked * 1e3:.1f} ms "
        f"(masked/unmasked {masked / plain:.3f})\n"
        f"  cpu:  unmasked {cp * 1e3:.1f} ms, doc-masked {cm * 1e3:.1f} ms (masked/unmasked {cm / cp:.3f})"
    )


if __name__ == "__main__":
    main()
