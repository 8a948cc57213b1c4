"""Belt throughput from mmap against what a dense training step consumes (issue goal: >= 100x),
and the belt's share of step time inside a real training loop (SPEC §5: < 1%).

  python -m benches.belt_throughput                  # 50M-token shard, 5 repeats, 2 threads
  python -m benches.belt_throughput --tokens 10000000 --repeats 3

1. A synthetic shard (uint16, vocab 4096, log-normal document lengths, mean ~400 tokens) is
   written with ShardWriter and opened with verification (the CRC pass is timed too).
2. Belt tokens/s (B*T input tokens per batch) for several (T, B), with and without prefetch and
   document masks: median over repeats of >= 0.5 s of next_batch() calls.
3. The dense baseline (benches/train_vs_torch.py case a: d=128, 4 layers, 4 heads, T=128, B=16,
   vocab 4096): median forward + backward + clip + AdamW step time, and the time spent waiting
   in next_batch() when the belt (prefetch 2) feeds that loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import sos_rs
from sos_rs import DenseConfig, DenseLM, optim
from sos_rs.data import Belt, ShardWriter

CASE_A = dict(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, max_seq_len=128)
CASE_A_BATCH = 16


def write_shard(path: Path, n_tokens: int, vocab: int = 4096, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with ShardWriter(str(path), vocab, 0) as w:
        left = n_tokens
        while left > 0:
            lens = np.maximum(1, rng.lognormal(5.5, 1.0, 4096).astype(np.int64))
            lens = lens[np.cumsum(lens) <= left] if lens.sum() > left else lens
            if len(lens) == 0:
                lens = np.array([left])
            toks = rng.integers(1, vocab, int(lens.sum()), dtype=np.uint32)
            w.add_documents(toks, lens)
            left -= int(lens.sum())


def belt_rate(path: str, t: int, b: int, prefetch: int, doc_mask: bool, min_secs: float = 0.5) -> float:
    belt = Belt(path, seq_len=t, batch_size=b, prefetch=prefetch, doc_mask=doc_mask, verify=False)
    belt.next_batch()  # start-up (thread spawn, first order) is not throughput
    n, t0 = 0, time.perf_counter()
    while True:
        belt.next_batch()
        n += 1
        secs = time.perf_counter() - t0
        if secs >= min_secs and n >= 20:
            return n * b * t / secs


def step_times(path: str, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """(step seconds, seconds waiting in next_batch) for the dense case-a loop fed by a belt."""
    model = DenseLM(DenseConfig(**CASE_A, seed=0))
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    belt = Belt(path, seq_len=CASE_A["max_seq_len"], batch_size=CASE_A_BATCH, prefetch=2, verify=False)
    steps_s, waits = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        ids, targets = belt.next_batch()
        t1 = time.perf_counter()
        opt.zero_grad()
        loss = model.loss(ids, targets)
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        loss.item()
        t2 = time.perf_counter()
        if i >= warmup:
            steps_s.append(t2 - t0)
            waits.append(t1 - t0)
    return steps_s, waits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    sos_rs.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.sos")
        t0 = time.perf_counter()
        write_shard(Path(path), args.tokens)
        print(
            f"wrote {args.tokens:,} tokens ({Path(path).stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        opens = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            Belt(path, 128, 16, prefetch=0, verify=True)
            opens.append(time.perf_counter() - t0)
        print(
            f"open with verification (CRC-32 + token range): median {statistics.median(opens):.3f} s "
            f"= {Path(path).stat().st_size / 1e6 / statistics.median(opens):.0f} MB/s"
        )

        print("\nbelt throughput (input tokens/s), median of", args.repeats)
        print(f"{'T':>6}{'B':>5}{'prefetch':>10}{'doc_mask':>10}{'Mtok/s':>10}")
        rates = {}
        for t, b in [(128, 16), (256, 8), (1024, 32)]:
            for prefetch in (0, 2):
                for mask in (False, True):
                    r = statistics.median(belt_rate(path, t, b, prefetch, mask) for _ in range(args.repeats))
                    rates[(t, b, prefetch, mask)] = r
                    print(f"{t:>6}{b:>5}{prefetch:>10}{str(mask):>10}{r / 1e6:>10.1f}")

        steps, waits = [], []
        for _ in range(max(1, args.repeats // 2)):
            s, w = step_times(path, args.steps, warmup=3)
            steps.append(statistics.median(s))
            waits.append(statistics.median(w))
        step = statistics.median(steps)
        consume = CASE_A_BATCH * CASE_A["max_seq_len"] / step
        belt = rates[(128, 16, 0, False)]
        print(
            f"\ndense case a (d=128, 4 layers, T=128, B=16, vocab 4096, {args.threads} threads): "
            f"median step {step * 1e3:.1f} ms = {consume:,.0f} tokens/s"
        )
        print(f"belt (T=128, B=16, no prefetch) / step consumption = {belt / consume:,.0f}x")
        print(
            f"waiting in next_batch() with prefetch 2 inside the loop: median {statistics.median(waits) * 1e6:.0f} us "
            f"= {100 * statistics.median(waits) / step:.3f}% of the step"
        )


if __name__ == "__main__":
    main()
