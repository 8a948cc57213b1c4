"""The governor's cost at default settings relative to the training step of a ~14M-parameter
model (issue 9: at most 2%). Times `Governor.step` (one reading of every layer and router,
plus control) and a training step (forward, backward, AdamW) of an MoA model, then reports
governor time / (governor.every × step time).

    python -m benches.governor_cost [--family moa] [--reps 5]"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="moa", choices=("moa", "dense"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    from sos_rs import optim
    from sos_rs.models import build_model
    from sos_rs.train.governor import Governor, GovernorConfig

    if args.family == "moa":
        cfg = dict(vocab_size=8192, d_model=320, n_layers=6, n_heads=8, max_seq_len=args.seq, ffn_rank=32)
    else:
        cfg = dict(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, max_seq_len=args.seq)
    model = build_model(args.family, cfg)
    n = model.num_parameters()
    opt = optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))
    steps = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        model.loss(ids, np.roll(ids, -1, 1)).backward()
        opt.step()
        opt.zero_grad()
        steps.append(time.perf_counter() - t)
    gcfg = GovernorConfig(enabled=True)
    gov = Governor(gcfg, model, seed=0)
    reads = []
    for i in range(args.reps + 1):
        t = time.perf_counter()
        gov.step(gcfg.warmup + i, ids)  # past warmup: the control law runs too
        reads.append(time.perf_counter() - t)
    step_s, read_s = float(np.median(steps[1:])), float(np.median(reads[1:]))
    share = read_s / (gcfg.every * step_s)
    print(f"{args.family}: {n / 1e6:.1f}M parameters, batch {args.batch}x{args.seq}")
    print(f"training step {step_s * 1e3:.0f} ms | governor reading {read_s * 1e3:.1f} ms every {gcfg.every} steps")
    print(f"governor cost: {100 * share:.2f}% of step time (target <= 2%)")


if __name__ == "__main__":
    main()
