"""The governor's thermometer against scipy: squared L2-star discrepancy of N points in [0,1]^d,
`sos_rs.governor.l2star_sq` (Rust, Warnock's formula, f64) vs
`scipy.stats.qmc.discrepancy(method="L2-star") ** 2`, interleaved medians, 1 and 2 threads
(issue 9's goal: at least 20x scipy at N = 2048, d = 16 on 2 threads).

    python -m benches.discrepancy [--n 2048] [--d 16] [--runs 15]"""

from __future__ import annotations

import argparse

import numpy as np

import sos_rs
from sos_rs import governor

from .timing import interleaved_medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    try:
        from scipy.stats import qmc
    except ImportError:
        raise SystemExit("benches.discrepancy needs scipy (pip install -e .[test])") from None
    x = np.random.default_rng(0).random((args.n, args.d))
    ours = governor.l2star_sq(x)
    theirs = qmc.discrepancy(x, method="L2-star") ** 2
    print(
        f"N={args.n} d={args.d}: D² ours {ours:.12e}, scipy {theirs:.12e}, rel. diff {abs(ours - theirs) / theirs:.1e}"
    )
    for threads in (1, 2):
        sos_rs.set_num_threads(threads)
        t_ours, t_scipy = interleaved_medians(
            [lambda: governor.l2star_sq(x), lambda: qmc.discrepancy(x, method="L2-star")], args.runs
        )
        print(
            f"{threads} thread(s): sos_rs {1e3 * t_ours:7.2f} ms   scipy {1e3 * t_scipy:7.2f} ms   "
            f"speed-up {t_scipy / t_ours:5.1f}x"
        )


if __name__ == "__main__":
    main()
