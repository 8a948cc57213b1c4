"""MoE layer forward+backward: sos_rs (counting-sort dispatch, one GEMM per expert) against a
PyTorch index-dispatch implementation of the same layer (router softmax/τ, top-k renormalised
gates, per-expert gather -> SwiGLU -> index_add back), same process, same threads, same weights.

    python -m benches.moe_layer [--d 512] [--hidden 1024] [--tokens 2048] [--k 2] [--experts 8 32] [--runs 7]
    python -m benches.moe_layer --vs-dense --experts 16 [--no-torch]

Prints the median of --runs timed steps (after 2 warm-ups; the implementations alternate in blocks,
so both see the same machine load) for each implementation and E, the
ratio, the E=32/E=8 cost, and the active-parameter fraction. Capacity is unlimited on both sides
(the same function; sos_rs's capacity rule is tested, not benchmarked).

`--vs-dense` also times sos_rs's dense SwiGLU MLP of the same expert FLOPs (hidden k·H over the
same tokens, `nn.SwiGLUMLP`) and the layer as separate dispatch -> experts -> combine ops (the
unfused path), all alternating, and prints MoE time / dense time: the price of routing (router,
grouping, gather and scatter) on top of the same GEMM work.
"""

from __future__ import annotations

import argparse

import numpy as np

import sos_rs
from benches.timing import interleaved_medians
from sos_rs import _core
from sos_rs import functional as F
from sos_rs.nn import SwiGLUMLP
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
    ap.add_argument("--vs-dense", action="store_true", help="also time the same-FLOP dense SwiGLU (sos_rs)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch layer")
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

        aux.routes.clear()
        layer(x, aux)
        frac = layer.active_fraction(aux.routes[0])
        line = f"E={e:3d}: sos_rs "
        if not args.no_torch:
            tstep = torch_layer(args.d, args.hidden, e, args.k, args.tau, weights)
            tx, tdy = torch.from_numpy(x_np), torch.from_numpy(dy_np)
            # Same function: compare input gradients once before timing.
            sos_step()
            gap = np.abs(x.grad.numpy() - tstep(tx, tdy).numpy()).max()
            t_sos, t_torch = interleaved_medians([sos_step, lambda: tstep(tx, tdy)], args.runs)
            line += (
                f"{1e3 * t_sos:8.1f} ms ({flops / t_sos / 1e9:6.1f} GFLOP/s)   torch {1e3 * t_torch:8.1f} ms   "
                f"speed-up {t_torch / t_sos:5.2f}x   max|dx diff| {gap:.1e}   "
            )
        if args.vs_dense:
            dense = SwiGLUMLP(args.d, args.k * args.hidden, np.random.default_rng(e), 0.02, 0.02)
            xd = sos_rs.tensor(x_np, requires_grad=True)

            def dense_step(dense=dense, xd=xd, dy=dy):
                dense.zero_grad()
                xd.grad = None
                dense(xd).backward(dy)

            def unfused_step(layer=layer, x=x, dy=dy):
                # The same layer as separate dispatch -> experts -> combine ops (before the fusion).
                layer.zero_grad()
                x.grad = None
                gates, idx, _, _ = layer.router(x)
                plan = F.moe_plan(idx, layer.router.n_experts, layer.capacity_factor)
                ys = F.experts_swiglu(F.dispatch(x, plan), plan, layer.w_gate, layer.w_up, layer.w_down)
                F.combine(ys, gates, plan).backward(dy)

            t_sos, t_dense, t_unf = interleaved_medians([sos_step, dense_step, unfused_step], args.runs)
            line += (
                f"{1e3 * t_sos:8.1f} ms ({flops / t_sos / 1e9:6.1f} GFLOP/s)   "
                f"dense SwiGLU hidden {args.k * args.hidden} {1e3 * t_dense:8.1f} ms "
                f"({flops / t_dense / 1e9:6.1f} GFLOP/s)   MoE/dense {t_sos / t_dense:5.3f}x   "
                f"unfused ops {1e3 * t_unf:8.1f} ms, /dense {t_unf / t_dense:5.3f}x   "
            )
        sos_steps[e] = sos_step
        print(line + f"active params/token {100 * frac:5.2f}%")
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
