"""Every op's forward against its float64 numpy reference, and its Rust backward against central
differences of that reference in float64 (eps 1e-6, rtol 1e-3, atol 1e-5, as torch.gradcheck)."""

from __future__ import annotations

import numpy as np
import pytest

import sos_rs
from sos_rs import _core
from sos_rs import functional as F
from tests.support import references_dense as R
from tests.support.gradcheck import check_op

rng = np.random.default_rng(7)


def arr(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def _qkv_attention_ref(qkv, h, hkv, hd, base, scale, window=None, positions=None, segments=None):
    """Split the stacked projection output into heads, RoPE q and k, attend (float64)."""
    b, t, _ = qkv.shape
    q = qkv[..., : h * hd].reshape(b, t, h, hd)
    k = qkv[..., h * hd : (h + hkv) * hd].reshape(b, t, hkv, hd)
    v = qkv[..., (h + hkv) * hd :].reshape(b, t, hkv, hd)
    o = R.attention(R.rope(q, base, positions), R.rope(k, base, positions), v, scale, window, segments)
    return o.reshape(b, t, h * hd)


IDS = np.array([[3, 0, 5], [5, 5, 1]])
POS = np.array([4, 0, 2, 7, 1, 3])
# Documents packed into rows of 7: a 1-token document, a document cut by the row's end.
SEG = np.array([[0, 0, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2]])
DOC_POS = np.array([[0, 1, 0, 0, 1, 2, 3], [0, 0, 1, 2, 3, 4, 0]])  # positions restarting with SEG

# name, sos op on Tensors, f64 reference on arrays, inputs (float32), which inputs to differentiate
CASES = [
    ("linear", lambda x, w: F.linear(x, w), R.linear, [arr(2, 3, 5), arr(4, 5)], [0, 1]),
    (
        "linear_bias",
        F.linear_bias,
        lambda x, w, b: R.linear(x, w) + b,
        [arr(2, 3, 5), arr(4, 5), arr(4)],
        [0, 1, 2],
    ),
    ("matmul", lambda a, b: F.matmul(a, b), lambda a, b: a @ b, [arr(3, 6), arr(6, 4)], [0, 1]),
    ("add", F.add, lambda a, b: a + b, [arr(4, 7), arr(4, 7)], [0, 1]),
    ("mul", F.mul, lambda a, b: a * b, [arr(4, 7), arr(4, 7)], [0, 1]),
    ("scale", lambda a: F.scale(a, -0.7), lambda a: -0.7 * a, [arr(9)], [0]),
    (
        "rmsnorm",
        lambda x, w: F.rmsnorm(x, w, 1e-5),
        lambda x, w: R.rmsnorm(x, w, 1e-5),
        [arr(3, 2, 10), arr(10)],
        [0, 1],
    ),
    (
        "add_rmsnorm",  # both outputs: the residual sum and its norm
        lambda x, a, w: F.add(*F.add_rmsnorm(x, a, w, 1e-5)),
        lambda x, a, w: (x + a) + R.rmsnorm(x + a, w, 1e-5),
        [arr(3, 2, 10), arr(3, 2, 10), arr(10)],
        [0, 1, 2],
    ),
    (
        "rmsnorm_residual",  # x feeds the norm and the residual add: the norm's backward adds dx
        lambda x, w: F.add(x, F.rmsnorm(x, w, 1e-5)),
        lambda x, w: x + R.rmsnorm(x, w, 1e-5),
        [arr(4, 2, 19), arr(19)],
        [0, 1],
    ),
    (
        "add_rmsnorm_norm",
        lambda x, a, w: F.add_rmsnorm(x, a, w, 1e-5)[1],
        lambda x, a, w: R.rmsnorm(x + a, w, 1e-5),
        [arr(4, 9), arr(4, 9), arr(9)],
        [0, 1, 2],
    ),
    (
        "layernorm",
        lambda x, w, b: F.layernorm(x, w, b, 1e-5),
        lambda x, w, b: R.layernorm(x, w, b, 1e-5),
        [arr(5, 9), arr(9), arr(9)],
        [0, 1, 2],
    ),
    ("silu", F.silu, R.silu, [arr(4, 19, lo=-4, hi=4)], [0]),
    ("gelu", F.gelu, R.gelu, [arr(4, 19, lo=-4, hi=4)], [0]),
    ("swiglu", F.swiglu, R.swiglu, [arr(3, 17, lo=-3, hi=3), arr(3, 17)], [0, 1]),
    (
        "swiglu_packed",
        F.swiglu_packed,
        lambda gu: R.swiglu(gu[..., :7], gu[..., 7:]),
        [arr(2, 3, 14, lo=-3, hi=3)],
        [0],
    ),
    ("softmax", F.softmax, R.softmax, [arr(3, 11, lo=-3, hi=3)], [0]),
    ("rope", lambda x: F.rope(x, 100.0), lambda x: R.rope(x, 100.0), [arr(2, 3, 2, 6)], [0]),
    ("rope_positions", lambda x: F.rope(x, 100.0, POS), lambda x: R.rope(x, 100.0, POS), [arr(2, 3, 2, 6)], [0]),
    (
        "attention_mha",
        lambda q, k, v: F.causal_attention(q, k, v, 0.4),
        lambda q, k, v: R.attention(q, k, v, 0.4),
        [arr(2, 5, 2, 4), arr(2, 5, 2, 4), arr(2, 5, 2, 4)],
        [0, 1, 2],
    ),
    (
        "attention_gqa",
        lambda q, k, v: F.causal_attention(q, k, v, 0.4),
        lambda q, k, v: R.attention(q, k, v, 0.4),
        [arr(1, 6, 4, 4), arr(1, 6, 2, 4), arr(1, 6, 2, 4)],
        [0, 1, 2],
    ),
    (
        "attention_window",
        lambda q, k, v: F.causal_attention(q, k, v, 0.4, window=3),
        lambda q, k, v: R.attention(q, k, v, 0.4, window=3),
        [arr(2, 7, 4, 4), arr(2, 7, 2, 4), arr(2, 7, 2, 4)],
        [0, 1, 2],
    ),
    (
        "qkv_proj_attention_window",
        lambda x, wq, wk, wv: F.qkv_proj_attention(x, wq, wk, wv, 2, 2, 6, 100.0, None, window=2),
        lambda x, wq, wk, wv: _qkv_attention_ref(
            np.concatenate([R.linear(x, wq), R.linear(x, wk), R.linear(x, wv)], -1), 2, 2, 6, 100.0, 6**-0.5, window=2
        ),
        [arr(1, 6, 5), arr(12, 5), arr(12, 5), arr(12, 5)],
        [0, 1, 2, 3],
    ),
    (
        "attention_segments",
        lambda q, k, v: F.causal_attention(q, k, v, 0.4, segments=SEG),
        lambda q, k, v: R.attention(q, k, v, 0.4, segments=SEG),
        [arr(2, 7, 4, 4), arr(2, 7, 2, 4), arr(2, 7, 2, 4)],
        [0, 1, 2],
    ),
    (
        "attention_segments_window",
        lambda q, k, v: F.causal_attention(q, k, v, 0.4, window=3, segments=SEG),
        lambda q, k, v: R.attention(q, k, v, 0.4, window=3, segments=SEG),
        [arr(2, 7, 2, 4), arr(2, 7, 2, 4), arr(2, 7, 2, 4)],
        [0, 1, 2],
    ),
    (
        "qkv_proj_attention_docs",
        lambda x, wq, wk, wv: F.qkv_proj_attention(x, wq, wk, wv, 4, 2, 4, 100.0, 0.4, None, DOC_POS, SEG),
        lambda x, wq, wk, wv: _qkv_attention_ref(
            np.concatenate([R.linear(x, wq), R.linear(x, wk), R.linear(x, wv)], -1),
            4,
            2,
            4,
            100.0,
            0.4,
            positions=DOC_POS,
            segments=SEG,
        ),
        [arr(2, 7, 6), arr(16, 6), arr(8, 6), arr(8, 6)],
        [0, 1, 2, 3],
    ),
    (
        "qkv_proj_attention_gqa",
        lambda x, wq, wk, wv: F.qkv_proj_attention(x, wq, wk, wv, 4, 2, 4, 100.0, 0.4),
        lambda x, wq, wk, wv: _qkv_attention_ref(
            np.concatenate([R.linear(x, wq), R.linear(x, wk), R.linear(x, wv)], -1), 4, 2, 4, 100.0, 0.4
        ),
        [arr(2, 5, 6), arr(16, 6), arr(8, 6), arr(8, 6)],
        [0, 1, 2, 3],
    ),
    ("embedding", lambda w: F.embedding(w, IDS), lambda w: R.embedding(w, IDS), [arr(6, 4)], [0]),
    (
        "cross_entropy",
        lambda x: F.cross_entropy(x, IDS),
        lambda x: R.cross_entropy(x, IDS),
        [arr(2, 3, 6, lo=-2, hi=2)],
        [0],
    ),
]


@pytest.mark.parametrize("name,op,ref,inputs,wrt", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradient(name, op, ref, inputs, wrt):
    check_op(name, op, ref, inputs, wrt, rng)


def test_gradient_accumulates_over_reuse():
    # y = x*x + x: dy/dx = 2x + 1, through the tape's accumulation of two paths
    x = sos_rs.tensor(np.array([1.0, -2.0, 0.5], np.float32), requires_grad=True)
    y = F.add(F.mul(x, x), x)
    y.backward(_core.Tensor(np.ones(3, np.float32)))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, -3.0, 2.0])


def test_norm_backward_accumulation_has_the_bits_of_the_tape_add(monkeypatch):
    """The rmsnorm backward that adds the residual stream's gradient in its own pass
    (Node.accumulate) gives the bits of the tape's separate add, and is what the tape runs."""
    from sos_rs import autograd

    x0, a0, w0 = arr(3, 5, 37), arr(3, 5, 37), arr(37)
    up = _core.Tensor(arr(3, 5, 37))

    def grads():
        x, a, w = (sos_rs.tensor(v, requires_grad=True) for v in (x0, a0, w0))
        s, y = F.add_rmsnorm(x, a, w, 1e-5)
        out = F.add(F.add(s, y), F.rmsnorm(F.mul(s, s), w, 1e-5))
        out.backward(up)
        return [t.grad.numpy().view(np.uint32).copy() for t in (x, a, w)]

    calls = []
    orig = autograd.Node.__init__

    def spy(node, name, inputs, backward, accumulate=None):
        if accumulate is not None:
            inner = accumulate

            def accumulate(dy, acc):
                calls.append(name)
                return inner(dy, acc)

        orig(node, name, inputs, backward, accumulate)

    monkeypatch.setattr(autograd.Node, "__init__", spy)
    fused = grads()
    assert calls, "the tape used the fused accumulation"
    monkeypatch.setattr(
        autograd.Node,
        "__init__",
        lambda node, name, inputs, backward, accumulate=None: orig(node, name, inputs, backward),
    )
    plain = grads()
    for f, p in zip(fused, plain):
        np.testing.assert_array_equal(f, p)


@pytest.mark.parametrize("window", [0, -2, 2.5, True])
def test_attention_window_must_be_a_positive_int(window):
    from sos_rs.errors import InvalidValueError

    q = sos_rs.tensor(arr(1, 4, 2, 4))
    with pytest.raises(InvalidValueError, match="window"):
        F.causal_attention(q, q, q, window=window)
    with pytest.raises(InvalidValueError, match="window must be at least 1"):
        _core.attention_forward(q.data, q.data, q.data, 1.0, 0)
