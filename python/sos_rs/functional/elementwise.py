"""Elementwise ops and the small per-channel pieces (LayerScale, gates)."""

from __future__ import annotations

from .. import _core
from ..autograd import Tensor, record


def add(a: Tensor, b: Tensor) -> Tensor:
    return record("add", _core.add(a.data, b.data), (a, b), lambda dy: (dy, dy))


def mul(a: Tensor, b: Tensor) -> Tensor:
    y = _core.mul(a.data, b.data)
    return record("mul", y, (a, b), lambda dy: (_core.mul(dy, b.data), _core.mul(dy, a.data)))


def scale(a: Tensor, alpha: float) -> Tensor:
    return record("scale", _core.scale(a.data, alpha), (a,), lambda dy: (_core.scale(dy, alpha),))


def softplus(x: Tensor) -> Tensor:
    return record("softplus", _core.softplus_forward(x.data), (x,), lambda d: (_core.softplus_backward(x.data, d),))


def sigmoid_range(x: Tensor, lo: float, hi: float) -> Tensor:
    """lo + (hi - lo)·sigmoid(x)"""
    y = _core.sigmoid_range_forward(x.data, lo, hi)
    return record("sigmoid_range", y, (x,), lambda d: (_core.sigmoid_range_backward(x.data, d, lo, hi),))


def col_scale(x: Tensor, s: Tensor) -> Tensor:
    """x ⊙ s over the last dimension (LayerScale, channel gates).  s: [D]"""
    return record(
        "col_scale",
        _core.col_scale_forward(x.data, s.data),
        (x, s),
        lambda d: _core.col_scale_backward(x.data, s.data, d),
    )


def add_col_scale(x: Tensor, a: Tensor, s: Tensor) -> Tensor:
    """x + a ⊙ s over the last dimension in one pass (a LayerScaled residual branch): the bits of
    `add(x, col_scale(a, s))` without the intermediate buffer.  x, a: [..., D], s: [D]"""

    def backward(d):
        da, ds = _core.col_scale_backward(a.data, s.data, d)
        return d, da, ds

    return record("add_col_scale", _core.add_col_scale_forward(x.data, a.data, s.data), (x, a, s), backward)
