"""The routed families against a dense model of the same parameter count: training tokens/s,
share of the FMA peak on active FLOPs (sos_rs/bench/flops.py) and peak RSS, each model in its own
process (the `sos bench` worker), the workers alternating, the peak measured in the same run.

    python -m benches.routed_vs_dense [--families moa discoverlm sagi] [--presets small medium]
                                      [--steps 6] [--repeats 2] [--threads 2]

The dense twin keeps the family preset's vocabulary, width, heads, sequence, batch and tied
embeddings and layer count, and takes the MLP width (a multiple of 32) that brings its parameter
count closest to the family's. Prints one row per model (medians over --repeats workers) and the RSS
ratio family / dense twin.
"""

from __future__ import annotations

import argparse
import statistics

import sos_rs
from sos_rs import _core
from sos_rs.bench.presets import preset
from sos_rs.bench.runner import run_worker
from sos_rs.models import build_model


def dense_twin(family: str, cfg: dict) -> dict:
    """Dense config fields with the parameter count closest to the family model's."""
    target = build_model(family, cfg).num_parameters()
    base = dict(
        vocab_size=cfg["vocab_size"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        max_seq_len=cfg["max_seq_len"],
        tie_embeddings=True,
    )
    best = None
    for ffn in range(32, 32 * cfg["d_model"] + 1, 32):
        c = dict(base, n_layers=cfg["n_layers"], ffn_hidden=ffn)
        n = _dense_params(c)
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, c)
    assert best is not None
    return best[1]


def _dense_params(c: dict) -> int:
    d, f, v, layers = c["d_model"], c["ffn_hidden"], c["vocab_size"], c["n_layers"]
    return v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["moa", "discoverlm", "sagi"])
    ap.add_argument("--presets", nargs="+", default=["small", "medium"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sos_rs.set_num_threads(args.threads)
    peaks = [_core.fma_peak(sos_rs.isa(), args.threads, 3, 100)]
    print(f"sos_rs {sos_rs.isa()}, {args.threads} threads")
    for name in args.presets:
        for family in args.families:
            found = preset(family, name)
            if found is None:
                continue
            cfg, batch = found
            twin = dense_twin(family, cfg)
            rows = {family: [], "dense twin": []}
            for _ in range(args.repeats):
                for label, fam, c in ((family, family, cfg), ("dense twin", "dense", twin)):
                    spec = dict(kind="train", framework="sos", family=fam, preset=name, config=c, batch=batch)
                    spec.update(threads=args.threads, steps=args.steps, warmup=args.warmup)
                    rows[label].append(run_worker(spec))
                peaks.append(_core.fma_peak(sos_rs.isa(), args.threads, 3, 100))
            peak = max(peaks)
            rss = {}
            for label, runs in rows.items():
                tok = statistics.median(r["tokens_per_s"] for r in runs)
                gf = statistics.median(r["gflops"] for r in runs)
                rss[label] = statistics.median(r["peak_rss_mb"] for r in runs)
                extra = f" (L{twin['n_layers']}, ffn {twin['ffn_hidden']})" if label == "dense twin" else ""
                print(
                    f"{name:6s} {label:11s} {runs[0]['params'] / 1e6:6.2f}M  active "
                    f"{100 * (runs[0]['active_param_fraction'] or 1.0):5.1f}%  {tok:8.0f} tok/s  {gf:6.1f} GFLOP/s  "
                    f"{100 * gf / peak:5.1f}% of peak {peak:.0f}  RSS {rss[label]:6.0f} MB{extra}"
                )
            print(f"{name:6s} {family}: RSS / dense twin {rss[family] / rss['dense twin']:.2f}x")


if __name__ == "__main__":
    main()
