"""Measures a family's training peak memory in a fresh process, for the memory-estimate tests:
`python -m tests.support.memory_probe FAMILY CONFIG_JSON BATCH SEQ [STEPS]` prints one JSON object
with `measured` (growth of the peak resident set size from just before the model is built to
after STEPS training steps with AdamW, gradient clipping and zero_grad, as the trainer
runs them) and `estimate` (the family's `estimate_memory(BATCH, SEQ)`), both in bytes."""

from __future__ import annotations

import json
import resource
import sys

import numpy as np


def reset_peak() -> None:
    """Lowers the kernel's peak RSS mark (VmHWM) to the current RSS (Linux), so an earlier peak
    (imports, say: torch where it is installed) cannot hide the growth measured after it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak() -> int:
    """Peak RSS in bytes: VmHWM (resettable) where /proc has it, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv) -> None:
    family, config, batch, seq = argv[0], json.loads(argv[1]), int(argv[2]), int(argv[3])
    steps = int(argv[4]) if len(argv) > 4 else 3
    from sos_rs import _core, optim
    from sos_rs.models import build_model

    rng = np.random.default_rng(0)
    data = [rng.integers(0, config["vocab_size"], (batch, seq + 1)) for _ in range(steps)]
    seed = _core.Tensor.full([], 1.0)
    reset_peak()
    before = peak()
    model = build_model(family, config)
    opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    params = model.parameters()
    for ids in data:
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward(seed)
        del loss
        optim.clip_grad_norm(params, 1.0)
        opt.step(1e-3)
        opt.zero_grad()
    est = model.estimate_memory(batch, seq)
    print(json.dumps({"measured": peak() - before, "estimate": est.total, "parts": est.as_dict()}))


if __name__ == "__main__":
    main(sys.argv[1:])
