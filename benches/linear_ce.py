"""The output projection fused with cross-entropy (loss, dx and dW in one call), at the bench models'
shapes: sos_rs's row blocks (the default cut) against its vocabulary walk (the cut it used before
row blocks, which computes every logit twice) and PyTorch's linear + cross-entropy + backward,
same process, same threads, same data.

    python -m benches.linear_ce [--shapes small medium m100] [--runs 9] [--threads 2] [--no-torch]

Shapes (tokens × d_model × vocabulary): small 2048×128×4096 and medium 2048×384×8192 (the dense
`sos bench` presets, one row block each) and m100 2048×768×32768 (the 100M model: four row blocks
of 512, or four vocabulary chunks of 8192). The implementations alternate in blocks with a pause
before each (`interleaved_medians`); figures are medians. GFLOP/s counts the three GEMMs (logits,
dx, dW: 6·N·D·V), whatever an implementation recomputes; "of peak" divides by the FMA peak
(`_core.fma_peak`) measured in the same run, before the timings.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import numpy as np

from benches.timing import interleaved_medians
from sos_rs import _core

SHAPES: Dict[str, Tuple[int, int, int]] = {
    "small": (2048, 128, 4096),
    "medium": (2048, 384, 8192),
    "m100": (2048, 768, 32768),
}


def vocabulary_walk_chunk(n: int, v: int) -> int:
    """The vocabulary chunk the walk used as the default before row blocks: [n, chunk] logits of at
    most 64 MiB, a multiple of 64; the whole vocabulary (then row blocks) when that fits."""
    fit = (64 << 20) // 4 // n
    return v if fit >= v else max(64, fit // 64 * 64)


def torch_step(x: np.ndarray, w: np.ndarray, t: np.ndarray) -> Callable[[], object]:
    import torch

    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tt = torch.tensor(t)

    def step() -> object:
        xt.grad = wt.grad = None
        loss = torch.nn.functional.cross_entropy(xt @ wt.T, tt)
        loss.backward()
        return loss

    return step


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--runs", type=int, default=9, help="timed calls per implementation (default 9)")
    ap.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: sos_rs default)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.threads:
        _core.set_num_threads(args.threads)
    threads = _core.num_threads()
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            print("PyTorch is not installed: its column is skipped (pip install torch)")
            torch_ok = False
    print(f"{threads} thread(s)")
    print(f"{'shape':7} {'N×D×V':>17} {'implementation':16} {'ms':>8} {'GFLOP/s':>8} {'of peak':>8} {'vs rows':>8}")
    rng = np.random.default_rng(0)
    rows = []
    peak = 0.0
    for name in args.shapes:
        peak = max(peak, _core.fma_peak(threads=threads))
        n, d, v = SHAPES[name]
        x = (rng.standard_normal((n, d)) * 0.5).astype(np.float32)
        w = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
        t = rng.integers(0, v, n).astype(np.int64)
        xs, ws = _core.Tensor(x), _core.Tensor(w)
        impls: Dict[str, Callable[[], object]] = {
            "sos row blocks": lambda: _core.linear_cross_entropy(xs, ws, t, v, True),
        }
        walk = vocabulary_walk_chunk(n, v)
        if walk < v:
            impls[f"sos vocab {walk}"] = lambda: _core.linear_cross_entropy(xs, ws, t, walk, True)
        if torch_ok:
            impls["torch"] = torch_step(x, w, t)
        secs = interleaved_medians(list(impls.values()), args.runs)
        flops = 6.0 * n * d * v
        rows += [(name, f"{n}×{d}×{v}", label, s, flops / s / 1e9, s / secs[0]) for label, s in zip(impls, secs)]
    peak = max(peak, _core.fma_peak(threads=threads))
    for name, dims, label, s, g, rel in rows:
        print(f"{name:7} {dims:>17} {label:16} {s * 1e3:8.1f} {g:8.1f} {g / peak:8.1%} {rel:8.2f}")
    print(f"FMA peak {peak:.1f} GFLOP/s ({threads} thread(s), highest reading of this run)")


if __name__ == "__main__":
    main()
