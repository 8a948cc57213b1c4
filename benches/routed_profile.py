"""Where a training step of a family goes, per Rust op: every `sos_rs._core` function is wrapped
in a timer, so the table shows the time spent inside each op (forward and backward calls apart)
and what is left, the Python between the calls (tape, routing bookkeeping, per-path loops).

    python -m benches.routed_profile --family discoverlm --preset medium [--steps 4] [--top 25]

The step is the `sos bench` step (same presets, data and optimizer). Timings are wall clock of
the calling thread; the ops themselves run on every thread.
"""

from __future__ import annotations

import argparse
import collections
import time

import sos_rs
from sos_rs import _core, optim
from sos_rs.bench.presets import preset
from sos_rs.bench.worker import _batches
from sos_rs.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="discoverlm")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shapes", action="store_true", help="split matmul time by operand shapes")
    args = ap.parse_args()
    if args.threads:
        sos_rs.set_num_threads(args.threads)
    found = preset(args.family, args.preset)
    if found is None:
        raise SystemExit(f"no preset {args.preset!r} for family {args.family!r}")
    cfg, batch = found
    model = build_model(args.family, cfg)
    seq = model.config.max_seq_len
    data = _batches(model.config.vocab_size, batch, seq, args.steps + 1)
    has_triples = hasattr(model, "sample_triples")
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()

    def wrap(name, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            key = name
            if args.shapes and name == "matmul":
                key = f"matmul {list(a[0].shape)}{'T' if a[2] else ''} x {list(a[1].shape)}{'T' if a[3] else ''}"
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.perf_counter() - t0
                calls[key] += 1

        return timed

    originals = {}
    for name in dir(_core):
        fn = getattr(_core, name)
        if callable(fn) and not isinstance(fn, type) and not name.startswith("_"):
            originals[name] = fn
            setattr(_core, name, wrap(name, fn))

    def step(ids, targets):
        opt.zero_grad()
        tr = model.sample_triples(batch * seq) if has_triples else None
        loss = model.loss(ids, targets, tr) if has_triples else model.loss(ids, targets)
        loss.backward()
        optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()

    step(*data[0])  # warm-up
    spent.clear()
    calls.clear()
    t0 = time.perf_counter()
    for ids, targets in data[1:]:
        step(ids, targets)
    total = (time.perf_counter() - t0) / args.steps
    for name, fn in originals.items():
        setattr(_core, name, fn)
    inside = sum(spent.values()) / args.steps
    print(
        f"{args.family} {args.preset}: {model.num_parameters() / 1e6:.2f}M params, batch {batch} x {seq}, "
        f"{sos_rs.num_threads()} threads; step {1e3 * total:.1f} ms, {batch * seq / total:.0f} tok/s; "
        f"inside Rust ops {1e3 * inside:.1f} ms, Python between them {1e3 * (total - inside):.1f} ms "
        f"({100 * (total - inside) / total:.0f}%)"
    )
    for name, s in spent.most_common(args.top):
        per = s / args.steps
        print(f"  {name:44s} {1e3 * per:8.2f} ms  {100 * per / total:5.1f}%  {calls[name] // args.steps:5d} calls/step")


if __name__ == "__main__":
    main()
