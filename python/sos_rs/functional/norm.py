"""Normalisations over the last dimension."""

from __future__ import annotations

from typing import Tuple

from .. import _core
from ..autograd import Tensor, record


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    y, rstd = _core.rmsnorm_forward(x.data, weight.data, eps)
    return record(
        "rmsnorm",
        y,
        (x, weight),
        lambda dy: _core.rmsnorm_backward(x.data, weight.data, rstd, dy),
        # x's gradient from the residual stream, added inside the backward pass.
        lambda dy, acc: _core.rmsnorm_backward(x.data, weight.data, rstd, dy, acc),
    )


def add_rmsnorm(x: Tensor, a: Tensor, weight: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """(s, rmsnorm(s)) with s = x + a: a residual add and the RMSNorm after it in one Rust pass.
    Recorded as the two ops (`add`, then `rmsnorm` of s), so gradients flow as if unfused."""
    s_data, y, rstd = _core.add_rmsnorm_forward(x.data, a.data, weight.data, eps)
    s = record("add", s_data, (x, a), lambda dy: (dy, dy))
    return s, record(
        "rmsnorm",
        y,
        (s, weight),
        lambda dy: _core.rmsnorm_backward(s_data, weight.data, rstd, dy),
        lambda dy, acc: _core.rmsnorm_backward(s_data, weight.data, rstd, dy, acc),
    )


def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    y, mean, rstd = _core.layernorm_forward(x.data, weight.data, bias.data, eps)
    return record(
        "layernorm", y, (x, weight, bias), lambda dy: _core.layernorm_backward(x.data, weight.data, mean, rstd, dy)
    )
