"""`sos plot RUN`: write RUN/plot.png (loss, learning rate, throughput)."""

from __future__ import annotations

import pathlib
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="plot a run's metrics to PNG", description=__doc__)
    p.add_argument("run", help="run folder (with metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default RUN/plot.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..plot import plot_run

    run_dir = pathlib.Path(args.run)
    try:
        out = plot_run(run_dir, pathlib.Path(args.out) if args.out else run_dir / "plot.png")
    except (FileNotFoundError, ValueError) as e:
        print(f"sos plot: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
