"""Bad inputs to the sparse ops raise typed sos_rs errors (never a Rust panic): one table of rows,
each a call that must fail and the exception it must raise."""

from __future__ import annotations

import numpy as np
import pytest

from sos_rs import InvalidValueError, ShapeError, _core

T = _core.Tensor


def t(*shape):
    return T(np.ones(shape, np.float32))


IDX = np.array([[0, 1], [1, 2], [2, 0]])
PLAN = _core.moe_plan(IDX, 3)
Q, K = t(1, 4, 2, 4), t(1, 4, 1, 4)
AL, W = t(2), t(2, 4)

ROWS = [
    ("router_tau_zero", lambda: _core.router_probs_forward(t(3, 4), 0.0), InvalidValueError),
    ("router_no_experts", lambda: _core.router_probs_forward(t(3, 0), 1.0), ShapeError),
    ("topk_k_too_big", lambda: _core.topk_gates_forward(t(3, 4), 5, True), InvalidValueError),
    (
        "topk_backward_ids_short",
        lambda: _core.topk_gates_backward(t(3, 4), IDX[:2], t(3, 2), t(3, 2), True),
        ShapeError,
    ),
    (
        "load_balance_bad_id",
        lambda: _core.load_balance_forward(t(3, 3), np.array([[0, 3], [1, 2], [2, 0]])),
        InvalidValueError,
    ),
    ("plan_expert_out_of_range", lambda: _core.moe_plan(IDX, 2), InvalidValueError),
    ("plan_duplicate_choice", lambda: _core.moe_plan(np.array([[1, 1]]), 3), InvalidValueError),
    ("plan_not_2d", lambda: _core.moe_plan(np.arange(4), 4), ShapeError),
    ("plan_rows_bad_expert", lambda: PLAN.rows(3), InvalidValueError),
    ("dispatch_wrong_tokens", lambda: _core.dispatch_forward(t(4, 5), PLAN), ShapeError),
    ("dispatch_backward_wrong_slots", lambda: _core.dispatch_backward(t(5, 5), PLAN), ShapeError),
    ("combine_wrong_gates", lambda: _core.combine_forward(t(6, 5), t(3, 3), PLAN), ShapeError),
    ("combine_backward_wrong_dy", lambda: _core.combine_backward(t(6, 5), t(3, 2), PLAN, t(3, 4)), ShapeError),
    (
        "experts_wrong_rows",
        lambda: _core.experts_forward(t(5, 4), PLAN, t(3, 6, 4), t(3, 6, 4), t(3, 4, 6)),
        ShapeError,
    ),
    (
        "experts_wrong_down",
        lambda: _core.experts_forward(t(6, 4), PLAN, t(3, 6, 4), t(3, 6, 4), t(3, 6, 4)),
        ShapeError,
    ),
    (
        "experts_wrong_expert_count",
        lambda: _core.experts_forward(t(6, 4), PLAN, t(2, 6, 4), t(2, 6, 4), t(2, 4, 6)),
        ShapeError,
    ),
    ("metric_alpha_shape", lambda: _core.metric_attention_forward(Q, K, K, t(3), W), ShapeError),
    (
        "metric_heads_not_multiple",
        lambda: _core.metric_attention_forward(t(1, 4, 3, 4), t(1, 4, 2, 4), t(1, 4, 2, 4), t(3), t(3, 4)),
        ShapeError,
    ),
    (
        "metric_rows_unsorted",
        lambda: _core.metric_attention_forward(t(2, 2, 4), K, K, AL, W, None, np.array([2, 1])),
        InvalidValueError,
    ),
    (
        "metric_rows_out_of_range",
        lambda: _core.metric_attention_forward(t(1, 2, 4), K, K, AL, W, None, np.array([4])),
        InvalidValueError,
    ),
    ("metric_kb_shape", lambda: _core.metric_attention_forward(Q, K, K, AL, W, t(1, 4, 1)), ShapeError),
    (
        "metric_backward_lse_shape",
        lambda: _core.metric_attention_backward(Q, K, K, AL, W, None, None, False, Q, t(4, 1), Q),
        ShapeError,
    ),
    ("ball_origin_shape", lambda: _core.ball_penalty_forward(K, t(2, 3), t(2), W, 1.0), ShapeError),
    ("ball_backward_dkb", lambda: _core.ball_penalty_backward(K, W, t(2), W, 1.0, t(1, 4, 3)), ShapeError),
    ("ti_triple_out_of_range", lambda: _core.ti_loss_forward(K, W, np.array([[0, 1, 4]]), 0.1), InvalidValueError),
    ("ti_not_triples", lambda: _core.ti_loss_forward(K, W, np.array([0, 1]), 0.1), ShapeError),
    ("col_scale_shape", lambda: _core.col_scale_forward(t(3, 4), t(3)), ShapeError),
    ("gather_row_out_of_range", lambda: _core.gather_rows_forward(t(3, 4), np.array([3])), InvalidValueError),
    ("gather_backward_n_small", lambda: _core.gather_rows_backward(t(1, 4), np.array([3]), 3), InvalidValueError),
    ("concat_widths_differ", lambda: _core.concat_rows([t(1, 4), t(1, 3)]), ShapeError),
    ("concat_nothing", lambda: _core.concat_rows([]), ShapeError),
    ("split_sizes", lambda: _core.split_rows(t(3, 4), [1, 1]), ShapeError),
    ("dwconv_weight_shape", lambda: _core.dwconv_forward(t(1, 4, 3), t(2, 5)), ShapeError),
    ("dwconv_rows_unsorted", lambda: _core.dwconv_forward(t(1, 4, 3), t(3, 5), np.array([3, 1])), InvalidValueError),
    ("dwconv_backward_dy", lambda: _core.dwconv_backward(t(1, 4, 3), t(3, 5), None, t(3, 3)), ShapeError),
    ("rope_angles_odd_head", lambda: _core.rope_angles_forward(t(2, 1, 5), t(4, 2), np.array([0, 1])), ShapeError),
    (
        "rope_angles_pos_range",
        lambda: _core.rope_angles_forward(t(2, 1, 4), t(4, 2), np.array([0, 4])),
        InvalidValueError,
    ),
    ("rope_angles_pos_count", lambda: _core.rope_angles_forward(t(2, 1, 4), t(4, 2), np.array([0])), ShapeError),
    ("softplus_backward_shape", lambda: _core.softplus_backward(t(3), t(4)), ShapeError),
    ("negative_rows", lambda: _core.gather_rows_forward(t(3, 4), np.array([-1])), InvalidValueError),
]


@pytest.mark.parametrize("name,call,error", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_raises(name, call, error):
    with pytest.raises(error):
        call()


def test_good_calls_of_the_same_shapes_pass():
    # The valid neighbours of the rows above, so the table tests the checks, not the setup.
    assert _core.moe_plan(IDX, 3).n_slots == 6
    assert _core.experts_forward(t(6, 4), PLAN, t(3, 6, 4), t(3, 6, 4), t(3, 4, 6))[0].shape == (6, 4)
    assert _core.metric_attention_forward(t(2, 2, 4), K, K, AL, W, None, np.array([1, 2]))[0].shape == (2, 2, 4)
    assert _core.rope_angles_forward(t(2, 1, 4), t(4, 2), np.array([0, 3])).shape == (2, 1, 4)
    assert _core.ti_loss_forward(K, W, np.array([[0, 1, 3]]), 0.1)[1] == 0
