"""Drives `sos bench`: one worker process per measurement (`worker.py`), sos_rs and PyTorch
alternating with a pause between them, medians over repeats, the terminal table and the JSON."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

PAUSE_S = 0.4
"""Sleep between two workers, so neither library's spinning threads steal the other's cores."""


class BenchError(RuntimeError):
    """A bench option is invalid; the message says which."""


@dataclass
class BenchConfig:
    quick: bool = False
    """Small presets, 3 timed steps, one repeat, fewer GEMM shapes: under a minute."""
    vs_torch: bool = False
    """Also run every model in PyTorch (eager FP32, same weights and batches)."""
    threads: int = 0
    """Threads of both libraries (0: sos_rs's default, one per physical core)."""
    families: List[str] = field(default_factory=list)
    """Families to train (empty: every registered family)."""
    presets: List[str] = field(default_factory=list)
    """Presets (empty: small, plus medium unless quick; large, dense only, only when named)."""
    steps: int = 0
    """Timed training steps per worker (0: 3 quick, 8 otherwise)."""
    warmup: int = 0
    """Untimed steps first (0: 1 quick, 2 otherwise)."""
    repeats: int = 0
    """Workers per model and library; medians over them (0: 1 quick, 2 otherwise)."""


def checkout_root() -> Optional[pathlib.Path]:
    """The source checkout holding tests/support/torch_reference.py (the dense PyTorch twin), if
    sos_rs runs from one."""
    import sos_rs

    root = pathlib.Path(sos_rs.__file__).resolve().parents[2]
    return root if (root / "tests" / "support" / "torch_reference.py").is_file() else None


def _env(threads: int) -> dict:
    import sos_rs

    paths = [str(pathlib.Path(sos_rs.__file__).resolve().parents[1])]
    root = checkout_root()
    if root is not None:
        paths.append(str(root))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), SOS_QUIET="1", SOS_NUM_THREADS=str(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(spec: dict, timeout: float = 900) -> dict:
    """One measurement in a fresh process; a failure comes back as {"error": ...}."""
    cmd = [sys.executable, "-m", "sos_rs.bench.worker", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=_env(spec["threads"]), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited {res.returncode}: {tail}"}
    return json.loads(lines[-1])


def _median_row(rows: List[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return rows[0]
    out = dict(ok[0])
    for key in ("step_s", "tokens_per_s", "gflops", "peak_rss_mb", "final_loss", "active_param_fraction"):
        vals = [r[key] for r in ok if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    out["runs_tokens_per_s"] = [r["tokens_per_s"] for r in ok]
    return out


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda _m: None) -> dict:
    import sos_rs
    from sos_rs.models import FAMILIES

    from .presets import ALL_PRESETS, DEFAULT_PRESETS, preset

    threads = cfg.threads or sos_rs.num_threads()
    families = cfg.families or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise BenchError(f"unknown families {unknown}; registered: {', '.join(FAMILIES)}")
    presets = cfg.presets or (["small"] if cfg.quick else list(DEFAULT_PRESETS))
    bad = [p for p in presets if p not in ALL_PRESETS]
    if bad:
        raise BenchError(f"unknown presets {bad}; choose from {', '.join(ALL_PRESETS)}")
    steps = cfg.steps or (3 if cfg.quick else 8)
    warmup = cfg.warmup or (1 if cfg.quick else 2)
    repeats = cfg.repeats or (1 if cfg.quick else 2)
    if min(steps, warmup, repeats, threads) < 1:
        raise BenchError("steps, warmup, repeats and threads must be positive")
    frameworks = ["sos"]
    notes = []
    if cfg.vs_torch:
        import importlib.util

        # find_spec, not import: this process's size would otherwise be inherited by the workers'
        # peak-RSS high-water mark on some kernels, and torch is large.
        if importlib.util.find_spec("torch") is not None:
            frameworks.append("torch")
        else:
            notes.append("torch is not installed: --vs-torch measured sos_rs only (pip install torch)")
    t0 = time.perf_counter()
    progress("machine: FMA peak, GEMM, attention")
    mach = run_worker({"kind": "machine", "threads": threads, "quick": cfg.quick})
    peak = mach.get("peak_gflops")
    readings: List[float] = []
    train_rows = []
    for family in families:
        for name in presets:
            p = preset(family, name)
            if p is None:
                notes.append(f"{family}: no {name} preset")
                continue
            config, batch = p
            fws = list(frameworks)
            if "torch" in fws and family == "dense" and checkout_root() is None:
                fws.remove("torch")
                notes.append("dense vs PyTorch needs a source checkout (tests/support/torch_reference.py)")
            runs: dict = {fw: [] for fw in fws}
            for _ in range(repeats):
                for fw in fws:  # alternate the libraries, pausing between them
                    progress(f"train {family}/{name}: {fw}")
                    spec = dict(kind="train", framework=fw, family=family, preset=name, config=config, batch=batch)
                    spec.update(threads=threads, steps=steps, warmup=warmup)
                    runs[fw].append(run_worker(spec))
                    time.sleep(PAUSE_S)
            readings += [r.get("peak_gflops_after") or 0.0 for rs in runs.values() for r in rs]
            row = {fw: _median_row(rs) for fw, rs in runs.items()}
            sos_row = row["sos"]
            if "torch" in row and "error" not in row["torch"] and "error" not in sos_row:
                t = row["torch"]
                t["flops_per_step"] = sos_row["flops_per_step"]
                t["gflops"] = t["flops_per_step"] / t["step_s"] / 1e9
                row["sos_over_torch"] = sos_row["tokens_per_s"] / t["tokens_per_s"]
            train_rows.append({"family": family, "preset": name, **row})
    # Background load only lowers a peak reading: the peak is the highest of the machine phase's
    # and of one reading after every sos_rs training worker, so shares of it are never inflated
    # by a reading taken during a load spike.
    peak = max([peak or 0.0, *readings]) or None
    if peak:
        mach["peak_gflops"] = peak
        for m in mach.get("gemm", []) + mach.get("attention", []):
            m["frac_peak"] = m["gflops"] / peak
    for tr in train_rows:
        for fw in ("sos", "torch"):
            fr = tr.get(fw)
            if isinstance(fr, dict) and "error" not in fr and fr.get("gflops") is not None:
                fr["frac_peak"] = fr["gflops"] / peak if peak else None
    return {
        "config": {**asdict(cfg), "threads": threads, "steps": steps, "warmup": warmup, "repeats": repeats},
        "machine": mach,
        "train": train_rows,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }


def _f(x, fmt: str, width: int) -> str:
    return f"{x:{width}{fmt}}" if isinstance(x, (int, float)) else f"{'-':>{width}}"


def format_report(res: dict) -> str:
    m = res["machine"]
    lines = []
    if "error" in m:
        lines.append(f"machine: {m['error']}")
    else:
        th = m["threads"]
        lines.append(f"sos_rs on {m['isa']} (CPU has {m['detected_isa']}), {th} threads")
        fp = m["fma_peak"]
        lines.append(
            "FMA peak GFLOP/s: "
            + ", ".join(
                f"{isa} {_f(v['gflops_1t'], '.1f', 0)} (1 thread) / {_f(v[f'gflops_{th}t'], '.1f', 0)} ({th})"
                for isa, v in fp.items()
            )
        )
        if m.get("peak_gflops"):
            lines.append(
                f"shares below are of {m['peak_gflops']:.1f} GFLOP/s, the highest {th}-thread reading of the run"
            )
        lines.append(f"{'GEMM':11} {'M x N x K':>17} {'GFLOP/s':>8} {'of peak':>8}")
        for g in m["gemm"]:
            lines.append(
                f"{g['shape']:11} {g['m']:>5}x{g['n']:>5}x{g['k']:>5} {g['gflops']:8.1f} {g['frac_peak']:8.1%}"
            )
        for a in m["attention"]:
            lines.append(
                f"attention fwd+bwd B={a['batch']} H={a['heads']} hd={a['head_dim']} T={a['seq']}: "
                f"{a['gflops']:.1f} GFLOP/s, {a['frac_peak']:.1%} of peak"
            )
    lines.append("")
    has_torch = any("torch" in r for r in res["train"])
    head = f"{'family':10} {'preset':6} {'params':>8} {'active':>7} {'tok/s':>8} {'GFLOP/s':>8} {'of peak':>8} "
    head += f"{'RSS MB':>7}"
    if has_torch:
        head += f" | {'torch tok/s':>11} {'of peak':>8} {'RSS MB':>7} {'sos/torch':>9}"
    lines.append("training step (forward + backward + AdamW), medians")
    lines.append(head)
    for r in res["train"]:
        s = r["sos"]
        if "error" in s:
            lines.append(f"{r['family']:10} {r['preset']:6} error: {s['error']}")
            continue
        line = (
            f"{r['family']:10} {r['preset']:6} {s['params'] / 1e6:7.2f}M {s['active_param_fraction']:7.1%} "
            f"{s['tokens_per_s']:8.0f} {s['gflops']:8.1f} {_f(s.get('frac_peak'), '.1%', 8)} {s['peak_rss_mb']:7.0f}"
        )
        if "torch" in r:
            t = r["torch"]
            if "error" in t:
                line += f" | torch error: {t['error']}"
            else:
                line += (
                    f" | {t['tokens_per_s']:11.0f} {_f(t.get('frac_peak'), '.1%', 8)} {t['peak_rss_mb']:7.0f} "
                    f"{_f(r.get('sos_over_torch'), '.2f', 8)}x"
                )
        lines.append(line)
    c = res["config"]
    lines.append(
        f"({c['warmup']} warm-up + {c['steps']} timed steps per worker, {c['repeats']} worker(s) per library, "
        f"each in its own process; FLOPs per step = 6·N_active·tokens + 6·attention modules·B·H·T²·hd; "
        f"{res['seconds']:.0f} s)"
    )
    lines += [f"note: {n}" for n in res["notes"]]
    return "\n".join(lines)
