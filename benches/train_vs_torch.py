"""Side-by-side training throughput: the same dense model, data, seed and thread count in
PyTorch (eager, FP32) and in sos_rs, each in its own process (so peak RSS is its own).

  python -m benches.train_vs_torch                 # cases a and b, 3 repeats, 2 threads
  python -m benches.train_vs_torch --case a --steps 40 --repeats 5 --threads 2

Case (a): d=128, 4 layers, 4 heads, T=128, B=16, vocab 4096.
Case (b): d=384, 6 layers, 6 heads, T=256, B=8, vocab 8192.
Both start from identical weights (sos_rs's initialisation copied into the torch twin) and see
identical batches (a seeded Zipf token stream, or a prepared corpus with --data DIR). Reported:
median tokens/s and ms/step over the timed steps (after warm-up), peak RSS, and the loss after N
steps; then the median over repeats and the sos_rs/PyTorch ratio."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = {
    "a": dict(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, max_seq_len=128, batch=16),
    "b": dict(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, max_seq_len=256, batch=8),
}
LR, BETAS, WD, CLIP = 1e-3, (0.9, 0.95), 0.1, 1.0


def batches(case: dict, steps: int, data_dir):
    import numpy as np

    b, t, v = case["batch"], case["max_seq_len"], case["vocab_size"]
    if data_dir:
        from sos_rs.data import Belt, read_meta

        meta = read_meta(data_dir)
        belt = Belt([str(pathlib.Path(data_dir) / p) for p in meta["shards"]["train"]], seq_len=t, batch_size=b, seed=0)
        return [belt.next_batch() for _ in range(steps)]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        seq = np.minimum(rng.zipf(1.3, (b, t + 1)) - 1, v - 1)
        out.append((seq[:, :-1].astype(np.int64), seq[:, 1:].astype(np.int64)))
    return out


def worker(framework: str, case_name: str, steps: int, warmup: int, threads: int, data_dir) -> dict:
    from sos_rs import DenseConfig, DenseLM

    case = CASES[case_name]
    batch = case["batch"]
    cfg = DenseConfig(**{k: v for k, v in case.items() if k != "batch"}, seed=0)
    data = batches(case, warmup + steps, data_dir)
    model = DenseLM(cfg)
    times, losses = [], []
    if framework == "sos":
        import sos_rs
        from sos_rs import optim

        sos_rs.set_num_threads(threads)
        opt = optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
        for ids, targets in data:
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model.loss(ids, targets)
            loss.backward()
            optim.clip_grad_norm(model.parameters(), CLIP)
            opt.step()
            losses.append(loss.item())
            times.append(time.perf_counter() - t0)
    else:
        import torch

        from tests.support.torch_reference import TorchDense

        torch.set_num_threads(threads)
        tm = TorchDense(cfg.to_dict())
        state = model.state_dict()
        with torch.no_grad():
            for n in tm.names:
                tm.get(n).copy_(torch.from_numpy(state[n]))
        del model
        opt = tm.adamw(LR, BETAS, 1e-8, WD)
        for ids, targets in data:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = tm(torch.from_numpy(ids))
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, cfg.vocab_size), torch.from_numpy(targets).reshape(-1)
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(tm.parameters()), CLIP)
            opt.step()
            losses.append(loss.item())
            times.append(time.perf_counter() - t0)
    timed = times[warmup:]
    ms = 1000 * statistics.median(timed)
    return {
        "framework": framework,
        "case": case_name,
        "tokens_per_s": batch * cfg.max_seq_len / (ms / 1000),
        "ms_per_step": ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": losses[-1],
        "steps": len(losses),
    }


def run_worker(framework, case, args) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benches.train_vs_torch",
        "--worker",
        framework,
        "--case",
        case,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ] + (["--data", str(pathlib.Path(args.data).resolve())] if args.data else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), SOS_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["a", "b", "both"], default="both")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (the loss is reported after warmup+steps)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", help="prepared corpus folder (default: synthetic Zipf tokens)")
    ap.add_argument("--worker", choices=["sos", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.case, args.steps, args.warmup, args.threads, args.data)))
        return
    try:
        import torch  # noqa: F401

        frameworks = ["torch", "sos"]
    except ImportError:
        print("torch is not installed: only sos_rs is measured (pip install torch for the comparison)")
        frameworks = ["sos"]
    cases = ["a", "b"] if args.case == "both" else [args.case]
    print(
        f"threads={args.threads} steps={args.warmup}+{args.steps} repeats={args.repeats} "
        f"data={args.data or 'synthetic zipf'}"
    )
    print(f"{'case':4} {'framework':9} {'tok/s':>9} {'ms/step':>9} {'peakRSS MB':>10} {'loss@N':>8}")
    for case in cases:
        med = {}
        for fw in frameworks:
            runs = [run_worker(fw, case, args) for _ in range(args.repeats)]
            m = {
                k: statistics.median(r[k] for r in runs)
                for k in ("tokens_per_s", "ms_per_step", "peak_rss_mb", "final_loss")
            }
            med[fw] = m
            print(
                f"{case:4} {fw:9} {m['tokens_per_s']:9.0f} {m['ms_per_step']:9.1f} {m['peak_rss_mb']:10.0f} "
                f"{m['final_loss']:8.4f}"
                "   (tok/s of each run: " + ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs) + ")"
            )
        if "torch" in med:
            r = med["sos"]["tokens_per_s"] / med["torch"]["tokens_per_s"]
            print(
                f"{case:4} sos_rs/PyTorch tokens/s = {r:.2f}x | RSS ratio "
                f"{med['sos']['peak_rss_mb'] / med['torch']['peak_rss_mb']:.2f} | "
                f"loss Δ {abs(med['sos']['final_loss'] - med['torch']['final_loss']):.2e}"
            )


if __name__ == "__main__":
    main()
