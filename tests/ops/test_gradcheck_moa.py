"""The sparse ops against float64 numpy references (tests/support/references_sparse.py): forward
values and central-difference gradients in float64 (eps 1e-6, rtol 1e-3, atol 1e-5, as gradcheck).
Router, dispatch/combine, the expert bank, a whole MoE layer, metric attention (dense, MQA,
routed rows, soft ball bias, hard pruning), ball penalty, TI loss and the MoA block's small ops."""

from __future__ import annotations

import numpy as np
import pytest

import sos_rs
from sos_rs import _core
from sos_rs import functional as F
from tests.support import references_sparse as RS
from tests.support.gradcheck import check_op

rng = np.random.default_rng(11)


def arr(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def distinct_choices(n, k, e):
    return np.stack([rng.permutation(e)[:k] for _ in range(n)])


# Fixed discrete data shared by a case's op and its reference.
P = RS.softmax(arr(6, 5, lo=-2, hi=2).astype(np.float64)).astype(np.float32)
_, P_IDX = _core.topk_gates_forward(_core.Tensor(P), 2, True)
IDX = distinct_choices(9, 2, 4)
PLAN = F.moe_plan(IDX, 4, capacity=4)  # 18 assignments, 16 seats: drops
SLOT_TOKEN = np.concatenate([PLAN.rows(e) for e in range(4)])
TOKEN_SLOT = PLAN.token_slot()
OFFSETS = PLAN.offsets
PLAN3 = F.moe_plan(distinct_choices(7, 2, 3), 4)  # expert 3 gets no rows: its part is [0, D]
KEEP = np.ones((9, 2), bool)
KEEP[[1, 4, 5], 1] = False  # SAGI's skipped agents: second choices left out, no capacity limit
KEPT_PLAN = F.moe_plan(IDX, 4, keep=KEEP)
ROWS = np.array([0, 2, 3, 6, 7, 9, 10, 11])  # routed queries of B=2, T=6
TRIPLES = rng.integers(0, 12, (7, 3))
POS = np.array([3, 0, 2, 2, 1, 4])


def moe_layer_case():
    """A whole MoE layer: router linear -> probs (τ=1.5) -> top-2 gates -> plan -> dispatch ->
    SwiGLU experts -> combine, with choices and plan fixed from the float32 forward."""
    x, wr = arr(10, 6), arr(4, 6)
    wg, wu, wd = arr(4, 5, 6), arr(4, 5, 6), arr(4, 6, 5)
    probs = _core.router_probs_forward(_core.matmul(_core.Tensor(x), _core.Tensor(wr), False, True), 1.5)
    _, idx = _core.topk_gates_forward(probs, 2, True)
    plan = F.moe_plan(idx, 4, capacity_factor=1.0)
    slot_token = np.concatenate([plan.rows(e) for e in range(4)])
    token_slot, offsets = plan.token_slot(), plan.offsets

    def op(x, wr, wg, wu, wd):
        gates, _ = F.topk_gates(F.router_probs(F.linear(x, wr), 1.5), 2)
        ys = F.experts_swiglu(F.dispatch(x, plan), plan, wg, wu, wd)
        return F.combine(ys, gates, plan)

    def ref(x, wr, wg, wu, wd):
        gates = RS.topk_gates(RS.router_probs(x @ wr.T, 1.5), idx)
        return RS.combine(RS.experts_swiglu(x[slot_token], offsets, wg, wu, wd), gates, token_slot)

    return ("moe_layer", op, ref, [x, wr, wg, wu, wd], [0, 1, 2, 3, 4])


def moe_layer_fused_case():
    """The same layer through the fused op (`F.moe_swiglu`, what `MoELayer` runs)."""
    name, _, ref, inputs, wrt = moe_layer_case()
    x, wr = inputs[0], inputs[1]
    probs = _core.router_probs_forward(_core.matmul(_core.Tensor(x), _core.Tensor(wr), False, True), 1.5)
    _, idx = _core.topk_gates_forward(probs, 2, True)
    plan = F.moe_plan(idx, 4, capacity_factor=1.0)

    def op(x, wr, wg, wu, wd):
        gates, _ = F.topk_gates(F.router_probs(F.linear(x, wr), 1.5), 2)
        return F.moe_swiglu(x, gates, plan, wg, wu, wd)

    return (name + "_fused", op, ref, inputs, wrt)


def metric_inputs(b, t, h, hkv, hd, m=None):
    q = arr(m, h, hd) if m else arr(b, t, h, hd)
    return [q, arr(b, t, hkv, hd), arr(b, t, hkv, hd), arr(h, lo=0.5, hi=2.0), arr(h, hd, lo=0.2, hi=1.0), arr(b, t, h)]


KB_HARD = arr(2, 6, 2)

CASES = [
    (
        "router_probs",
        lambda x: F.router_probs(x, 2.0),
        lambda x: RS.router_probs(x, 2.0),
        [arr(5, 4, lo=-2, hi=2)],
        [0],
    ),
    ("topk_gates", lambda p: F.topk_gates(p, 2)[0], lambda p: RS.topk_gates(p, P_IDX), [P], [0]),
    (
        "topk_gates_raw",
        lambda p: F.topk_gates(p, 2, renormalize=False)[0],
        lambda p: RS.topk_gates(p, P_IDX, False),
        [P],
        [0],
    ),
    ("load_balance", lambda p: F.load_balance_loss(p, P_IDX), lambda p: RS.load_balance(p, P_IDX), [P], [0]),
    ("z_loss", F.router_z_loss, RS.z_loss, [arr(5, 4, lo=-2, hi=2)], [0]),
    ("dispatch", lambda x: F.dispatch(x, PLAN), lambda x: RS.dispatch(x, SLOT_TOKEN), [arr(9, 3)], [0]),
    (
        "combine",
        lambda ys, g: F.combine(ys, g, PLAN),
        lambda ys, g: RS.combine(ys, g, TOKEN_SLOT),
        [arr(PLAN.n_slots, 3), arr(9, 2)],
        [0, 1],
    ),
    (
        "combine_parts",
        lambda a, b, c, d, g: F.combine_parts([a, b, c, d], g, PLAN),
        lambda a, b, c, d, g: RS.combine(np.concatenate([a, b, c, d]), g, TOKEN_SLOT),
        [arr(c, 3) for c in PLAN.counts] + [arr(9, 2)],
        [0, 1, 2, 3, 4],
    ),
    (
        "combine_parts_unused_expert",
        lambda a, b, c, d, g: F.combine_parts([a, b, c, d], g, PLAN3),
        lambda a, b, c, d, g: RS.combine(np.concatenate([a, b, c, d]), g, PLAN3.token_slot()),
        [arr(c, 3) for c in PLAN3.counts] + [arr(7, 2)],
        [0, 1, 2, 4],
    ),
    (
        "experts_swiglu",
        lambda xs, a, b, c: F.experts_swiglu(xs, PLAN, a, b, c),
        lambda xs, a, b, c: RS.experts_swiglu(xs, OFFSETS, a, b, c),
        [arr(PLAN.n_slots, 3), arr(4, 5, 3), arr(4, 5, 3), arr(4, 3, 5)],
        [0, 1, 2, 3],
    ),
    moe_layer_case(),
    moe_layer_fused_case(),
    (
        "moe_swiglu",
        lambda x, g, a, b, c: F.moe_swiglu(x, g, PLAN, a, b, c),
        lambda x, g, a, b, c: RS.combine(RS.experts_swiglu(x[SLOT_TOKEN], OFFSETS, a, b, c), g, TOKEN_SLOT),
        [arr(9, 3), arr(9, 2), arr(4, 5, 3), arr(4, 5, 3), arr(4, 3, 5)],
        [0, 1, 2, 3, 4],
    ),
    (
        "moe_swiglu_kept",
        lambda x, g, a, b, c: F.moe_swiglu(x, g, KEPT_PLAN, a, b, c),
        lambda x, g, a, b, c: RS.combine(
            RS.experts_swiglu(x[np.concatenate([KEPT_PLAN.rows(e) for e in range(4)])], KEPT_PLAN.offsets, a, b, c),
            g,
            KEPT_PLAN.token_slot(),
        ),
        [arr(9, 3), arr(9, 2), arr(4, 5, 3), arr(4, 5, 3), arr(4, 3, 5)],
        [0, 1, 2, 3, 4],
    ),
    (
        "metric_mha",
        lambda q, k, v, a, w: F.metric_attention(q, k, v, a, w),
        lambda q, k, v, a, w: RS.metric_attention(q, k, v, a, w),
        metric_inputs(2, 5, 2, 2, 4)[:5],
        [0, 1, 2, 3, 4],
    ),
    (
        "metric_mqa_ball_bias",
        lambda q, k, v, a, w, kb: F.metric_attention(q, k, v, a, w, kb),
        lambda q, k, v, a, w, kb: RS.metric_attention(q, k, v, a, w, kb),
        metric_inputs(1, 6, 3, 1, 4),
        [0, 1, 2, 3, 4, 5],
    ),
    (
        "metric_routed_rows",
        lambda q, k, v, a, w, kb: F.metric_attention(q, k, v, a, w, kb, ROWS),
        lambda q, k, v, a, w, kb: RS.metric_attention(q, k, v, a, w, kb, ROWS),
        metric_inputs(2, 6, 2, 1, 4, m=len(ROWS)),
        [0, 1, 2, 3, 4, 5],
    ),
    (
        "metric_hard",
        lambda q, k, v, a, w: F.metric_attention(q, k, v, a, w, sos_rs.tensor(KB_HARD), hard=True),
        lambda q, k, v, a, w: RS.metric_attention(q, k, v, a, w, KB_HARD.astype(np.float64), hard=True),
        metric_inputs(2, 6, 2, 2, 4)[:5],
        [0, 1, 2, 3, 4],
    ),
    (
        "ball_penalty",
        lambda k, o, r, w: F.ball_penalty(k, o, r, w, 0.7),
        lambda k, o, r, w: RS.ball_penalty(k, o, r, w, 0.7),
        [arr(2, 5, 1, 4), arr(3, 4, lo=-0.3, hi=0.3), arr(3, lo=0.3, hi=0.9), arr(3, 4, lo=0.3, hi=1.0)],
        [0, 1, 2, 3],
    ),
    (
        "ti_loss",
        lambda k, w: F.ti_loss(k, w, TRIPLES, 0.5)[0],
        lambda k, w: RS.ti_loss(k, w, TRIPLES, 0.5),
        [arr(2, 6, 2, 3), arr(4, 3, lo=0.2, hi=1.0)],
        [0, 1],
    ),
    ("softplus", F.softplus, RS.softplus, [arr(4, 7, lo=-5, hi=5)], [0]),
    (
        "sigmoid_range",
        lambda x: F.sigmoid_range(x, 0.5, 2.0),
        lambda x: RS.sigmoid_range(x, 0.5, 2.0),
        [arr(9, lo=-3, hi=3)],
        [0],
    ),
    ("col_scale", F.col_scale, lambda x, s: x * s, [arr(3, 4, 5), arr(5)], [0, 1]),
    ("add_col_scale", F.add_col_scale, lambda x, a, s: x + a * s, [arr(3, 4, 5), arr(3, 4, 5), arr(5)], [0, 1, 2]),
    ("gather_rows", lambda x: F.gather_rows(x, np.array([3, 0, 3, 1])), lambda x: x[[3, 0, 3, 1]], [arr(5, 3)], [0]),
    (
        "scatter_add_rows",
        lambda x: F.scatter_add_rows(x, np.array([2, 0, 2, 4, 0]), 6),
        lambda x: np.stack([x[[i for i, r in enumerate([2, 0, 2, 4, 0]) if r == n]].sum(0) for n in range(6)]),
        [arr(5, 3)],
        [0],
    ),
    (
        "concat_rows",
        lambda a, b: F.concat_rows([a, b]),
        lambda a, b: np.concatenate([a, b]),
        [arr(2, 3), arr(4, 3)],
        [0, 1],
    ),
    ("dwconv", F.dwconv, RS.dwconv, [arr(2, 7, 3), arr(3, 5)], [0, 1]),
    (
        "dwconv_rows",
        lambda x, w: F.dwconv(x, w, ROWS),
        lambda x, w: RS.dwconv(x, w, ROWS),
        [arr(2, 6, 3), arr(3, 4)],
        [0, 1],
    ),
    (
        "rope_angles",
        lambda x, a: F.rope_angles(x, a, POS),
        lambda x, a: RS.rope_angles(x, a, POS),
        [arr(2, 3, 2, 6), arr(5, 3, lo=-3, hi=3)],
        [0, 1],
    ),
    # hd 16: the attention kernels' per-key score bias on AVX2 and scalar (hd 4 above: the bias lane)
    (
        "metric_mqa_ball_bias_hd16",
        lambda q, k, v, a, w, kb: F.metric_attention(q, k, v, a, w, kb),
        lambda q, k, v, a, w, kb: RS.metric_attention(q, k, v, a, w, kb),
        metric_inputs(1, 6, 2, 1, 16),
        [0, 1, 2, 3, 4, 5],
    ),
    (
        "metric_routed_rows_hd16",
        lambda q, k, v, a, w, kb: F.metric_attention(q, k, v, a, w, kb, ROWS),
        lambda q, k, v, a, w, kb: RS.metric_attention(q, k, v, a, w, kb, ROWS),
        metric_inputs(2, 6, 2, 1, 16, m=len(ROWS)),
        [0, 1, 2, 3, 4, 5],
    ),
]


@pytest.mark.parametrize("name,op,ref,inputs,wrt", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradient(name, op, ref, inputs, wrt):
    check_op(name, op, ref, inputs, wrt, rng)


def test_plan_reports_drops_and_case_exercises_them():
    # capacity 4 over 4 experts seats 16 of the 18 assignments
    assert PLAN.capacity == 4 and PLAN.dropped == 18 - PLAN.n_slots >= 2
    assert (TOKEN_SLOT == -1).sum() == PLAN.dropped
    assert sum(PLAN.counts) == PLAN.n_slots and all(c <= 4 for c in PLAN.counts)


def test_kept_plan_leaves_choices_out_without_counting_drops():
    assert KEPT_PLAN.dropped == 0 and KEPT_PLAN.n_slots == KEEP.sum() == 15
    assert (KEPT_PLAN.token_slot()[~KEEP] == -1).all() and (KEPT_PLAN.token_slot()[KEEP] >= 0).all()
    capped = F.moe_plan(IDX, 4, capacity=3, keep=KEEP)  # capacity drops count the kept choices only
    assert capped.dropped == 15 - capped.n_slots > 0 and max(capped.counts) == 3
    with pytest.raises(sos_rs.ShapeError, match="keep"):
        F.moe_plan(IDX, 4, keep=KEEP[:5])
