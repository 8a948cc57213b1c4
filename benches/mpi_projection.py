"""A PROJECTION, not a measurement: data-parallel step time and efficiency on 2-64 nodes of 48 cores,
from the compute time per token measured on one core here (benches/mpi_scaling.py) and an
all-reduce bandwidth (the measured one, plus typical networks).

    python -m benches.mpi_projection [--from results.json] [--tokens-per-node 16384]

Model per step, one rank of 48 threads per node, weak scaling (each node keeps its batch):
  compute   = tokens_per_node × s_per_token_per_core / (48 × thread_efficiency)
  all-reduce = 2 (N-1)/N × 4 P / bandwidth + 2 (N-1) × latency   (all-to-all + all-gather, reduce.py)
  efficiency = compute / (compute + all-reduce)   (no overlap with backward, as implemented)
Assumptions (stated, not measured): threads scale linearly to 48 cores, the network is full
duplex and non-blocking, and the rank-ordered sum is memory-bound and hidden in the transfers."""

from __future__ import annotations

import argparse
import json


def project(
    nodes: int,
    s_per_token_core: float,
    params: int,
    tokens_per_node: int,
    gbs: float,
    latency: float,
    cores: int = 48,
    thread_eff: float = 1.0,
) -> dict:
    compute = tokens_per_node * s_per_token_core / (cores * thread_eff)
    reduce_s = 2 * (nodes - 1) / nodes * 4 * params / (gbs * 1e9) + 2 * (nodes - 1) * latency
    step = compute + reduce_s
    return {
        "nodes": nodes,
        "compute_s": compute,
        "allreduce_s": reduce_s,
        "step_s": step,
        "tokens_per_s": nodes * tokens_per_node / step,
        "efficiency": compute / step,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", help="JSON written by `python -m benches.mpi_scaling --json`")
    ap.add_argument("--s-per-token-core", type=float, help="compute seconds per token on one core")
    ap.add_argument("--params", type=int, help="parameters (gradient floats)")
    ap.add_argument("--measured-gbs", type=float, help="measured all-reduce bandwidth, GB/s sent per rank")
    ap.add_argument("--tokens-per-node", type=int, default=16384)
    ap.add_argument("--latency-us", type=float, default=20.0)
    ap.add_argument("--cores", type=int, default=48)
    args = ap.parse_args()
    s_tok, params, measured = args.s_per_token_core, args.params, args.measured_gbs
    if args.src:
        with open(args.src) as f:
            r = json.load(f)
        s_tok = s_tok or r["compute_s_per_token_per_core"]
        params = params or r["two_ranks_one_thread"]["params"]
        measured = measured or r["allreduce_tcp"]["busbw_gb_s"]
    if not (s_tok and params):
        raise SystemExit("mpi_projection: give --from results.json or --s-per-token-core and --params")
    nets = [("10 GbE", 1.25), ("25 GbE", 3.125), ("100 Gb IB", 12.5)]
    if measured:
        nets.insert(0, ("measured", measured))
    print(
        f"PROJECTION (not measured): {params / 1e6:.1f}M parameters, {1e6 * s_tok:.0f} us/token/core, "
        f"{args.tokens_per_node} tokens per node per step, {args.cores} cores per node, "
        f"latency {args.latency_us:.0f} us per message"
    )
    head = f"{'nodes':>5} {'compute s':>10}" + "".join(f" | {n} ({g:.2f} GB/s): step s, eff" for n, g in nets)
    print(head)
    for nodes in (2, 4, 8, 16, 32, 64):
        row = None
        cells = []
        for _, gbs in nets:
            row = project(nodes, s_tok, params, args.tokens_per_node, gbs, args.latency_us * 1e-6, args.cores)
            cells.append(f" | {row['step_s']:>8.3f} {row['efficiency']:>5.2f}")
        assert row is not None
        print(f"{nodes:>5} {row['compute_s']:>10.3f}" + "".join(cells))


if __name__ == "__main__":
    main()
