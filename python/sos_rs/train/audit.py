"""`sos audit`: what each trained run cost and how sparse it was, beside the paper's claims
($1.60 per model, 0.02–7% of parameters active per token), from the run folder alone:
config.json, metrics.jsonl and the newest valid checkpoint (state.json, model.safetensors)."""

from __future__ import annotations

import json
import math
import pathlib
from typing import List, Optional

from . import checkpoint as ckpt
from .metrics import read_metrics

PAPER_COST = 1.60
"""The paper's cost of one model, in dollars."""
PAPER_ACTIVE = (0.0002, 0.07)
"""The paper's range of the active-parameter fraction per token."""


class AuditError(ValueError):
    """A run folder cannot be audited; the message names the folder and what is missing."""


def count_parameters(model_file: pathlib.Path) -> int:
    """Parameters in a safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    n = 0
    with safe_open(str(model_file), framework="np") as f:
        for key in f.keys():
            n += math.prod(f.get_slice(key).get_shape())
    return n


def audit_run(path: str, price_per_hour: Optional[float] = None) -> dict:
    """One run's figures (None where the run did not record them)."""
    run = pathlib.Path(path)
    if not run.is_dir():
        raise AuditError(f"{run} is not a run folder")
    metrics_path = run / "metrics.jsonl"
    if not metrics_path.is_file():
        raise AuditError(f"{run} has no metrics.jsonl (not a `sos train` run folder?)")
    folder = ckpt.latest_valid(run / "checkpoints")
    if folder is None:
        raise AuditError(f"{run} holds no valid checkpoint (looked in {run / 'checkpoints'})")
    state = json.loads((folder / "state.json").read_text())
    config = state.get("train_config") or json.loads((run / "config.json").read_text())
    records = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= state["step"]]
    steps = [r for r in records if "loss" in r]
    vals = [r for r in records if "val_bpb" in r]
    fractions = [r["active_param_fraction"] for r in steps if r.get("active_param_fraction") is not None]
    data, optim = config.get("data", {}), config.get("optim", {})
    tokens = next((r["tokens_seen"] for r in reversed(steps) if "tokens_seen" in r), None)
    if tokens is None:
        tokens = state["step"] * data.get("batch_size", 0) * data.get("seq_len", 0) * optim.get("grad_accum", 1)
    cpu_s = state.get("cpu_s", next((r["cpu_s"] for r in reversed(records) if "cpu_s" in r), None))
    wall_s = state.get("elapsed_s")
    price = price_per_hour if price_per_hour is not None else config.get("run", {}).get("price_per_hour", 0.0)
    return {
        "run": str(run),
        "family": state.get("model_family", config.get("model", {}).get("family", "dense")),
        "params": count_parameters(folder / "model.safetensors"),
        # Families that log no fraction (dense) read every parameter for every token.
        "active_param_fraction": sum(fractions) / len(fractions) if fractions else 1.0,
        "active_measured": bool(fractions),
        "step": state["step"],
        "tokens_seen": tokens,
        "cpu_hours": None if cpu_s is None else cpu_s / 3600,
        "wall_hours": None if wall_s is None else wall_s / 3600,
        "price_per_hour": price or None,
        "cost": price * wall_s / 3600 if price and wall_s is not None else None,
        "val_bpb": vals[-1]["val_bpb"] if vals else None,
        "val_cpu_s": vals[-1].get("cpu_s") if vals else None,
        "val_curve": [(r["cpu_s"], r["val_bpb"]) for r in vals if "cpu_s" in r],
    }


def bpb_at_cpu(curve: list, cpu_s: float) -> Optional[float]:
    """The validation bits per byte a run had after `cpu_s` CPU-seconds, linear between its
    validation points; None outside the range it covers."""
    pts = sorted(curve)
    if not pts or cpu_s > pts[-1][0] or cpu_s < pts[0][0]:
        return None
    for (c0, b0), (c1, b1) in zip(pts, pts[1:]):
        if c0 <= cpu_s <= c1:
            return b0 + (b1 - b0) * (cpu_s - c0) / (c1 - c0) if c1 > c0 else b1
    return pts[-1][1]


def audit(paths: List[str], dense: Optional[str] = None, price_per_hour: Optional[float] = None) -> dict:
    rows = [audit_run(p, price_per_hour) for p in paths]
    base = audit_run(dense, price_per_hour) if dense else None
    for r in rows:
        r["paper_cost"] = PAPER_COST
        r["cost_vs_paper"] = r["cost"] / PAPER_COST if r["cost"] is not None else None
        lo, hi = PAPER_ACTIVE
        r["active_in_paper_range"] = lo <= r["active_param_fraction"] <= hi
        r["bpb_per_cpu_hour"] = r["val_bpb"] / r["cpu_hours"] if r["val_bpb"] and r["cpu_hours"] else None
        if base is not None and r["val_cpu_s"] is not None:
            # the compute the run had spent when its reported bits per byte were measured
            at = bpb_at_cpu(base["val_curve"], r["val_cpu_s"])
            r["dense_bpb_same_cpu"] = at
            r["bpb_vs_dense"] = None if at is None else r["val_bpb"] - at
    return {"runs": rows, "dense": base, "paper": {"cost_per_model": PAPER_COST, "active_fraction": PAPER_ACTIVE}}


def _f(x, fmt: str, width: int) -> str:
    """x formatted right-aligned in `width` ('+.4f' keeps its sign flag), '-' when missing."""
    if not isinstance(x, (int, float)):
        return f"{'-':>{width}}"
    sign, rest = (fmt[0], fmt[1:]) if fmt.startswith("+") else ("", fmt)
    return format(x, f">{sign}{width}{rest}")


def format_report(res: dict) -> str:
    lines = [
        f"{'run':24} {'family':10} {'params':>8} {'active':>8} {'tokens':>9} {'CPU-h':>7} {'cost':>8} "
        f"{'val bpb':>8} {'bpb/CPU-h':>10}" + (f" {'dense bpb@same CPU':>18} {'Δ':>7}" if res["dense"] else "")
    ]
    for r in res["runs"]:
        active = f"{r['active_param_fraction']:.2%}" + ("" if r["active_measured"] else "*")
        line = (
            f"{pathlib.Path(r['run']).name[:24]:24} {r['family']:10} {r['params'] / 1e6:7.2f}M {active:>8} "
            f"{r['tokens_seen'] / 1e6:8.2f}M {_f(r['cpu_hours'], '.4f', 7)} "
            f"{('$' + format(r['cost'], '.4f')) if r['cost'] is not None else '-':>8} "
            f"{_f(r['val_bpb'], '.4f', 8)} {_f(r['bpb_per_cpu_hour'], '.1f', 10)}"
        )
        if res["dense"]:
            line += f" {_f(r.get('dense_bpb_same_cpu'), '.4f', 18)} {_f(r.get('bpb_vs_dense'), '+.4f', 7)}"
        lines.append(line)
    lo, hi = PAPER_ACTIVE
    lines += [
        "",
        f"paper: ${PAPER_COST:.2f} per model; {lo:.2%}–{hi:.0%} of parameters active per token",
        "active: mean over logged steps of the measured active-parameter fraction (* = the family logs none:"
        " dense, 1.0); cost = price_per_hour × wall-clock hours; bpb/CPU-h = validation bits per byte ÷ CPU-hours",
    ]
    for r in res["runs"]:
        verdict = "within" if r["active_in_paper_range"] else "outside"
        cost = (
            f"cost ${r['cost']:.4f} = {r['cost_vs_paper']:.2%} of $1.60"
            if r["cost"] is not None
            else "cost: no price (set [run] price_per_hour or --price-per-hour)"
        )
        lines.append(f"{pathlib.Path(r['run']).name}: active {verdict} the paper's range; {cost}")
    if res["dense"]:
        d = res["dense"]
        lines.append(
            f"dense reference {d['run']}: Δ = val bpb − the dense run's val bpb after the same CPU-seconds "
            "(negative: better than dense at equal compute; '-' where the dense run did not reach that compute)"
        )
    return "\n".join(lines)
