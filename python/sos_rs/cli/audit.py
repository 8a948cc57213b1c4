"""`sos audit RUN [RUN ...]`: per run the family, parameters, active-parameter fraction per
token (as measured in training), tokens seen, CPU-hours, cost and validation bits per byte,
beside the paper's $1.60 per model and 0.02–7% active; with `--dense RUN`, each run's bits per
byte against that dense run's after the same CPU-seconds."""

from __future__ import annotations

import json
import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="cost, sparsity and bits per byte of trained runs", description=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by sos train")
    p.add_argument("--dense", metavar="RUN", help="a dense run to compare with at the same compute")
    p.add_argument("--price-per-hour", type=float, help="machine price per wall-clock hour (overrides the runs')")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.audit import AuditError, audit, format_report
    from ..train.checkpoint import CheckpointError

    if args.price_per_hour is not None and args.price_per_hour < 0:
        print("sos audit: --price-per-hour must not be negative", file=sys.stderr)
        return 2
    try:
        res = audit(args.runs, args.dense, args.price_per_hour)
    except (AuditError, CheckpointError, OSError, ValueError) as e:
        print(f"sos audit: {e}", file=sys.stderr)
        return 2
    print(format_report(res))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    return 0
