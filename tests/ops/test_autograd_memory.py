"""autograd frees the graph as backward walks it (activations released once used, nothing kept
by the loss a caller holds), accumulates leaf gradients in place without writing through an
alias, and `checkpoint` recomputes a block with the same bits."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import sos_rs
from sos_rs import _core
from sos_rs import functional as F
from sos_rs.autograd import GraphFreedError, checkpoint

rng = np.random.default_rng(3)


def arr(*shape):
    return rng.uniform(-1, 1, shape).astype(np.float32)


def test_backward_frees_activations_and_the_loss_keeps_nothing():
    w = sos_rs.tensor(arr(8, 8), requires_grad=True)
    x = sos_rs.tensor(arr(4, 8))
    h = F.silu(F.linear(x, w))
    y = F.linear(h, w)
    loss = F.cross_entropy(y, np.array([1, 2, 3, 4]))
    refs = [weakref.ref(h), weakref.ref(y)]
    del h, y
    gc.disable()  # freed by reference counting, as each node is done, not by a later collection
    try:
        assert all(r() is not None for r in refs), "the graph holds the activations before backward"
        loss.backward()
        assert all(r() is None for r in refs), "backward let go of every activation"
    finally:
        gc.enable()
    with pytest.raises(GraphFreedError, match="a second time"):
        loss.backward()


def test_leaf_gradients_accumulate_in_place_without_aliasing():
    a = sos_rs.tensor(arr(3, 4), requires_grad=True)
    b = sos_rs.tensor(arr(3, 4), requires_grad=True)
    up = arr(3, 4)
    # add's backward hands the same gradient object to both inputs.
    F.add(a, b).backward(_core.Tensor(up))
    first = a.grad
    F.add(a, b).backward(_core.Tensor(up))
    assert a.grad is first, "the second gradient is added into the first buffer"
    np.testing.assert_array_equal(a.grad.numpy(), up + up)
    np.testing.assert_array_equal(b.grad.numpy(), up + up)  # not 3x: a's add did not write into b's


def test_checkpoint_gives_the_same_bits_and_keeps_only_its_input():
    w1, w2 = arr(16, 8), arr(8, 16)
    x0, up = arr(5, 8), arr(5, 8)

    def run(recompute):
        p1, p2 = sos_rs.tensor(w1, requires_grad=True), sos_rs.tensor(w2, requires_grad=True)
        x = sos_rs.tensor(x0, requires_grad=True)

        def block(t):
            return F.add(t, F.linear(F.silu(F.linear(t, p1)), p2))

        y = checkpoint(block, x) if recompute else block(x)
        inner = y._node.inputs
        y.backward(_core.Tensor(up))
        return y.numpy(), x.grad.numpy(), p1.grad.numpy(), p2.grad.numpy(), inner

    *plain, inner_plain = run(False)
    *rec, inner_rec = run(True)
    for a, b in zip(plain, rec):
        assert a.tobytes() == b.tobytes()
    assert len(inner_rec) == 1 and len(inner_plain) == 2  # checkpoint saved x alone


def test_checkpoint_without_grad_is_the_plain_call():
    x = sos_rs.tensor(arr(2, 3))
    with sos_rs.no_grad():
        y = checkpoint(lambda t: F.scale(t, 2.0), x)
    assert y._node is None
    np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())
