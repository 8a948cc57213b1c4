"""GEMM at every model shape, sos_rs against numpy's OpenBLAS with its native kernels, 1 and 2 threads.

Shapes: the model-shape table of `sos bench` (`GEMM_SHAPES`), the backward products of each forward
shape (dx = dY·W: B as stored, K = the layer's output width; dW = dYᵀ·X: A transposed, K = tokens),
and the same for the 100M model (d 768, ffn 2048, vocabulary 32768, 2048 tokens). Both libraries
multiply the same transposed views (numpy: `np.matmul(a.T, b, out=c)`, as the backward uses them).

Each thread count runs in its own child process whose environment has OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE removed (they force older kernels) and OPENBLAS_NUM_THREADS = the thread count;
the child prints OpenBLAS's kernel ("architecture", from threadpoolctl) and refuses to run when it
is older than the host's native one (SkylakeX or newer with AVX-512; Haswell, Zen or newer on an
AVX2-only host, where sos_rs's isa is avx2). Within a child, every repetition measures the FMA peak (`_core.fma_peak`)
and then alternates the libraries with a 0.4 s pause before each (OpenBLAS's and Rayon's workers
spin after a call and would steal the other library's cores); figures are medians over the
repetitions, the ratio the median of per-repetition ratios.

    python -m benches.gemm_vs_blas [--reps 5] [--threads 1,2] [--shapes qkv_proj,m100_lm_head_dw] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

from sos_rs.bench.worker import GEMM_SHAPES

Shape = Tuple[str, int, int, int, bool, bool]
# OpenBLAS kernels with AVX-512 sgemm (threadpoolctl's "architecture", case-insensitive), and
# those that are native on an AVX2+FMA host without AVX-512 (sos_rs's isa "avx2").
NATIVE = ("skylakex", "cooperlake", "sapphirerapids")
NATIVE_AVX2 = ("haswell", "zen", "skylakex", "cooperlake", "sapphirerapids")
# 100M model: d 768, ffn 2048, vocabulary 32768, 2048 tokens per step.
M100 = (768, 2048, 32768, 2048)
# The small dense model of `benches.step_profile --presets small`: d 128, ffn 352, 16 × 128 tokens.
SMALL = (128, 352, 2048)


def forward_with_backward(prefix: str, fwd: List[Tuple[str, int, int, int]]) -> List[Shape]:
    """Each forward Y[T, out] = X[T, in]·Wᵀ with its dx = dY·W and dW = dYᵀ·X."""
    out: List[Shape] = []
    for name, t, n_out, n_in in fwd:
        out.append((f"{prefix}{name}", t, n_out, n_in, False, True))
        out.append((f"{prefix}{name}_dx", t, n_in, n_out, False, False))
        out.append((f"{prefix}{name}_dw", n_out, n_in, t, True, False))
    return out


def shapes() -> List[Shape]:
    table: List[Shape] = list(GEMM_SHAPES)
    names = {s[0] for s in table}
    for s in forward_with_backward("", [(n, m, nn, k) for n, m, nn, k, ta, tb in GEMM_SHAPES if not ta and tb]):
        if s[0] not in names:
            table.append(s)
    d, ffn, vocab, tokens = M100
    fwd = [
        ("qkv_proj", tokens, 3 * d, d),
        ("attn_out", tokens, d, d),
        ("mlp_up", tokens, ffn, d),
        ("mlp_down", tokens, d, ffn),
        ("lm_head", tokens, vocab, d),
    ]
    d, ffn, tokens = SMALL
    small = [
        ("qkv_proj", tokens, 3 * d, d),
        ("attn_out", tokens, d, d),
        ("mlp_up", tokens, 2 * ffn, d),
        ("mlp_down", tokens, d, ffn),
    ]
    return table + forward_with_backward("m100_", fwd) + forward_with_backward("small_", small)


def openblas_arch() -> str:
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") == "openblas":
            return str(info.get("architecture", "?"))
    return "none"


def child(threads: int, reps: int, names: List[str]) -> None:
    import numpy as np

    import sos_rs
    from sos_rs import _core

    arch = openblas_arch()
    isa = sos_rs.isa()
    native = NATIVE_AVX2 if isa == "avx2" else NATIVE
    if arch.lower() not in native:
        sys.exit(f"numpy's OpenBLAS runs the {arch!r} kernel, not one native to this {isa} host ({native})")
    sos_rs.set_num_threads(threads)
    rng = np.random.default_rng(0)
    for name, m, n, k, ta, tb in shapes():
        if names and name not in names:
            continue
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        sa, sb = sos_rs.tensor(a).data, sos_rs.tensor(b).data
        na, nb = (a.T if ta else a), (b.T if tb else b)
        c = np.empty((m, n), np.float32)
        flops = 2.0 * m * n * k
        fns = {"sos": lambda: _core.matmul(sa, sb, ta, tb), "openblas": lambda: np.matmul(na, nb, out=c)}
        # Enough calls per block for ~0.25 s, at least 2.
        per = {}
        for lib, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            per[lib] = max(2, int(0.25 / max(time.perf_counter() - t0, 1e-6)))
        rows: List[Dict[str, float]] = []
        for _ in range(reps):
            time.sleep(0.4)
            row = {"peak": _core.fma_peak(isa, threads, 1, 30)}
            for lib, fn in fns.items():
                time.sleep(0.4)
                fn()
                ts = []
                for _ in range(per[lib]):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                row[lib] = flops / statistics.median(ts) / 1e9
            rows.append(row)
        out: Dict[str, Any] = {"shape": name, "m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb}
        out.update({"threads": threads, "isa": isa, "openblas_arch": arch})
        for key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
        out["frac_sos"] = statistics.median(r["sos"] / r["peak"] for r in rows)
        out["frac_openblas"] = statistics.median(r["openblas"] / r["peak"] for r in rows)
        out["ratio"] = statistics.median(r["sos"] / r["openblas"] for r in rows)
        print(json.dumps(out), flush=True)


def _thread_counts(text: str) -> List[int]:
    """--threads: comma-separated positive integers (an argparse error, not a traceback)."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=_thread_counts, default="1,2", help="comma-separated thread counts")
    ap.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per row instead of the table")
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [s for s in args.shapes.split(",") if s]
    if args.list:
        for s in shapes():
            print(*s)
        return
    unknown = set(names) - {s[0] for s in shapes()}
    if unknown:
        sys.exit(f"unknown shapes {sorted(unknown)}; --list prints them")
    if args.child:
        return child(args.child, args.reps, names)
    rows = []
    for th in args.threads:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        env.update(SOS_QUIET="1", SOS_NUM_THREADS=str(th), OPENBLAS_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th))
        cmd = [sys.executable, "-m", "benches.gemm_vs_blas", "--child", str(th), "--reps", str(args.reps)]
        with subprocess.Popen([*cmd, "--shapes", args.shapes], env=env, stdout=subprocess.PIPE, text=True) as p:
            assert p.stdout is not None
            for line in p.stdout:
                r = json.loads(line)
                rows.append(r)
                if args.json:
                    print(line, end="", flush=True)
                else:
                    if len(rows) == 1:
                        print(
                            f"GEMM GFLOP/s, medians of {args.reps}; isa {r['isa']}; numpy OpenBLAS kernel "
                            f"{r['openblas_arch']}; frac = share of the FMA peak measured in the same run"
                        )
                        print(
                            f"{'shape':20} {'m':>5} {'n':>5} {'k':>5} {'op':>3} {'thr':>3} {'peak':>6} {'sos':>6} "
                            f"{'frac':>5} {'oblas':>6} {'frac':>5} {'sos/ob':>6}"
                        )
                    op = ("T" if r["trans_a"] else "N") + ("T" if r["trans_b"] else "N")
                    print(
                        f"{r['shape']:20} {r['m']:5} {r['n']:5} {r['k']:5} {op:>3} {th:3} {r['peak']:6.1f} "
                        f"{r['sos']:6.1f} {r['frac_sos']:5.2f} {r['openblas']:6.1f} {r['frac_openblas']:5.2f} "
                        f"{r['ratio']:6.2f}",
                        flush=True,
                    )
        if p.returncode != 0:
            sys.exit(p.returncode)
    if rows and not args.json:
        for th in sorted({r["threads"] for r in rows}):
            rs = [r["ratio"] for r in rows if r["threads"] == th]
            gm = statistics.geometric_mean(rs)
            print(f"{th} thread(s): sos/OpenBLAS geometric mean {gm:.2f}, min {min(rs):.2f}")


if __name__ == "__main__":
    main()
