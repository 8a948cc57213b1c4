"""Data-parallel efficiency on one machine: 2 ranks × 1 thread (mpirun, one micro-batch each,
rank-ordered all-reduce) against 1 rank × 2 threads (grad_accum = 2), same global batch, on a
~14M-parameter dense model; plus the all-reduce alone over shared memory and over TCP loopback
(bandwidth for benches/mpi_projection.py).

    python -m benches.mpi_scaling [--steps 5] [--batch 4] [--seq 128] [--json results.json]

Each mode runs in fresh processes (`--worker`); a step is forward + backward (+ all-reduce) +
AdamW, timed on rank 0 after one warm-up step. Parallel efficiency = t(1×2) / t(2×1): 1.0 means
the two ranks do the step as fast as one process using both cores."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

MODEL = dict(vocab_size=4096, d_model=384, n_layers=6, n_heads=6, max_seq_len=128)
MPIRUN = ["mpirun", "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def worker(args) -> None:
    from sos_rs import _core, dist, optim
    from sos_rs.models import build_model

    group = dist.setup(log=lambda _m: None)
    rank, world = group.rank, group.world
    model = build_model("dense", dict(MODEL, max_seq_len=args.seq))
    params = model.parameters()
    opt = optim.AdamW(params, lr=1e-4)
    reducer = None
    if world > 1:
        from sos_rs.dist.reduce import GradReducer

        reducer = GradReducer(group.comm, [p.shape for p in params], int(args.bucket_mb * 2**20 / 4))  # type: ignore[union-attr]
    rng = np.random.default_rng(rank)
    batches = [rng.integers(0, MODEL["vocab_size"], size=(args.batch, args.seq + 1)) for _ in range(args.accum)]
    seed = _core.Tensor.full([], 1.0 / (args.accum * world))
    steps, compute, reduce_s = [], [], []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        for ids in batches:
            loss = model.loss(ids[:, :-1], ids[:, 1:])
            loss.backward(seed)
        t1 = time.perf_counter()
        if reducer is not None:
            reducer.pack([p.grad for p in params])
            reducer.allreduce()
            for p, g in zip(params, reducer.unpack([True] * len(params))):
                p.grad = g
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        if step:  # the first step warms up caches and the pool
            steps.append(time.perf_counter() - t0)
            compute.append(t1 - t0)
            reduce_s.append(t2 - t1)
    if rank == 0:
        tokens = args.batch * args.seq * args.accum * world
        step_s = statistics.median(steps)
        out = {
            "ranks": world,
            "threads_per_rank": _core.num_threads(),
            "params": model.num_parameters(),
            "tokens_per_step": tokens,
            "step_ms": 1000 * step_s,
            "compute_ms": 1000 * statistics.median(compute),
            "allreduce_ms": 1000 * statistics.median(reduce_s),
            "allreduce_mb_sent": (reducer.bytes_sent / max(reducer.calls, 1) / 2**20) if reducer else 0.0,
            "tokens_per_s": tokens / step_s,
        }
        print("RESULT " + json.dumps(out), flush=True)


def allreduce_worker(args) -> None:
    """The all-reduce alone on a buffer the size of the model's gradients."""
    from sos_rs import dist
    from sos_rs.dist.reduce import GradReducer

    group = dist.setup(log=lambda _m: None)
    n = args.numel
    reducer = GradReducer(group.comm, [(n,)], int(args.bucket_mb * 2**20 / 4))  # type: ignore[union-attr]
    reducer.flat[:] = 1.0
    times = []
    for i in range(args.steps + 1):
        group.comm.Barrier()  # type: ignore[union-attr]
        t0 = time.perf_counter()
        reducer.allreduce()
        if i:
            times.append(time.perf_counter() - t0)
    if group.rank == 0:
        t = statistics.median(times)
        sent = 2 * 4 * (n - n // group.world)
        print("RESULT " + json.dumps({"numel": n, "allreduce_ms": 1000 * t, "busbw_gb_s": sent / t / 1e9}), flush=True)


def run(cmd, env=None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"mpi_scaling: {' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4, help="rows per micro-batch")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--bucket-mb", type=float, default=8.0)
    ap.add_argument("--numel", type=int, default=0)
    ap.add_argument("--worker", choices=["step", "allreduce"])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.worker == "step":
        return worker(args)
    if args.worker == "allreduce":
        return allreduce_worker(args)
    if shutil.which("mpirun") is None:
        raise SystemExit("mpi_scaling: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    me = [sys.executable, "-m", "benches.mpi_scaling", "--steps", str(args.steps), "--batch", str(args.batch)]
    me += ["--seq", str(args.seq), "--bucket-mb", str(args.bucket_mb)]
    one = run(me + ["--worker", "step", "--accum", "2"], env={"SOS_NUM_THREADS": "2"})
    two = run(MPIRUN + ["-np", "2", "--bind-to", "none"] + me + ["--worker", "step", "--accum", "1"])
    numel = one["params"]
    shm = run(MPIRUN + ["-np", "2", "--bind-to", "none"] + me + ["--worker", "allreduce", "--numel", str(numel)])
    tcp_flags = ["--mca", "btl", "tcp,self"]
    tcp = run(
        MPIRUN + ["-np", "2", "--bind-to", "none"] + tcp_flags + me + ["--worker", "allreduce", "--numel", str(numel)]
    )
    eff = one["step_ms"] / two["step_ms"]
    print(f"model: dense {MODEL}, {one['params'] / 1e6:.1f}M parameters, {one['tokens_per_step']} tokens per step")
    print(f"{'mode':<16}{'ms/step':>10}{'compute ms':>12}{'all-reduce ms':>15}{'MB sent':>10}{'tok/s':>10}")
    for name, r in (("1 rank x 2 thr", one), ("2 ranks x 1 thr", two)):
        print(
            f"{name:<16}{r['step_ms']:>10.0f}{r['compute_ms']:>12.0f}{r['allreduce_ms']:>15.1f}"
            f"{r['allreduce_mb_sent']:>10.1f}{r['tokens_per_s']:>10.0f}"
        )
    print(f"parallel efficiency t(1x2)/t(2x1) = {eff:.3f}")
    print(
        f"all-reduce alone, {numel / 1e6:.1f}M f32: shared memory {shm['allreduce_ms']:.1f} ms "
        f"({shm['busbw_gb_s']:.2f} GB/s sent per rank), TCP loopback {tcp['allreduce_ms']:.1f} ms "
        f"({tcp['busbw_gb_s']:.2f} GB/s)"
    )
    # compute seconds per token on one core: 2 ranks × 1 thread, each rank's compute over its tokens
    per_token_core = two["compute_ms"] / 1000 / (two["tokens_per_step"] / 2)
    result = {
        "one_rank_two_threads": one,
        "two_ranks_one_thread": two,
        "efficiency": eff,
        "allreduce_shm": shm,
        "allreduce_tcp": tcp,
        "compute_s_per_token_per_core": per_token_core,
    }
    print(f"compute per token on one core: {1e6 * per_token_core:.1f} us (input to benches.mpi_projection)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
