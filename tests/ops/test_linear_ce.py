"""The output projection fused with cross-entropy (rust/ops/linear_ce.rs, F.linear_cross_entropy):
float64 finite differences, parity with the unfused path (F.linear then F.cross_entropy) exact
with one vocabulary chunk and within 1e-6 with several, and the same bits at 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import sos_rs
from sos_rs import _core
from sos_rs import functional as F
from sos_rs.errors import ShapeError
from tests.support import references_dense as R
from tests.support.gradcheck import check_op

rng = np.random.default_rng(11)
TARGETS = np.array([[3, 0, 5], [6, 6, 1]])


def arr(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


@pytest.mark.parametrize("chunk", [0, 1, 3, 7])
def test_gradcheck_float64(chunk):
    # 7 vocabulary rows: chunk 3 gives chunks of 3, 3 and 1 (the online log-sum-exp across them)
    check_op(
        f"linear_cross_entropy chunk {chunk}",
        lambda x, w: F.linear_cross_entropy(x, w, TARGETS, chunk),
        lambda x, w: R.cross_entropy(R.linear(x, w), TARGETS),
        [arr(2, 3, 5, lo=-2, hi=2), arr(7, 5, lo=-2, hi=2)],
        [0, 1],
        rng,
    )


def _both(x, w, targets, chunk):
    """(loss, dx, dw) of the fused op and of the unfused path, for upstream gradient 1."""
    out = []
    for fused in (True, False):
        xt, wt = sos_rs.tensor(x, requires_grad=True), sos_rs.tensor(w, requires_grad=True)
        loss = F.linear_cross_entropy(xt, wt, targets, chunk) if fused else F.cross_entropy(F.linear(xt, wt), targets)
        loss.backward()
        out.append((loss.numpy(), xt.grad.numpy(), wt.grad.numpy()))
    return out


def test_one_chunk_is_the_unfused_path_bit_for_bit():
    x, w, t = arr(4, 32, 48), arr(500, 48), rng.integers(0, 500, (4, 32))
    (lf, xf, wf), (lu, xu, wu) = _both(x, w, t, 500)
    assert lf.tobytes() == lu.tobytes() and xf.tobytes() == xu.tobytes() and wf.tobytes() == wu.tobytes()
    # The default chunk keeps this size in one piece, so the dense family's loss is the old one.
    assert _core.linear_cross_entropy_chunk(128, 500) == 500


def test_several_chunks_within_1e_6_of_the_unfused_path():
    x, w, t = arr(4, 32, 48), arr(1000, 48), rng.integers(0, 1000, (4, 32))
    (lf, xf, wf), (lu, xu, wu) = _both(x, w, t, 192)
    np.testing.assert_allclose(lf, lu, rtol=1e-6)
    np.testing.assert_allclose(xf, xu, rtol=1e-6, atol=1e-6 * np.abs(xu).max())
    np.testing.assert_allclose(wf, wu, rtol=1e-6, atol=1e-6 * np.abs(wu).max())


def test_upstream_gradient_scales_and_no_grad_gives_the_same_loss():
    x, w, t = arr(2, 16, 24), arr(300, 24), rng.integers(0, 300, (2, 16))
    xt, wt = sos_rs.tensor(x, requires_grad=True), sos_rs.tensor(w, requires_grad=True)
    loss = F.linear_cross_entropy(xt, wt, t, 64)
    loss.backward(_core.Tensor.full([], 0.25))
    (_, x1, w1), _ = _both(x, w, t, 64)
    np.testing.assert_array_equal(xt.grad.numpy(), x1 * np.float32(0.25))
    np.testing.assert_array_equal(wt.grad.numpy(), w1 * np.float32(0.25))
    with sos_rs.no_grad():
        again = F.linear_cross_entropy(xt, wt, t, 64)
    assert again.numpy().tobytes() == loss.numpy().tobytes() and again._node is None


def test_same_bits_at_1_and_2_threads():
    x, w, t = arr(2, 96, 64), arr(3000, 64), rng.integers(0, 3000, (2, 96))
    runs, was = [], sos_rs.num_threads()
    try:
        for n in (1, 2):
            sos_rs.set_num_threads(n)
            runs.append(_both(x, w, t, 640)[0])
    finally:
        sos_rs.set_num_threads(was)
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


def test_bad_inputs_raise_typed_errors():
    x, w = sos_rs.tensor(arr(2, 3, 5)), sos_rs.tensor(arr(7, 5))
    with pytest.raises(ShapeError, match="one target per row"):
        F.linear_cross_entropy(x, w, np.array([1, 2]))
    with pytest.raises(ShapeError, match="must be"):
        F.linear_cross_entropy(x, sos_rs.tensor(arr(7, 4)), TARGETS)
    with pytest.raises(Exception, match="7"):
        F.linear_cross_entropy(x, w, np.array([[0, 1, 7], [0, 0, 0]]))
