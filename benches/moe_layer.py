"""MoE layer forward+backward: sos_rs (counting-sort dispatch, one GEMM per expert) against a
PyTorch index-dispatch implementation of the same layer (router softmax/τ, top-k renormalised
gates, per-expert gather -> SwiGLU -> index_add back), same process, same threads, same weights.

    python -m benches.moe_layer [--d 512] [--hidden 1024] [--tokens 2048] [--k 2] [--experts 8 32] [--runs 7]

Prints the median of --runs timed steps (after 2 warm-ups; the implementations alternate in blocks,
so both see the same machine load) for each implementation and E, the
ratio, the E=32/E=8 cost, and the active-parameter fraction. Capacity is unlimited on both sides
(the same function; sos_rs's capacity rule is tested, not benchmarked).
"""

from __future__ import annotations

import argparse

import numpy as np

import sos_rs
from benches.timing import interleaved_medians
from sos_rs import _core
from sos_rs.nn.moe import Aux, MoELayer


def torch_layer(d, hidden, e, k, tau, weights):
    import torch
    import torch.nn.functional as F

    # One leaf tensor per expert and projection, as an nn.ModuleList of experts holds them:
    # slicing one stacked [E, H, D] parameter would make every expert's backward materialise a
    # full-size gradient, which is not how a PyTorch MoE is written.
    wr = torch.tensor(weights[0], requires_grad=True)
    wg, wu, wd = ([torch.tensor(w[ex], requires_grad=True) for ex in range(e)] for w in weights[1:])
    leaves = [wr, *wg, *wu, *wd]

    def step(x, dy):
        for w in leaves:
            w.grad = None
        x = x.detach().requires_grad_(True)
        probs = torch.softmax((x @ wr.T) / tau, -1)
        topv, topi = probs.topk(k, -1)
        gates = topv / topv.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for ex in range(e):
            tok, slot = (topi == ex).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = x.index_select(0, tok)
            ye = (F.silu(xe @ wg[ex].T) * (xe @ wu[ex].T)) @ wd[ex].T
            out = out.index_add(0, tok, ye * gates[tok, slot, None])
        out.backward(dy)
        return x.grad

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--experts", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="threads of both libraries (0: sos_rs default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        sos_rs.set_num_threads(args.threads)
    torch.set_num_threads(sos_rs.num_threads())
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(args.tokens, args.d)).astype(np.float32)
    dy_np = rng.normal(size=(args.tokens, args.d)).astype(np.float32)
    flops = 3 * 3 * 2 * args.tokens * args.k * args.d * args.hidden  # fwd+bwd of three projections
    print(
        f"MoE layer d={args.d} hidden={args.hidden} tokens={args.tokens} k={args.k}; threads {sos_rs.num_threads()}, "
        f"isa {sos_rs.isa()}, torch {torch.__version__}"
    )
    sos_steps = {}
    for e in args.experts:
        layer = MoELayer(
            args.d,
            args.hidden,
            e,
            args.k,
            np.random.default_rng(e),
            temperature=args.tau,
            capacity_factor=0.0,
            aux_coef=0.0,
        )
        weights = [layer.router.weight.numpy(), layer.w_gate.numpy(), layer.w_up.numpy(), layer.w_down.numpy()]
        x = sos_rs.tensor(x_np, requires_grad=True)
        dy = _core.Tensor(dy_np)
        aux = Aux()

        def sos_step(layer=layer, x=x, dy=dy):  # bound now: the E comparison below calls it later
            layer.zero_grad()
            x.grad = None
            layer(x, Aux()).backward(dy)

        tstep = torch_layer(args.d, args.hidden, e, args.k, args.tau, weights)
        tx, tdy = torch.from_numpy(x_np), torch.from_numpy(dy_np)
        # Same function: compare input gradients once before timing.
        sos_step()
        gap = np.abs(x.grad.numpy() - tstep(tx, tdy).numpy()).max()
        aux.routes.clear()
        layer(x, aux)
        frac = layer.active_fraction(aux.routes[0])
        t_sos, t_torch = interleaved_medians([sos_step, lambda: tstep(tx, tdy)], args.runs)
        sos_steps[e] = sos_step
        print(
            f"E={e:3d}: sos_rs {1e3 * t_sos:8.1f} ms ({flops / t_sos / 1e9:6.1f} GFLOP/s)   torch {1e3 * t_torch:8.1f} "
            f"ms   "
            f"speed-up {t_torch / t_sos:5.2f}x   active params/token {100 * frac:5.2f}%   max|dx diff| {gap:.1e}"
        )
    if len(args.experts) > 1:
        # The E comparison alternates the sos_rs layers themselves, so they share the machine load.
        es = sorted(sos_steps)
        ts = dict(zip(es, interleaved_medians([sos_steps[e] for e in es], 2 * args.runs)))
        lo, hi = es[0], es[-1]
        print(
            f"cost E={hi} / E={lo} (sos_rs, k={args.k}, alternating, {2 * args.runs} runs): "
            f"{1e3 * ts[hi]:.1f} / {1e3 * ts[lo]:.1f} ms = {ts[hi] / ts[lo]:.2f}x"
        )


if __name__ == "__main__":
    main()
