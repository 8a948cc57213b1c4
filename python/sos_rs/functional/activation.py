"""Activations and softmax over the last dimension."""

from __future__ import annotations

from .. import _core
from ..autograd import Tensor, record


def silu(x: Tensor) -> Tensor:
    return record("silu", _core.silu_forward(x.data), (x,), lambda dy: (_core.silu_backward(x.data, dy),))


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (PyTorch's approximate='tanh')."""
    return record("gelu", _core.gelu_forward(x.data), (x,), lambda dy: (_core.gelu_backward(x.data, dy),))


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up"""
    y = _core.swiglu_forward(gate.data, up.data)
    return record("swiglu", y, (gate, up), lambda dy: _core.swiglu_backward(gate.data, up.data, dy))


def swiglu_packed(gu: Tensor) -> Tensor:
    """silu(g) * u where gu [..., 2H] holds g then u per row (one GEMM against the gate and up
    weights stacked); -> [..., H]. Its gradient is one [..., 2H] buffer."""
    y = _core.swiglu_packed_forward(gu.data)
    return record("swiglu_packed", y, (gu,), lambda dy: (_core.swiglu_packed_backward(gu.data, dy),))


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension."""
    y = _core.softmax_forward(x.data)
    return record("softmax", y, (x,), lambda dy: (_core.softmax_backward(y, dy),))
