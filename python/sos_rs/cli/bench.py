"""`sos bench`: measure this machine. The FMA peak (AVX2 and AVX-512), GEMM at model shapes
and attention forward+backward (GFLOP/s and fraction of the peak), then a training step of every
registered family at the small and medium presets: tokens/s, fraction of peak, peak RSS, each in
its own process. `--vs-torch` runs the same models in PyTorch, alternating with sos_rs and
pausing between them. FLOP counts: sos_rs/bench/flops.py."""

from __future__ import annotations

import json
import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure this machine: FMA peak, GEMM, attention, training steps", description=__doc__
    )
    p.add_argument("--quick", action="store_true", help="small presets, few steps: under a minute")
    p.add_argument("--vs-torch", action="store_true", help="also run each model in PyTorch, side by side")
    p.add_argument("--threads", type=int, default=0, help="threads of both libraries (default: one per core)")
    p.add_argument("--families", nargs="+", default=[], metavar="FAMILY", help="families to train (default: all)")
    p.add_argument(
        "--presets",
        nargs="+",
        default=[],
        metavar="PRESET",
        help="small, medium (the default) and/or large (dense 135M, T 1024: minutes)",
    )
    p.add_argument("--steps", type=int, default=0, help="timed steps per worker (default 3 quick, 8 otherwise)")
    p.add_argument("--repeats", type=int, default=0, help="workers per model and library (default 1 quick, 2)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench.runner import BenchConfig, BenchError, format_report, run_bench

    if args.threads < 0 or args.steps < 0 or args.repeats < 0:
        print("sos bench: --threads, --steps and --repeats must not be negative", file=sys.stderr)
        return 2
    if args.json and not pathlib.Path(args.json).resolve().parent.is_dir():
        # checked before the minutes of measuring, not after
        print(f"sos bench: cannot write {args.json}: its folder does not exist", file=sys.stderr)
        return 2
    cfg = BenchConfig(
        quick=args.quick,
        vs_torch=args.vs_torch,
        threads=args.threads,
        families=args.families,
        presets=args.presets,
        steps=args.steps,
        repeats=args.repeats,
    )
    try:
        res = run_bench(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except BenchError as e:
        print(f"sos bench: {e}", file=sys.stderr)
        return 2
    print(format_report(res))
    if args.json:
        try:
            pathlib.Path(args.json).write_text(json.dumps(res, indent=1))
        except OSError as e:
            print(f"sos bench: cannot write {args.json}: {e.strerror or e}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    failed = [r for r in res["train"] if "error" in r["sos"]] or ("error" in res["machine"])
    return 1 if failed else 0
