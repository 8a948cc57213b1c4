"""Where a dense training step's time goes: every Rust call of the step (forward, backward, clip,
AdamW), grouped by the op that made it, and the Python time between the calls.

    PYTHONPATH=python python -m benches.step_profile [--presets small medium] [--steps 5] [--threads 2]

The profiler wraps, for the length of the run only, every function of `sos_rs._core` with a
timer, the public ops of `sos_rs.functional` with a label (forward), and each recorded node's
backward closure with the node's name (backward); nothing in the package changes and a run
without this script pays nothing. Rows are (phase, op, Rust call, shape); "python" is a phase's
wall time less its Rust calls (the per-op overhead of the tape, wrappers and numpy). Every figure
is the median over the profiled steps, so a load spike in one step moves none. GFLOP/s is
given where the FLOPs are known (GEMMs, attention); the whole-step figure uses the FLOP count of
`sos bench` (sos_rs.bench.flops) against the FMA peak measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import sos_rs
from sos_rs import _core, autograd, optim
from sos_rs import functional as F
from sos_rs.bench.flops import train_step_flops
from sos_rs.bench.presets import PRESETS
from sos_rs.bench.worker import _batches
from sos_rs.models import build_model

Key = Tuple[str, str, str, str]  # phase, op, Rust call, shape
PHASES = ["zero_grad", "forward", "backward", "clip", "optimizer", "clip+adamw", "loss.item"]


def _shape(x: Any) -> Tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else ()


def _matmul_info(args: tuple) -> Tuple[str, Optional[float]]:
    """M×N×K of `_core.matmul(a, b, trans_a, trans_b)`: a is [..., K] (or [..., M] transposed,
    its leading axes then being K), b is [K, N] (or [N, K] transposed)."""
    a, b = _shape(args[0]), _shape(args[1])
    ta = bool(args[2]) if len(args) > 2 else False
    tb = bool(args[3]) if len(args) > 3 else False
    lead = int(np.prod(a[:-1]))
    m, k = (a[-1], lead) if ta else (lead, a[-1])
    n = int(np.prod(b[:-1])) if tb else b[-1]
    return f"{m}x{n}x{k}{' At' if ta else ''}{' Bt' if tb else ''}", 2.0 * m * n * k


def _linear_info(args: tuple) -> Tuple[str, Optional[float]]:
    x, w = _shape(args[0]), _shape(args[1])
    m = int(np.prod(x[:-1]))
    return f"{m}x{w[0]}x{w[1]} +bias", 2.0 * m * w[0] * w[1]


def _attention_info(args: tuple, backward: bool) -> Tuple[str, Optional[float]]:
    b, t, h, hd = _shape(args[0])
    # causal: forward QKᵀ and PV over the lower triangle (2·B·H·T²·hd); backward recomputes the
    # scores and forms dV, dP, dQ, dK (5·B·H·T²·hd): the 7× convention of bench/flops.py.
    return f"B{b} T{t} H{h} hd{hd}", (5.0 if backward else 2.0) * b * h * t * t * hd


def _info(name: str, args: tuple) -> Tuple[str, Optional[float]]:
    if name == "matmul":
        return _matmul_info(args)
    if name == "linear":
        return _linear_info(args)
    if name in ("attention_forward", "attention_backward"):
        return _attention_info(args, name == "attention_backward")
    if name in ("adamw_step", "adamw_multi", "clip_grad_norm", "global_norm"):
        return "", None
    return "x".join(map(str, _shape(args[0]))) if args else "", None


class StepProfiler:
    """Accumulates Rust-call time per (phase, op, call, shape) while installed."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.label: Optional[str] = None
        self.step = 0
        # (row, step) -> [seconds, calls, flops]
        self.cells: Dict[Tuple[Key, int], List[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.phase_wall: Dict[Tuple[str, int], float] = defaultdict(float)
        self.recording = False
        self._undo: List[Tuple[Any, str, Any]] = []

    # -- installation ---------------------------------------------------------------------
    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def install(self) -> None:
        for name in dir(_core):
            fn = getattr(_core, name)
            if name.startswith("_") or isinstance(fn, type) or not callable(fn):
                continue
            self._patch(_core, name, self._time_call(name, fn))
        for name in F.__all__:
            fn = getattr(F, name)
            if callable(fn) and name not in ("check_window", "expert_fractions", "moe_plan"):
                self._patch(F, name, self._label_op(name, fn))
        prof = self
        node_init = autograd.Node.__init__

        def init(node: autograd.Node, name: str, inputs, backward: Callable, accumulate=None) -> None:
            def label(fn: Callable) -> Callable:
                @functools.wraps(fn)
                def labelled(*args):
                    prev, prof.label = prof.label, name
                    try:
                        return fn(*args)
                    finally:
                        prof.label = prev

                return labelled

            if accumulate is None:
                node_init(node, name, inputs, label(backward))
            else:
                node_init(node, name, inputs, label(backward), label(accumulate))

        self._patch(autograd.Node, "__init__", init)

    def uninstall(self) -> None:
        while self._undo:
            owner, name, old = self._undo.pop()
            setattr(owner, name, old)

    def _time_call(self, name: str, fn: Callable) -> Callable:
        prof = self

        def timed(*args, **kwargs):
            if not prof.recording:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            dt = time.perf_counter() - t0
            shape, flops = _info(name, args)
            label = prof.label or ("(tape)" if prof.phase == "backward" else "-")
            row = prof.cells[((prof.phase, label, name, shape), prof.step)]
            row[0] += dt
            row[1] += 1
            row[2] += flops or 0.0
            return out

        return timed

    def _label_op(self, name: str, fn: Callable) -> Callable:
        prof = self

        @functools.wraps(fn)
        def labelled(*args, **kwargs):
            if prof.label is not None:  # an op built from other ops keeps the outer label
                return fn(*args, **kwargs)
            prof.label = name
            try:
                return fn(*args, **kwargs)
            finally:
                prof.label = None

        return labelled

    # -- phases ---------------------------------------------------------------------------
    def run(self, phase: str, fn: Callable[[], Any]) -> Any:
        self.phase = phase
        t0 = time.perf_counter()
        out = fn()
        if self.recording:
            self.phase_wall[(phase, self.step)] += time.perf_counter() - t0
        return out


def profile_preset(preset: str, steps: int, warmup: int, threads: int, peak: float, top: int) -> Dict[str, float]:
    cfg, batch = PRESETS["dense"][preset]
    model = build_model("dense", dict(cfg))
    seq = model.config.max_seq_len
    data = _batches(model.config.vocab_size, batch, seq, warmup + steps)
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    prof = StepProfiler()
    prof.install()
    step_times: List[float] = []
    try:
        for i, (ids, targets) in enumerate(data):
            prof.recording, prof.step = i >= warmup, i - warmup
            t0 = time.perf_counter()
            prof.run("zero_grad", opt.zero_grad)
            loss = prof.run("forward", lambda: model.loss(ids, targets))
            prof.run("backward", loss.backward)
            if hasattr(opt, "clip_and_step"):  # one fused call (what `sos bench` runs)
                prof.run("clip+adamw", lambda: opt.clip_and_step(1.0))
            else:  # a tree from before the fusion (A/B runs)
                prof.run("clip", lambda: optim.clip_grad_norm(model.parameters(), 1.0))
                prof.run("optimizer", opt.step)
            prof.run("loss.item", loss.item)
            if prof.recording:
                step_times.append(time.perf_counter() - t0)
    finally:
        prof.uninstall()
    report(model, batch, seq, threads, steps, peak, top, preset, prof, step_times)
    return {"step_s": float(np.median(step_times))}


def report(model, batch, seq, threads, steps, peak, top, preset, prof, step_times) -> None:
    """Medians over the profiled steps (a load spike in one step moves none of them)."""
    med = statistics.median
    step = med(step_times)
    keys = sorted({k for k, _ in prof.cells})
    rows: Dict[Key, List[float]] = {}
    for k in keys:
        cells = [prof.cells.get((k, s), [0.0, 0.0, 0.0]) for s in range(steps)]
        rows[k] = [med(c[0] for c in cells), cells[0][1], cells[0][2]]
    phases = sorted({p for p, _ in prof.phase_wall}, key=lambda p: PHASES.index(p) if p in PHASES else 99)
    phase_rows = {}
    for phase in phases:
        walls = [prof.phase_wall[(phase, s)] for s in range(steps)]
        rust = [sum(v[0] for (k, st), v in prof.cells.items() if k[0] == phase and st == s) for s in range(steps)]
        phase_rows[phase] = (med(walls), med(rust), med(w - r for w, r in zip(walls, rust)))
    flops = train_step_flops(model, batch, seq, 1.0, False)
    rust_total = sum(r for _, r, _ in phase_rows.values())
    python_total = sum(p for _, _, p in phase_rows.values())
    print(
        f"\n== dense {preset}: d{model.config.d_model} L{model.config.n_layers} T{seq} B{batch} "
        f"V{model.config.vocab_size}, {threads} threads, median of {steps} profiled steps =="
    )
    print(
        f"step {step * 1e3:.2f} ms (profiled), {batch * seq / step:,.0f} tok/s, "
        f"{flops / step / 1e9:.1f} GFLOP/s = {100 * flops / step / 1e9 / peak:.1f}% of the FMA peak {peak:.0f}"
    )
    print(f"Rust calls {rust_total * 1e3:.2f} ms, Python between them {python_total * 1e3:.2f} ms per step")
    print("\nper phase (ms/step): wall, Rust, Python")
    for phase, (wall, r, py) in phase_rows.items():
        print(f"  {phase:10s} {wall * 1e3:8.2f} {r * 1e3:8.2f} {py * 1e3:8.2f}")
    table = list(rows.items()) + [((ph, "(python)", "", ""), [py, 0.0, 0.0]) for ph, (_, _, py) in phase_rows.items()]
    table.sort(key=lambda kv: -kv[1][0])
    print(
        f"\n{'ms/step':>8} {'%step':>6} {'calls':>5} {'GFLOP/s':>8} {'%peak':>6}  phase      op               call"
        "                   shape"
    )
    for (phase, op, call, shape), (sec, calls, fl) in table[:top]:
        gf = f"{fl / sec / 1e9:8.1f}" if fl and sec else f"{'':8}"
        pk = f"{100 * fl / sec / 1e9 / peak:6.1f}" if fl and sec else f"{'':6}"
        print(
            f"{sec * 1e3:8.3f} {100 * sec / step:6.1f} {calls:5.0f} {gf} {pk}  {phase:10s} {op:16s} {call:22s} {shape}"
        )
    by_kind: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])
    for (_phase, op, call, _), (sec, _, fl) in table:
        kind = "gemm" if call in ("matmul", "linear") else "attention" if call.startswith("attention") else op
        by_kind[kind][0] += sec
        by_kind[kind][1] += fl
    print("\nby kind (ms/step, %step, GFLOP/s):")
    for kind, (sec, fl) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        gf = f"{fl / sec / 1e9:7.1f}" if fl and sec > 0 else ""
        print(f"  {kind:18s} {sec * 1e3:8.2f} {100 * sec / step:6.1f} {gf}")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium"], choices=sorted(PRESETS["dense"]))
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=40, help="rows of the table")
    args = p.parse_args(argv)
    sos_rs.set_num_threads(args.threads)
    isa = sos_rs.isa()
    peak = max(_core.fma_peak(isa, args.threads, 3, 100) for _ in range(2))
    for preset in args.presets:
        profile_preset(preset, args.steps, args.warmup, args.threads, peak, args.top)


if __name__ == "__main__":
    main()
