#!/usr/bin/env python3
"""Side-by-side GEMM and attention benchmark: sos_rs against numpy (OpenBLAS), torch.mm (MKL,
where torch is installed) and the matrixmultiply crate, at 1 and 2 threads, as GFLOP/s and as a
fraction of the FMA peak measured in the same run.

Each thread count runs in a child process (BLAS thread counts are fixed at import). Within a
child, every repetition measures the FMA peak and then each library at one shape, so numbers
compared were taken moments apart; the table prints medians over repetitions (ratios are
medians of per-repetition ratios). The matrixmultiply column and attention rows come from
`cargo bench --bench table -- --json`, run by this script.

    python -m scripts.bench_side_by_side [--reps 5] [--shapes qkv_proj,lm_head] [--no-cargo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, M, N, K, trans_a, trans_b): the same table as benches/common/mod.rs.
SHAPES = [
    ("qkv_proj", 2048, 1536, 512, False, True),
    ("attn_out", 2048, 512, 512, False, True),
    ("mlp_up", 2048, 1376, 512, False, True),
    ("mlp_down", 2048, 512, 1376, False, True),
    ("lm_head", 2048, 8192, 512, False, True),
    ("lm_head_dx", 2048, 512, 8192, False, False),
    ("lm_head_dw", 8192, 512, 2048, True, False),
    ("sq256", 256, 256, 256, False, False),
    ("sq512", 512, 512, 512, False, False),
    ("sq1024", 1024, 1024, 1024, False, False),
    ("sq2048", 2048, 2048, 2048, False, False),
]
MODEL = ("qkv_proj", "attn_out", "mlp_up", "mlp_down", "lm_head")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def gflops(flops, fn, budget=0.15):
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    n = max(1, int(budget / one))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return flops * n / (time.perf_counter() - t) / 1e9


def child(threads: int, reps: int, names: list[str]) -> None:
    import numpy as np

    import sos_rs
    from sos_rs import _core

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    sos_rs.set_num_threads(threads)
    isa = sos_rs.isa()
    rng = np.random.default_rng(0)
    for name, m, n, k, ta, tb in SHAPES:
        if names and name not in names:
            continue
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        sa, sb = sos_rs.tensor(a).data, sos_rs.tensor(b).data
        na, nb = (a.T if ta else a), (b.T if tb else b)
        fns = {"sos": lambda: _core.matmul(sa, sb, ta, tb), "numpy": lambda: na @ nb}
        if torch is not None:
            tA, tB = torch.from_numpy(a), torch.from_numpy(b)
            tA, tB = (tA.t() if ta else tA), (tB.t() if tb else tB)
            fns["torch"] = lambda: torch.mm(tA, tB)
        flops = 2.0 * m * n * k
        rows = []
        for _ in range(reps):
            row = {"peak": _core.fma_peak(isa, threads, 1, 30)}
            for lib, fn in fns.items():
                row[lib] = gflops(flops, fn)
            rows.append(row)
        out = {"shape": name, "threads": threads, "isa": isa}
        for key in rows[0]:
            out[key] = median([r[key] for r in rows])
        out["frac"] = median([r["sos"] / r["peak"] for r in rows])
        for lib in fns:
            if lib != "sos":
                out[f"vs_{lib}"] = median([r["sos"] / r[lib] for r in rows])
        print(json.dumps(out), flush=True)


def cargo_rows(reps: int, names: list[str]) -> list[dict]:
    """matrixmultiply and Rust-side rows (GEMM and attention) from the table bench."""
    rows = []
    for extra in ([*names] if names else []), ["attention"]:
        cmd = ["cargo", "bench", "-q", "--bench", "table", "--", "--json", "--reps", str(reps), *extra]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "SOS_QUIET": "1"})
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        rows += [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
    ap.add_argument("--no-cargo", action="store_true", help="skip matrixmultiply and attention rows")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [s for s in args.shapes.split(",") if s]
    if args.child:
        return child(args.child, args.reps, names)
    py = {}
    for th in (1, 2):
        env = {**os.environ, "SOS_QUIET": "1", "SOS_NUM_THREADS": str(th)}
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(th)
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(th), "--reps", str(args.reps), "--shapes", args.shapes],
            env=env,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            sys.exit(res.stderr)
        for line in res.stdout.splitlines():
            r = json.loads(line)
            py[(r["shape"], r["threads"])] = r
    rust = [] if args.no_cargo else cargo_rows(args.reps, names)
    mm = {(r["shape"], r["threads"]): r for r in rust if "matrixmultiply" in r}
    attn = [r for r in rust if r["shape"].startswith("attention")]

    print(
        f"GEMM, GFLOP/s (medians of {args.reps}); isa {next(iter(py.values()))['isa'] if py else '?'}; frac = sos / "
        f"FMA peak"
    )
    print("avx2: the AVX2 path's fraction of the AVX2 FMA peak (cargo table bench, same run)")
    print(
        f"{'shape':11} {'thr':>3} {'peak':>7} {'sos':>7} {'frac':>6} {'avx2':>6} {'numpy':>7} {'torch':>7} {'mmul':>7} "
        f"{'/numpy':>7} {'/torch':>7} {'/mmul':>6} {'1->2':>5}"
    )
    for name, *_ in SHAPES:
        for th in (1, 2):
            r = py.get((name, th))
            if r is None:
                continue
            m = mm.get((name, th), {})
            one = py.get((name, 1), {}).get("sos")
            scale = f"{r['sos'] / one:5.2f}" if th == 2 and one else ""
            f = lambda x, w=7, p=1: f"{x:{w}.{p}f}" if isinstance(x, float) else " " * (w - 1) + "-"  # noqa: E731
            mmr = r["sos"] / m["matrixmultiply"] if m else None
            print(
                f"{name:11} {th:>3} {f(r['peak'])} {f(r['sos'])} {f(r['frac'], 6, 3)} {f(m.get('frac256'), 6, 3)} "
                f"{f(r['numpy'])} {f(r.get('torch'))} "
                f"{f(m.get('matrixmultiply'))} {f(r.get('vs_numpy'), 7, 2)} {f(r.get('vs_torch'), 7, 2)} "
                f"{f(mmr, 6, 2)} {scale}"
            )
    model2 = [py[(s, 2)] for s in MODEL if (s, 2) in py]
    if model2:
        gm = lambda xs: float(__import__("math").prod(xs) ** (1 / len(xs)))  # noqa: E731
        print(f"model shapes, 2 threads, geometric mean: vs numpy {gm([r['vs_numpy'] for r in model2]):.2f}x", end="")
        if all("vs_torch" in r for r in model2):
            print(f", vs torch {gm([r['vs_torch'] for r in model2]):.2f}x", end="")
        if all((s, 1) in py for s in MODEL):
            print(f", 1->2 scaling {gm([py[(s, 2)]['sos'] / py[(s, 1)]['sos'] for s in MODEL]):.2f}x", end="")
        print()
    if attn:
        print("attention fwd+bwd, B=1 H=8 hd=64 (7·B·H·T²·hd flops), GFLOP/s")
        for r in attn:
            print(
                f"T={r['t']:<5} {r['threads']}t  peak {r['peak']:6.1f}  sos {r['sos']:6.1f}  frac {r['frac']:.3f}  "
                f"peak RSS growth {r['extra_bytes'] / 1e6:6.1f} MB"
            )


if __name__ == "__main__":
    main()
