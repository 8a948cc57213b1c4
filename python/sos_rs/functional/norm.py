"""Normalisations over the last dimension."""

from __future__ import annotations

from .. import _core
from ..autograd import Tensor, record


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    y, rstd = _core.rmsnorm_forward(x.data, weight.data, eps)
    return record("rmsnorm", y, (x, weight), lambda dy: _core.rmsnorm_backward(x.data, weight.data, rstd, dy))


def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    y, mean, rstd = _core.layernorm_forward(x.data, weight.data, bias.data, eps)
    return record(
        "layernorm", y, (x, weight, bias), lambda dy: _core.layernorm_backward(x.data, weight.data, mean, rstd, dy)
    )
