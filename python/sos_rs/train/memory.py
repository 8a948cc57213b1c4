"""A memory estimate made before the first step, so a run that cannot fit fails at once."""

from __future__ import annotations

import os
import resource


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a large number."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def estimate_dense(n_params: int, cfg: dict, batch: int, seq: int) -> dict:
    """Bytes for weights, gradients, AdamW moments and the activations the tape keeps.
    Activation count per layer: residual, 2 norms, q/k/v/o, rope'd q/k, attention out+lse,
    gate/up/act, MLP out (~12 d-wide + 3 ffn-wide values per token); plus logits and their
    gradient (2 × vocab per token)."""
    d, ffn, v = cfg["d_model"], cfg.get("ffn_hidden") or 4 * cfg["d_model"], cfg["vocab_size"]
    tokens = batch * seq
    acts = tokens * (cfg["n_layers"] * (12 * d + 3 * ffn) + 3 * v) * 4
    state = n_params * 4 * 4  # weights, grads, m, v
    return {"weights_and_optimizer": state, "activations": acts, "total": state + acts}
