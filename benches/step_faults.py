"""Page faults and CPU time per training step: how much fresh memory a steady step still touches.

    PYTHONPATH=python python -m benches.step_faults [--families dense moa] [--presets small medium]
                                                     [--steps 8] [--threads 2]

Each (family, preset) runs in this process: the `sos bench` model and batch, AdamW, `--steps`
steps after 2 warm-ups. Per step it reports the minor page faults (getrusage), which count the
4 KiB pages (or 2 MiB huge pages) the step faulted in — a steady step that reuses the tensor
pool's mappings faults almost none — and the CPU time. Both are medians over the steps and
barely depend on the machine's load, unlike wall time. Counts, not a pass/fail test. All models run
in one process, one after another (the pool carries over): name one for a clean first step.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any, List, Optional

import sos_rs
from sos_rs import optim
from sos_rs.bench.presets import PRESETS
from sos_rs.bench.worker import _batches
from sos_rs.models import build_model


def measure(family: str, preset: str, steps: int) -> dict:
    cfg, batch = PRESETS[family][preset]
    model: Any = build_model(family, cfg)
    seq = model.config.max_seq_len
    data = _batches(model.config.vocab_size, batch, seq, steps + 2)
    triples = hasattr(model, "sample_triples")
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    faults: List[int] = []
    cpu: List[float] = []
    for ids, targets in data:
        f0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        opt.zero_grad()
        loss = model.loss(ids, targets, model.sample_triples(batch * seq)) if triples else model.loss(ids, targets)
        loss.backward()
        opt.clip_and_step(1.0)
        loss.item()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        cpu.append(time.process_time() - c0)
    return {
        "faults": statistics.median(faults[2:]),
        "faults_first": faults[0],
        "cpu_ms": 1e3 * statistics.median(cpu[2:]),
    }


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=["dense", "moa", "sagi"])
    ap.add_argument("--presets", nargs="+", default=["small", "medium"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    for fam in a.families:
        if fam not in PRESETS:
            sys.exit(f"step_faults: unknown family {fam!r} (have {sorted(PRESETS)})")
        for pre in a.presets:
            if pre not in PRESETS[fam]:
                sys.exit(f"step_faults: no preset {pre!r} for family {fam!r} (have {sorted(PRESETS[fam])})")
    if a.steps < 1 or a.threads < 1:
        sys.exit("step_faults: --steps and --threads must be at least 1")
    sos_rs.set_num_threads(a.threads)
    print(f"{'family':<11} {'preset':<7} {'faults/step':>12} {'first step':>11} {'CPU ms/step':>12}")
    try:
        for fam in a.families:
            for pre in a.presets:
                r = measure(fam, pre, a.steps)
                print(f"{fam:<11} {pre:<7} {r['faults']:>12.0f} {r['faults_first']:>11} {r['cpu_ms']:>12.1f}")
    except KeyboardInterrupt:
        sys.exit("step_faults: interrupted")


if __name__ == "__main__":
    main()
