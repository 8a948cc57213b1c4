"""SPEC §9: the relative error ‖ŷ − y‖ / ‖y‖ of low-precision arithmetic against a float64
reference, (a) for one matrix product and (b) for stacks of dense blocks (forward output and
every parameter gradient), median over seeds; the f16/f32 and bf16/f32 ratios beside the
paper's 5,810× (one operation) and 23,225× (at depth).

(a) One product Y = X·W, X [rows, d], W [d, d], entries N(0, 1/d) drawn in float64; each variant
rounds X and W to its input format and forms each output as a sequential sum over k = 0..d-1:
- `f16 (f16 acc)`: acc ← round16(acc + x·w), a fused multiply-add in float16 (`formats.fma`);
- `f16 (f32 acc)`, `bf16 (f32 acc)`: acc ← round32(acc + x·w) (the product is exact in float32),
  and the result rounded to the input format, as mixed-precision GEMMs store it;
- `f32`: acc ← round32(acc + x·w), a float32 fused multiply-add;
- `f32 (numpy)`: numpy's own float32 matmul (OpenBLAS sgemm, its own order) as a check row.
(b) See `block.py` for the arithmetic of a format; f16 and bf16 accumulate in float32 there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import block
from .formats import BFLOAT16, FLOAT16, FLOAT32, Format, fma

PAPER_SINGLE_OP = 5810.0
"""The paper's f16/f32 error ratio for one operation."""
PAPER_AT_DEPTH = 23225.0
"""The paper's f16/f32 error ratio at depth."""
AGREEMENT = 2.0
"""A claim is 'reproduced' when measured / claimed lies within [1/AGREEMENT, AGREEMENT]."""

SINGLE_VARIANTS = ("f16 (f16 acc)", "f16 (f32 acc)", "bf16 (f32 acc)", "f32", "f32 (numpy)")
STACK_VARIANTS = {"f16": FLOAT16, "bf16": BFLOAT16, "f32": FLOAT32}


@dataclass
class StudyConfig:
    seeds: int = 100
    """Seeds; every figure is the median over them."""
    d: int = 512
    """Inner and output dimension of the single product."""
    rows: int = 32
    """Rows of X in the single product (each row is d independent outputs)."""
    depths: List[int] = field(default_factory=lambda: [1, 10, 50, 100])
    """Numbers of dense blocks in the stacks."""
    block: block.BlockShape = field(default_factory=block.BlockShape)
    """Sizes of one block (d_model, heads, SwiGLU width, sequence length)."""
    seed_chunk: int = 10
    """Seeds computed at once (memory: activations of every block for this many seeds)."""


def rel_err(approx: np.ndarray, ref: np.ndarray, axes) -> np.ndarray:
    """‖approx − ref‖ / ‖ref‖ over `axes`, per remaining index (inf where approx is not finite)."""
    num = np.sqrt(np.sum((approx - ref) ** 2, axis=axes))
    den = np.sqrt(np.sum(ref**2, axis=axes))
    out = num / den
    return np.where(np.all(np.isfinite(approx), axis=axes), out, np.inf)


def sequential_product(x: np.ndarray, w: np.ndarray, variant: str) -> np.ndarray:
    """[S, m, d] @ [S, d, n] in `variant` (module docstring), float64 out."""
    if variant == "f32 (numpy)":
        return np.matmul(FLOAT32.round(x).astype(np.float32), FLOAT32.round(w).astype(np.float32)).astype(np.float64)
    fmt_in: Format = {"f16": FLOAT16, "bf16": BFLOAT16, "f32": FLOAT32}[variant.split()[0]]
    xq, wq = fmt_in.round(x), fmt_in.round(w)
    s, m, d = xq.shape
    n = wq.shape[2]
    if variant == "f16 (f16 acc)" or variant == "f32":
        acc = np.zeros((s, m, n))
        for k in range(d):
            acc = fma(acc, xq[:, :, k, None], wq[:, None, k, :], fmt_in)
        return acc
    # float32 accumulation of exact float32 products: plain float32 arithmetic is exactly that.
    x32, w32 = xq.astype(np.float32), wq.astype(np.float32)
    acc32 = np.zeros((s, m, n), np.float32)
    for k in range(d):
        acc32 += x32[:, :, k, None] * w32[:, None, k, :]
    return fmt_in.round(acc32.astype(np.float64))


def single_product(cfg: StudyConfig, progress: Callable[[str], None]) -> Dict[str, List[float]]:
    """Per-seed relative errors of each variant of the single product."""
    errs: Dict[str, List[float]] = {v: [] for v in SINGLE_VARIANTS}
    for lo in range(0, cfg.seeds, cfg.seed_chunk):
        seeds = range(lo, min(lo + cfg.seed_chunk, cfg.seeds))
        x = np.stack([np.random.default_rng([s, 0]).normal(0, 1 / math.sqrt(cfg.d), (cfg.rows, cfg.d)) for s in seeds])
        w = np.stack([np.random.default_rng([s, 1]).normal(0, 1 / math.sqrt(cfg.d), (cfg.d, cfg.d)) for s in seeds])
        ref = np.matmul(x, w)
        for v in SINGLE_VARIANTS:
            errs[v] += rel_err(sequential_product(x, w, v), ref, (1, 2)).tolist()
        progress(f"single product: {min(lo + cfg.seed_chunk, cfg.seeds)}/{cfg.seeds} seeds")
    return errs


def stack(cfg: StudyConfig, depth: int, progress: Callable[[str], None]) -> Dict[str, Dict[str, List[float]]]:
    """Per-seed errors of a `depth`-block stack: {variant: {"forward", "grad", "grad_worst",
    "param:<layer>.<name>"...: [per seed]}}."""
    shp = cfg.block
    out: Dict[str, Dict[str, List[float]]] = {v: {} for v in STACK_VARIANTS}
    for lo in range(0, cfg.seeds, cfg.seed_chunk):
        n = min(cfg.seed_chunk, cfg.seeds - lo)
        rng = np.random.default_rng([depth, lo, 2])
        x = rng.normal(0, 1, (n, shp.seq_len, shp.d_model))
        dy = rng.normal(0, 1, (n, shp.seq_len, shp.d_model))
        layers = block.init_stack(rng, shp, depth, n)
        y_ref, g_ref = block.reference(x, layers, dy, shp)
        for name, fmt in STACK_VARIANTS.items():
            y, g = block.stack_forward_backward(fmt, x, layers, dy, shp)
            rec = out[name]
            rec.setdefault("forward", []).extend(rel_err(y, y_ref, (1, 2)).tolist())
            num = np.zeros(n)
            den = np.zeros(n)
            worst = np.zeros(n)
            finite = np.ones(n, bool)
            for i, (gl, rl) in enumerate(zip(g, g_ref)):
                for p in block.PARAMS:
                    axes = tuple(range(1, rl[p].ndim))
                    e = rel_err(gl[p], rl[p], axes)
                    rec.setdefault(f"param:{i}.{p}", []).extend(e.tolist())
                    worst = np.maximum(worst, e)
                    finite &= np.all(np.isfinite(gl[p]), axis=axes)
                    num += np.sum((gl[p] - rl[p]) ** 2, axis=axes)
                    den += np.sum(rl[p] ** 2, axis=axes)
            rec.setdefault("grad", []).extend(np.where(finite, np.sqrt(num / den), np.inf).tolist())
            rec.setdefault("grad_worst", []).extend(worst.tolist())
        progress(f"stack L={depth}: {lo + n}/{cfg.seeds} seeds")
    return out


def verdict(measured: float, claimed: float) -> str:
    ok = claimed / AGREEMENT <= measured <= claimed * AGREEMENT
    word = "reproduced" if ok else "not reproduced"
    return f"{word}: measured {measured:,.0f}x vs claimed {claimed:,.0f}x (agreement = within {AGREEMENT:g}x)"


def run_study(cfg: StudyConfig, progress: Optional[Callable[[str], None]] = None) -> dict:
    """All measurements, medians, ratios and verdicts as a JSON-ready dict."""
    progress = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    med = lambda xs: float(np.median(xs))  # noqa: E731
    single = single_product(cfg, progress)
    s_med = {v: med(e) for v, e in single.items()}
    result: dict = {
        "config": {**asdict(cfg), "block": asdict(cfg.block)},
        "unit_roundoff": {"f16": FLOAT16.unit_roundoff, "bf16": BFLOAT16.unit_roundoff, "f32": FLOAT32.unit_roundoff},
        "single_product": {
            "median_rel_err": s_med,
            "ratio_to_f32": {v: s_med[v] / s_med["f32"] for v in SINGLE_VARIANTS if v != "f32"},
        },
        "stacks": [],
    }
    for depth in cfg.depths:
        errs = stack(cfg, depth, progress)
        meds = {v: {k: med(e) for k, e in rec.items()} for v, rec in errs.items()}
        row: Dict[str, Any] = {"depth": depth, "median_rel_err": {}, "ratio_to_f32": {}, "params": {}}
        for v in STACK_VARIANTS:
            row["median_rel_err"][v] = {k: meds[v][k] for k in ("forward", "grad", "grad_worst")}
            row["params"][v] = {k[6:]: x for k, x in meds[v].items() if k.startswith("param:")}
            if v != "f32":
                row["ratio_to_f32"][v] = {
                    k: meds[v][k] / meds["f32"][k] for k in ("forward", "grad", "grad_worst") if meds["f32"][k] > 0
                }
        result["stacks"].append(row)
    deepest = result["stacks"][-1] if result["stacks"] else None
    claims = [
        {
            "claim": f"f16/f32 error ratio of one operation = {PAPER_SINGLE_OP:,.0f}x ({variant})",
            "claimed": PAPER_SINGLE_OP,
            "measured": result["single_product"]["ratio_to_f32"][variant],
        }
        for variant in ("f16 (f16 acc)", "f16 (f32 acc)")
    ]
    if deepest:
        for what in ("forward", "grad"):
            claims.append(
                {
                    "claim": f"f16/f32 error ratio at depth = {PAPER_AT_DEPTH:,.0f}x (L={deepest['depth']}, {what})",
                    "claimed": PAPER_AT_DEPTH,
                    "measured": deepest["ratio_to_f32"]["f16"][what],
                }
            )
    for c in claims:
        c["verdict"] = verdict(c["measured"], c["claimed"])
        c["reproduced"] = c["verdict"].startswith("reproduced")
    result["claims"] = claims
    result["growth"] = growth_text(result)
    result["seconds"] = time.perf_counter() - t0
    return result


def growth_text(result: dict) -> str:
    """How the f16/f32 ratio changes with depth, in one sentence."""
    rows = result["stacks"]
    if len(rows) < 2:
        return "one depth only: no growth to report"
    parts = []
    for what in ("forward", "grad"):
        first, last = rows[0]["ratio_to_f32"]["f16"][what], rows[-1]["ratio_to_f32"]["f16"][what]
        parts.append(
            f"{what}: f16/f32 {first:,.0f}x at L={rows[0]['depth']} -> {last:,.0f}x at L={rows[-1]['depth']} "
            f"(x{last / first:.2f})"
        )
    return "; ".join(parts)


def format_report(result: dict) -> str:
    """The terminal table."""
    cfg = result["config"]
    lines = [
        f"Relative error vs float64, median of {cfg['seeds']} seeds "
        f"(unit roundoff f16/f32 = 2^13 = 8,192x, bf16/f32 = 2^16 = 65,536x)",
        "",
        f"(a) one product X[{cfg['rows']}x{cfg['d']}] @ W[{cfg['d']}x{cfg['d']}], N(0, 1/d) entries",
        f"{'variant':16} {'rel. error':>11} {'/ f32':>10}",
    ]
    sp = result["single_product"]
    for v, e in sp["median_rel_err"].items():
        r = sp["ratio_to_f32"].get(v)
        lines.append(f"{v:16} {e:11.3e} {'' if r is None else f'{r:9,.0f}x':>10}")
    b = cfg["block"]
    lines += [
        "",
        f"(b) stacks of dense blocks (d={b['d_model']}, {b['n_heads']} heads, SwiGLU {b['ffn_hidden']}, "
        f"T={b['seq_len']}); f16/bf16 accumulate in f32",
        f"{'L':>4} {'what':10} {'f32':>10} {'f16':>10} {'bf16':>10} {'f16/f32':>10} {'bf16/f32':>10}",
    ]
    for row in result["stacks"]:
        m, r = row["median_rel_err"], row["ratio_to_f32"]
        for what in ("forward", "grad", "grad_worst"):
            lines.append(
                f"{row['depth']:>4} {what:10} {m['f32'][what]:10.3e} {m['f16'][what]:10.3e} {m['bf16'][what]:10.3e} "
                f"{r['f16'].get(what, float('nan')):9,.0f}x {r['bf16'].get(what, float('nan')):9,.0f}x"
            )
    lines += ["", "grad: all parameter gradients together; grad_worst: the worst single parameter tensor", ""]
    lines.append("claims:")
    for c in result["claims"]:
        lines.append(f"  {c['claim']}: {c['verdict']}")
    lines.append(f"growth with depth: {result['growth']}")
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Median relative error against depth (log scale), one line per format and quantity, with
    the single product at depth 0 for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    depths = [r["depth"] for r in result["stacks"]]
    colors = {"f16": "C3", "bf16": "C1", "f32": "C0"}
    for v, col in colors.items():
        for what, style in (("forward", "-o"), ("grad", "--s")):
            ax.plot(
                depths, [r["median_rel_err"][v][what] for r in result["stacks"]], style, color=col, label=f"{v} {what}"
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dense blocks L")
    ax.set_ylabel("median relative error vs float64")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    for what, style in (("forward", "-o"), ("grad", "--s")):
        ax2.plot(
            depths,
            [r["ratio_to_f32"]["f16"][what] for r in result["stacks"]],
            style,
            color="C3",
            label=f"f16/f32 {what}",
        )
    ax2.axhline(PAPER_AT_DEPTH, color="k", ls=":", label=f"paper at depth {PAPER_AT_DEPTH:,.0f}x")
    ax2.axhline(PAPER_SINGLE_OP, color="grey", ls=":", label=f"paper one op {PAPER_SINGLE_OP:,.0f}x")
    ax2.axhline(8192, color="C2", ls="-.", label="unit roundoff ratio 8,192x")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("dense blocks L")
    ax2.set_ylabel("error ratio f16 / f32")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
