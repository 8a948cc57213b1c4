"""Metric attention and its regularisers (SPEC §6.2–6.3): scores from a learned weighted
distance, the ball penalty and the triangle-inequality hinge."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .. import _core
from ..autograd import Tensor, record
from ._util import _scalar


def metric_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    w: Tensor,
    kb: Optional[Tensor] = None,
    rows: Optional[np.ndarray] = None,
    hard: bool = False,
) -> Tensor:
    """Causal softmax over s_ij = -α_h Σ_c w_hc (q_ic - k_jc)² + kb_jh, times v.
    k, v: [B, T, Hkv, hd]; q: [B, T, H, hd], or [M, H, hd] at positions `rows` (b·T + t,
    strictly ascending); α [H]; w [H, hd] positive; kb [B, T, H] or None. `hard` masks keys
    with kb < 0 (except a query's own key) instead of adding kb."""
    o, lse = _core.metric_attention_forward(
        q.data, k.data, v.data, alpha.data, w.data, None if kb is None else kb.data, rows, hard
    )
    inputs = (q, k, v, alpha, w) if kb is None else (q, k, v, alpha, w, kb)

    def backward(dy):
        g = _core.metric_attention_backward(
            q.data, k.data, v.data, alpha.data, w.data, None if kb is None else kb.data, rows, hard, o, lse, dy
        )
        return g[:5] if kb is None else g

    return record("metric_attention", o, inputs, backward)


def ball_penalty(k: Tensor, origin: Tensor, radius: Tensor, w: Tensor, beta: float) -> Tensor:
    """kb[..., h] = -β·relu(‖k - o_h‖_w - r_h): a per-key score bias.  k [..., Hkv, hd] -> [..., H]"""
    kb = _core.ball_penalty_forward(k.data, origin.data, radius.data, w.data, beta)
    return record(
        "ball_penalty",
        kb,
        (k, origin, radius, w),
        lambda d: _core.ball_penalty_backward(k.data, origin.data, radius.data, w.data, beta, d),
    )


def ti_loss(k: Tensor, w: Tensor, triples: np.ndarray, lam: float) -> Tuple[Tensor, int]:
    """Triangle-inequality hinge on the squared metric distances between keys (flattened rows of
    k [..., Hkv, hd]) at the given triples [n, 3] -> (λ·mean hinge as a 0-d Tensor, violations)."""
    loss, viol = _core.ti_loss_forward(k.data, w.data, triples, lam)
    out = record(
        "ti_loss", _scalar(loss), (k, w), lambda dy: _core.ti_loss_backward(k.data, w.data, triples, lam, dy.item())
    )
    return out, viol
