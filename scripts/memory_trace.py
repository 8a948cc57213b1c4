#!/usr/bin/env python3
"""Resident memory over the training steps of a dense `sos bench` preset, per phase of the step
(zero_grad, forward + loss, backward, clip, AdamW): where the peak comes from. Sampled every 2 ms
from /proc/self/status (VmRSS; the final VmHWM is the process's peak, as `sos bench` reports).

    PYTHONPATH=python python scripts/memory_trace.py large            # 3 steps
    PYTHONPATH=python python scripts/memory_trace.py large --recompute  # [model] recompute = true
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np


def status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["small", "medium", "large"])
    ap.add_argument("--recompute", action="store_true", help="activation recomputation per block")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    from sos_rs import optim
    from sos_rs.bench.presets import preset
    from sos_rs.models import build_model

    found = preset("dense", args.preset)
    assert found is not None
    cfg, batch = found
    model = build_model("dense", dict(cfg, recompute=args.recompute))
    seq, vocab = model.config.max_seq_len, model.config.vocab_size
    opt = optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(0)
    phase, peaks, done = ["build"], {}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), status("VmRSS"))
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    print(f"after build: RSS {status('VmRSS'):.0f} MiB", flush=True)
    for s in range(args.steps):
        ids = np.minimum(rng.zipf(1.3, (batch, seq + 1)) - 1, vocab - 1)
        t0 = time.perf_counter()
        phase[0] = f"{s}:zero_grad"
        opt.zero_grad()
        phase[0] = f"{s}:forward"
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        phase[0] = f"{s}:backward"
        loss.backward()
        phase[0] = f"{s}:clip"
        optim.clip_grad_norm(model.parameters(), 1.0)
        phase[0] = f"{s}:adamw"
        opt.step()
        phase[0] = f"{s}:done"
        dt = time.perf_counter() - t0
        print(f"step {s}: loss {loss.item():.4f}, {dt:.1f} s, RSS {status('VmRSS'):.0f} MiB", flush=True)
    done.set()
    th.join()
    print("peak RSS per phase (MiB):", json.dumps({k: round(v) for k, v in peaks.items()}))
    est = model.estimate_memory(batch, seq)
    print(f"VmHWM {status('VmHWM'):.0f} MiB; estimate_memory {est.total / 2**20:.0f} MiB (growth over the start)")


if __name__ == "__main__":
    main()
