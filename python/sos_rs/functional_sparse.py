"""Differentiable ops of the sparse families: each calls a Rust forward and records the Rust
backward, as in `functional.py`.

Routing: `router_probs` (softmax with temperature) -> `topk_gates` (top-k, renormalised gates,
integer choices) -> `moe_plan` (tokens grouped per expert under a capacity; no gradient) ->
`dispatch` / an expert computation / `combine` (weighted scatter back). Heterogeneous paths
(the MoA block) take `plan.rows(e)` and feed `concat_rows` of their outputs to `combine`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import _core
from .autograd import Tensor, record


def _scalar(x: float) -> _core.Tensor:
    return _core.Tensor.full([], x)


# ---- router -------------------------------------------------------------------------------
def router_probs(logits: Tensor, tau: float = 1.0) -> Tensor:
    """softmax(logits / tau) over experts.  logits: [N, E]"""
    p = _core.router_probs_forward(logits.data, tau)
    return record("router_probs", p, (logits,), lambda dp: (_core.router_probs_backward(p, dp, tau),))


def topk_gates(probs: Tensor, k: int, renormalize: bool = True) -> Tuple[Tensor, np.ndarray]:
    """The k largest probabilities per token (ties to the lower expert) -> (gates [N, k],
    expert ids [N, k] int64, best first). Renormalised gates sum to 1 per token."""
    g, idx = _core.topk_gates_forward(probs.data, k, renormalize)
    out = record("topk_gates", g, (probs,), lambda dg: (_core.topk_gates_backward(probs.data, idx, g, dg, renormalize),))
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


def moe_plan(idx: np.ndarray, n_experts: int, capacity_factor: float = 0.0, capacity: Optional[int] = None) -> _core.RoutePlan:
    """Groups tokens by expert (counting sort). Capacity ceil(factor·N·k/E) per expert, unlimited
    when factor <= 0; assignments over capacity are dropped (see rust/moe/dispatch.rs)."""
    return _core.moe_plan(idx, n_experts, capacity_factor, capacity)


# ---- dispatch / combine / experts -----------------------------------------------------------
def dispatch(x: Tensor, plan: _core.RoutePlan) -> Tensor:
    """x [N, D] -> rows grouped by expert [S, D] (slot order of the plan)."""
    xs = _core.dispatch_forward(x.data, plan)
    return record("dispatch", xs, (x,), lambda d: (_core.dispatch_backward(d, plan),))


def combine(ys: Tensor, gates: Tensor, plan: _core.RoutePlan) -> Tensor:
    """y[n] = Σ_j gates[n, j] · ys[slot(n, j)] over kept choices.  ys [S, D] -> [N, D]"""
    y = _core.combine_forward(ys.data, gates.data, plan)
    return record("combine", y, (ys, gates), lambda dy: _core.combine_backward(ys.data, gates.data, plan, dy))


def experts_swiglu(xs: Tensor, plan: _core.RoutePlan, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """A SwiGLU expert per block of slots: one GEMM per expert and projection.
    w_gate, w_up: [E, H, D]; w_down: [E, D, H]."""
    ys, g, u = _core.experts_forward(xs.data, plan, w_gate.data, w_up.data, w_down.data)
    return record("experts_swiglu", ys, (xs, w_gate, w_up, w_down),
                  lambda d: _core.experts_backward(xs.data, plan, w_gate.data, w_up.data, w_down.data, g, u, d))


# ---- metric attention and its regularisers ------------------------------------------------
def metric_attention(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, w: Tensor, kb: Optional[Tensor] = None,
                     rows: Optional[np.ndarray] = None, hard: bool = False) -> Tensor:
    """Causal softmax over s_ij = -α_h Σ_c w_hc (q_ic - k_jc)² + kb_jh, times v.
    k, v: [B, T, Hkv, hd]; q: [B, T, H, hd], or [M, H, hd] at positions `rows` (b·T + t,
    strictly ascending); α [H]; w [H, hd] positive; kb [B, T, H] or None. `hard` masks keys
    with kb < 0 (except a query's own key) instead of adding kb."""
    o, lse = _core.metric_attention_forward(q.data, k.data, v.data, alpha.data, w.data, None if kb is None else kb.data, rows, hard)
    inputs = (q, k, v, alpha, w) if kb is None else (q, k, v, alpha, w, kb)

    def backward(dy):
        g = _core.metric_attention_backward(q.data, k.data, v.data, alpha.data, w.data, None if kb is None else kb.data, rows, hard, o, lse, dy)
        return g[:5] if kb is None else g

    return record("metric_attention", o, inputs, backward)


def ball_penalty(k: Tensor, origin: Tensor, radius: Tensor, w: Tensor, beta: float) -> Tensor:
    """kb[..., h] = -β·relu(‖k - o_h‖_w - r_h): a per-key score bias.  k [..., Hkv, hd] -> [..., H]"""
    kb = _core.ball_penalty_forward(k.data, origin.data, radius.data, w.data, beta)
    return record("ball_penalty", kb, (k, origin, radius, w),
                  lambda d: _core.ball_penalty_backward(k.data, origin.data, radius.data, w.data, beta, d))


def ti_loss(k: Tensor, w: Tensor, triples: np.ndarray, lam: float) -> Tuple[Tensor, int]:
    """Triangle-inequality hinge on the squared metric distances between keys (flattened rows of
    k [..., Hkv, hd]) at the given triples [n, 3] -> (λ·mean hinge as a 0-d Tensor, violations)."""
    loss, viol = _core.ti_loss_forward(k.data, w.data, triples, lam)
    out = record("ti_loss", _scalar(loss), (k, w), lambda dy: _core.ti_loss_backward(k.data, w.data, triples, lam, dy.item()))
    return out, viol


# ---- small pieces -------------------------------------------------------------------------
def softplus(x: Tensor) -> Tensor:
    return record("softplus", _core.softplus_forward(x.data), (x,), lambda d: (_core.softplus_backward(x.data, d),))


def sigmoid_range(x: Tensor, lo: float, hi: float) -> Tensor:
    """lo + (hi - lo)·sigmoid(x)"""
    y = _core.sigmoid_range_forward(x.data, lo, hi)
    return record("sigmoid_range", y, (x,), lambda d: (_core.sigmoid_range_backward(x.data, d, lo, hi),))


def col_scale(x: Tensor, s: Tensor) -> Tensor:
    """x ⊙ s over the last dimension (LayerScale, channel gates).  s: [D]"""
    return record("col_scale", _core.col_scale_forward(x.data, s.data), (x, s), lambda d: _core.col_scale_backward(x.data, s.data, d))


def gather_rows(x: Tensor, rows: np.ndarray) -> Tensor:
    """x[rows] for x [N, D] -> [M, D]"""
    n = x.shape[0]
    return record("gather_rows", _core.gather_rows_forward(x.data, rows), (x,), lambda d: (_core.gather_rows_backward(d, rows, n),))


def concat_rows(parts: Sequence[Tensor]) -> Tensor:
    """[M_i, D] pieces stacked into [Σ M_i, D]."""
    sizes = [p.shape[0] for p in parts]
    return record("concat_rows", _core.concat_rows([p.data for p in parts]), tuple(parts), lambda d: tuple(_core.split_rows(d, sizes)))


def dwconv(x: Tensor, w: Tensor, rows: Optional[np.ndarray] = None) -> Tensor:
    """Causal depthwise conv over time. x [B, T, D], w [D, K] -> [B, T, D], or [M, D] at `rows`."""
    y = _core.dwconv_forward(x.data, w.data, rows)
    return record("dwconv", y, (x, w), lambda d: _core.dwconv_backward(x.data, w.data, rows, d))


def rope_angles(x: Tensor, ang: Tensor, pos: np.ndarray) -> Tensor:
    """Rotate-half RoPE with given angles: row n of x [..., H, hd] rotates by ang[pos[n]]."""
    y = _core.rope_angles_forward(x.data, ang.data, pos)
    return record("rope_angles", y, (x, ang), lambda d: _core.rope_angles_backward(x.data, ang.data, pos, d))
