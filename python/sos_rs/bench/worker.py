"""One `sos bench` measurement in a fresh process: `python -m sos_rs.bench.worker SPEC_JSON`
prints one JSON line. Kinds: `machine` (FMA peaks, GEMM shapes, attention) and `train` (steps
of one family at one preset, in sos_rs or PyTorch)."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np

# (name, M, N, K, trans_a, trans_b): model shapes at d=512, T=256, B=8, vocab 8192 (the table of
# benches/common/mod.rs and scripts/bench_side_by_side.py).
GEMM_SHAPES = [
    ("qkv_proj", 2048, 1536, 512, False, True),
    ("attn_out", 2048, 512, 512, False, True),
    ("mlp_up", 2048, 1376, 512, False, True),
    ("mlp_down", 2048, 512, 1376, False, True),
    ("lm_head", 2048, 8192, 512, False, True),
    ("lm_head_dx", 2048, 512, 8192, False, False),
    ("lm_head_dw", 8192, 512, 2048, True, False),
]
QUICK_GEMM = ("qkv_proj", "mlp_down", "lm_head")


def reset_peak_rss() -> None:
    """Lowers the kernel's peak RSS mark (VmHWM) to the current RSS (Linux), so a worker's peak
    is its training steps' and not a setup transient (the PyTorch worker briefly holds the
    sos_rs model, its numpy copy and the PyTorch copy at once)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork + exec, so a worker would report its parent's size when larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(spec: dict) -> dict:
    import sos_rs
    from sos_rs import _core

    from .flops import attention_flops
    from .timing import gflops

    threads = spec["threads"]
    sos_rs.set_num_threads(threads)
    detected = sos_rs.detected_isa()
    ms = 20 if spec["quick"] else 100
    peaks = {}
    for isa in ("avx2", "avx512"):
        supported = isa == detected or (isa == "avx2" and detected == "avx512")
        peaks[isa] = {
            "gflops_1t": _core.fma_peak(isa, 1, 3, ms) if supported else None,
            f"gflops_{threads}t": _core.fma_peak(isa, threads, 3, ms) if supported else None,
        }
    isa = sos_rs.isa()

    def measure_peak() -> float:
        return _core.fma_peak(isa, threads, 3, ms)

    # Background load only lowers a measured peak, so the peak is the best of two readings.
    first_peak = measure_peak()
    rng = np.random.default_rng(0)
    budget = 0.08 if spec["quick"] else 0.3
    gemm: List[Dict[str, Any]] = []
    for name, m, n, k, ta, tb in GEMM_SHAPES:
        if spec["quick"] and name not in QUICK_GEMM:
            continue
        a = sos_rs.tensor(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)).data
        b = sos_rs.tensor(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)).data

        def product(a=a, b=b, ta=ta, tb=tb) -> None:
            _core.matmul(a, b, ta, tb)

        g = gflops(2.0 * m * n * k, product, budget)
        gemm.append({"shape": name, "m": m, "n": n, "k": k, "gflops": g})
    attention: List[Dict[str, Any]] = []
    heads, hd = 8, 64
    for t in (256,) if spec["quick"] else (256, 1024):
        q, k_, v, do = (sos_rs.tensor(rng.standard_normal((1, t, heads, hd)).astype(np.float32)).data for _ in range(4))
        scale = hd**-0.5

        def fwd_bwd(q=q, k_=k_, v=v, do=do, scale=scale) -> None:
            o, lse = _core.attention_forward(q, k_, v, scale)
            _core.attention_backward(q, k_, v, o, lse, do, scale)

        g = gflops(attention_flops(1, heads, t, hd), fwd_bwd, budget)
        attention.append({"batch": 1, "heads": heads, "head_dim": hd, "seq": t, "gflops": g})
    peak = max(first_peak, measure_peak(), *(v[f"gflops_{threads}t"] or 0 for k, v in peaks.items() if k == isa))
    for row in gemm + attention:
        row["frac_peak"] = row["gflops"] / peak
    return {
        "kind": "machine",
        "isa": isa,
        "detected_isa": detected,
        "threads": threads,
        "fma_peak": peaks,
        "peak_gflops": peak,
        "gemm": gemm,
        "attention": attention,
        "peak_rss_mb": peak_rss_mb(),
    }


def _batches(vocab: int, batch: int, seq: int, n: int):
    """A seeded Zipf token stream (a word-frequency-like distribution), identical in both libraries."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = np.minimum(rng.zipf(1.3, (batch, seq + 1)) - 1, vocab - 1).astype(np.int64)
        out.append((s[:, :-1], s[:, 1:]))
    return out


def train(spec: dict) -> dict:
    import sos_rs
    from sos_rs import optim
    from sos_rs.models import build_model

    from .flops import train_step_flops

    threads, steps, warmup = spec["threads"], spec["steps"], spec["warmup"]
    sos_rs.set_num_threads(threads)
    cfg, batch = spec["config"], spec["batch"]
    model: Any = build_model(spec["family"], cfg)  # routed families take regulariser triples in loss()
    seq = model.config.max_seq_len
    data = _batches(model.config.vocab_size, batch, seq, warmup + steps)
    has_triples = hasattr(model, "sample_triples")
    triples = [model.sample_triples(batch * seq) for _ in data] if has_triples else [None] * len(data)
    times, losses, fractions = [], [], []
    lr, clip = 1e-3, 1.0
    params = model.num_parameters()
    if spec["framework"] == "sos":
        opt = optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        reset_peak_rss()
        for (ids, targets), tr in zip(data, triples):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model.loss(ids, targets, tr) if has_triples else model.loss(ids, targets)
            loss.backward()
            opt.clip_and_step(clip)  # clip_grad_norm + step, one pass over the gradients
            losses.append(loss.item())
            times.append(time.perf_counter() - t0)
            fractions.append(float(model.step_stats().get("active_param_fraction", 1.0)))
        measured = "active_param_fraction" in model.step_stats()
        frac = statistics.median(fractions)
        flops = train_step_flops(model, batch, seq, frac if measured else 1.0, measured)
    else:
        # The PyTorch copy is made from the sos_rs weights, then the sos_rs model is let go: its
        # weights must not count in PyTorch's peak RSS.
        box = [model]
        del model
        times, losses, fractions = _torch_steps(spec, box, data, triples, lr, clip, threads)
        frac, flops = None, None  # PyTorch rows take the FLOPs of the matching sos_rs row
    timed = times[warmup:] or times
    step_s = statistics.median(timed)
    # A peak reading right after the timed steps: the runner takes the highest reading of the
    # whole bench, so a load spike during the machine phase cannot inflate the share of peak.
    peak_after = None
    if spec["framework"] == "sos":
        from sos_rs import _core

        peak_after = _core.fma_peak(sos_rs.isa(), threads, 3, 100)
    return {
        "kind": "train",
        "framework": spec["framework"],
        "family": spec["family"],
        "preset": spec["preset"],
        "params": params,
        "batch": batch,
        "seq": seq,
        "active_param_fraction": frac,
        "step_s": step_s,
        "tokens_per_s": batch * seq / step_s,
        "flops_per_step": flops,
        "gflops": None if flops is None else flops / step_s / 1e9,
        "final_loss": losses[-1],
        "steps": len(times),
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
        "peak_gflops_after": peak_after,
    }


def _torch_steps(spec, box, data, triples, lr, clip, threads):
    """The same steps in PyTorch (eager, FP32) from the same weights (`box` holds the sos_rs
    model, released once they are copied): the dense twin of tests/support/torch_reference.py
    (a source checkout), or the reference in the family's remote-code modeling file in sos_rs/hf/."""
    import gc

    import torch

    torch.set_num_threads(threads)
    model = box.pop()
    state = model.state_dict()
    if spec["family"] == "dense":
        import importlib

        # Only in a source checkout (the runner puts it on the path); not part of the package.
        twin = importlib.import_module("tests.support.torch_reference")
        tm = twin.TorchDense(model.config.to_dict())
        with torch.no_grad():
            for n in tm.names:
                tm.get(n).copy_(torch.from_numpy(state[n]))
        opt = tm.adamw(lr, (0.9, 0.95), 1e-8, 0.1)
        vocab = model.config.vocab_size

        def loss_of(ids, targets, _tr):
            logits = tm(ids)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

        params = list(tm.parameters())
    else:
        from sos_rs.hf.remote_code import HF_CLASSES, reference_classes

        if model.hf_model_type not in HF_CLASSES:
            raise SystemExit(f"no PyTorch reference for family {spec['family']!r}")
        hcfg, hcls = reference_classes(model.hf_model_type)
        ref = hcls(hcfg(**model.config.to_dict()))
        ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        ref.train()
        opt = torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

        def loss_of(ids, targets, tr):
            return ref(ids, labels=targets, triples=tr, return_aux=True)[1]

        params = list(ref.parameters())
    del state, model
    gc.collect()
    reset_peak_rss()
    times, losses = [], []
    for (ids, targets), tr in zip(data, triples):
        tids, ttargets = torch.from_numpy(ids), torch.from_numpy(targets)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(tids, ttargets, tr)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    return times, losses, []


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("SOS_QUIET", "1")
    out = machine(spec) if spec["kind"] == "machine" else train(spec)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
