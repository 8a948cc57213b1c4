"""Sparse routing: `router_probs` (softmax with temperature) -> `topk_gates` (top-k,
renormalised gates, integer choices) -> `moe_plan` (tokens grouped per expert under a capacity;
no gradient) -> `dispatch` / an expert computation / `combine` (weighted scatter back).
Heterogeneous paths (the MoA block) take `plan.rows(e)` and feed their outputs to
`combine_parts` (`combine` of their concatenation, without the copy)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .. import _core
from ..autograd import Tensor, record
from ._util import _scalar


def router_probs(logits: Tensor, tau: float = 1.0) -> Tensor:
    """softmax(logits / tau) over experts.  logits: [N, E]"""
    p = _core.router_probs_forward(logits.data, tau)
    return record("router_probs", p, (logits,), lambda dp: (_core.router_probs_backward(p, dp, tau),))


def topk_gates(probs: Tensor, k: int, renormalize: bool = True) -> Tuple[Tensor, np.ndarray]:
    """The k largest probabilities per token (ties to the lower expert) -> (gates [N, k],
    expert ids [N, k] int64, best first). Renormalised gates sum to 1 per token."""
    g, idx = _core.topk_gates_forward(probs.data, k, renormalize)
    out = record(
        "topk_gates", g, (probs,), lambda dg: (_core.topk_gates_backward(probs.data, idx, g, dg, renormalize),)
    )
    return out, idx


def load_balance_loss(probs: Tensor, idx: np.ndarray) -> Tensor:
    """Switch load-balance loss E·Σ_e f_e·P_e (1.0 when perfectly balanced); 0-d."""
    loss, f = _core.load_balance_forward(probs.data, idx)
    n = probs.shape[0]
    return record("load_balance", _scalar(loss), (probs,), lambda dy: (_core.load_balance_backward(n, f, dy.item()),))


def expert_fractions(idx: np.ndarray, n_experts: int) -> np.ndarray:
    """Share of routing choices per expert (what the load-balance loss calls f)."""
    return np.bincount(np.asarray(idx).reshape(-1), minlength=n_experts) / max(np.asarray(idx).size, 1)


def router_z_loss(logits: Tensor) -> Tensor:
    """mean_n logsumexp(logits_n)² on the raw router logits; 0-d."""
    z, lse = _core.z_loss_forward(logits.data)
    return record("z_loss", _scalar(z), (logits,), lambda dy: (_core.z_loss_backward(logits.data, lse, dy.item()),))


def moe_plan(
    idx: np.ndarray,
    n_experts: int,
    capacity_factor: float = 0.0,
    capacity: Optional[int] = None,
    keep: Optional[np.ndarray] = None,
) -> _core.RoutePlan:
    """Groups tokens by expert (counting sort). Capacity ceil(factor·N·k/E) per expert, unlimited
    when factor <= 0; assignments over capacity are dropped (see rust/moe/dispatch.rs). `keep`
    (bool [N, k]) leaves the choices marked False out altogether: no slot, not counted as dropped."""
    mask = None if keep is None else np.asarray(keep, dtype=bool)
    return _core.moe_plan(idx, n_experts, capacity_factor, capacity, mask)


def dispatch(x: Tensor, plan: _core.RoutePlan) -> Tensor:
    """x [N, D] -> rows grouped by expert [S, D] (slot order of the plan)."""
    xs = _core.dispatch_forward(x.data, plan)
    return record("dispatch", xs, (x,), lambda d: (_core.dispatch_backward(d, plan),))


def combine(ys: Tensor, gates: Tensor, plan: _core.RoutePlan) -> Tensor:
    """y[n] = Σ_j gates[n, j] · ys[slot(n, j)] over kept choices.  ys [S, D] -> [N, D]"""
    y = _core.combine_forward(ys.data, gates.data, plan)
    return record("combine", y, (ys, gates), lambda dy: _core.combine_backward(ys.data, gates.data, plan, dy))


def combine_parts(parts: Sequence[Tensor], gates: Tensor, plan: _core.RoutePlan) -> Tensor:
    """combine(concat_rows(parts), gates, plan) without the concatenation: parts[e] [count_e, D]
    holds expert e's rows in slot order (the same bits; dparts come back one per part)."""
    parts = tuple(parts)
    y = _core.combine_parts_forward([p.data for p in parts], gates.data, plan)

    def backward(dy):
        dparts, dg = _core.combine_parts_backward([p.data for p in parts], gates.data, plan, dy)
        return (*dparts, dg)

    return record("combine", y, (*parts, gates), backward)


def experts_swiglu(xs: Tensor, plan: _core.RoutePlan, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """A SwiGLU expert per block of slots: one GEMM per expert and projection.
    w_gate, w_up: [E, H, D]; w_down: [E, D, H]."""
    ys, g, u = _core.experts_forward(xs.data, plan, w_gate.data, w_up.data, w_down.data)
    return record(
        "experts_swiglu",
        ys,
        (xs, w_gate, w_up, w_down),
        lambda d: _core.experts_backward(xs.data, plan, w_gate.data, w_up.data, w_down.data, g, u, d),
    )


def moe_swiglu(x: Tensor, gates: Tensor, plan: _core.RoutePlan, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """combine(experts_swiglu(dispatch(x))) as one op: each expert gathers its rows of x right
    before its GEMMs and scatters gate-weighted outputs straight back; no [S, D] rows are kept
    for backward (only the [S, H] pre-activations).  x [N, D], gates [N, k] -> [N, D]"""
    y, g, u = _core.moe_swiglu_forward(x.data, gates.data, plan, w_gate.data, w_up.data, w_down.data)
    return record(
        "moe_swiglu",
        y,
        (x, gates, w_gate, w_up, w_down),
        lambda d: _core.moe_swiglu_backward(x.data, gates.data, plan, w_gate.data, w_up.data, w_down.data, g, u, d),
    )
