"""Matrix products: the GEMM behind every projection."""

from __future__ import annotations

from .. import _core
from ..autograd import Tensor, record


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """y = x · weightᵀ.  x: [..., in], weight: [out, in] -> [..., out]"""
    y = _core.matmul(x.data, weight.data, False, True)

    def backward(dy):
        dx = _core.matmul(dy, weight.data, False, False) if x.requires_grad else None
        dw = _core.matmul(dy, x.data, True, False) if weight.requires_grad else None
        return dx, dw

    return record("linear", y, (x, weight), backward)


def linear_bias(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """y = x · weightᵀ + bias (the bias added in the GEMM's epilogue).  x: [..., in],
    weight: [out, in], bias: [out] -> [..., out]. The bias gradient is the column sum of dy,
    taken as one GEMM with a ones vector so its summation order is fixed."""
    y = _core.linear(x.data, weight.data, bias.data)
    out = weight.shape[0]

    def backward(dy):
        dx = _core.matmul(dy, weight.data, False, False) if x.requires_grad else None
        dw = _core.matmul(dy, x.data, True, False) if weight.requires_grad else None
        db = None
        if bias.requires_grad:
            rows = dy.reshape([dy.numel() // out, out])  # [N, out]
            ones = _core.Tensor.full([rows.shape[0], 1], 1.0)
            db = _core.matmul(rows, ones, True, False).reshape([out])  # [out, 1] -> [out]
        return dx, dw, db

    return record("linear", y, (x, weight, bias), backward)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a · b for a: [..., k], b: [k, n]."""
    y = _core.matmul(a.data, b.data, False, False)

    def backward(dy):
        da = _core.matmul(dy, b.data, False, True) if a.requires_grad else None
        db = _core.matmul(a.data, dy, True, False) if b.requires_grad else None
        return da, db

    return record("matmul", y, (a, b), backward)
