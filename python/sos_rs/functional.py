"""Differentiable ops: each calls a Rust forward and records the matching Rust backward.

Shapes follow PyTorch conventions: a Linear weight is [out, in]; attention takes
q [B, T, Hq, hd] and k, v [B, T, Hkv, hd] (no head transposes anywhere).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from . import _core
from .autograd import Tensor, grad_enabled, record


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """y = x · weightᵀ.  x: [..., in], weight: [out, in] -> [..., out]"""
    y = _core.matmul(x.data, weight.data, False, True)

    def backward(dy):
        dx = _core.matmul(dy, weight.data, False, False) if x.requires_grad else None
        dw = _core.matmul(dy, x.data, True, False) if weight.requires_grad else None
        return dx, dw

    return record("linear", y, (x, weight), backward)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a · b for a: [..., k], b: [k, n]."""
    y = _core.matmul(a.data, b.data, False, False)

    def backward(dy):
        da = _core.matmul(dy, b.data, False, True) if a.requires_grad else None
        db = _core.matmul(a.data, dy, True, False) if b.requires_grad else None
        return da, db

    return record("matmul", y, (a, b), backward)


def add(a: Tensor, b: Tensor) -> Tensor:
    return record("add", _core.add(a.data, b.data), (a, b), lambda dy: (dy, dy))


def mul(a: Tensor, b: Tensor) -> Tensor:
    y = _core.mul(a.data, b.data)
    return record("mul", y, (a, b), lambda dy: (_core.mul(dy, b.data), _core.mul(dy, a.data)))


def scale(a: Tensor, alpha: float) -> Tensor:
    return record("scale", _core.scale(a.data, alpha), (a,), lambda dy: (_core.scale(dy, alpha),))


def reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    old = list(x.shape)
    return record("reshape", x.data.reshape(list(shape)), (x,), lambda dy: (dy.reshape(old),))


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    y, rstd = _core.rmsnorm_forward(x.data, weight.data, eps)
    return record("rmsnorm", y, (x, weight), lambda dy: _core.rmsnorm_backward(x.data, weight.data, rstd, dy))


def layernorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    y, mean, rstd = _core.layernorm_forward(x.data, weight.data, bias.data, eps)
    return record("layernorm", y, (x, weight, bias), lambda dy: _core.layernorm_backward(x.data, weight.data, mean, rstd, dy))


def silu(x: Tensor) -> Tensor:
    return record("silu", _core.silu_forward(x.data), (x,), lambda dy: (_core.silu_backward(x.data, dy),))


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (PyTorch's approximate='tanh')."""
    return record("gelu", _core.gelu_forward(x.data), (x,), lambda dy: (_core.gelu_backward(x.data, dy),))


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up"""
    y = _core.swiglu_forward(gate.data, up.data)
    return record("swiglu", y, (gate, up), lambda dy: _core.swiglu_backward(gate.data, up.data, dy))


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dimension."""
    y = _core.softmax_forward(x.data)
    return record("softmax", y, (x,), lambda dy: (_core.softmax_backward(y, dy),))


def rope(x: Tensor, base: float = 10000.0, positions: Optional[np.ndarray] = None) -> Tensor:
    """Rotary embedding on x: [B, T, H, hd] (HF Llama rotate_half layout). `positions` is an
    integer array of T (shared by the batch) or B*T entries; default 0..T-1."""
    y = _core.rope_forward(x.data, base, positions)
    return record("rope", y, (x,), lambda dy: (_core.rope_backward(dy, base, positions),))


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> Tensor:
    """softmax(q·kᵀ·scale + causal mask)·v with q [B,T,Hq,hd], k/v [B,T,Hkv,hd] (Hq % Hkv == 0).
    Memory-efficient: no [B,H,T,T] tensor is formed."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.ndim == 4 and q.shape[-1] > 0 else 1.0
    o, lse = _core.attention_forward(q.data, k.data, v.data, scale)
    return record("attention", o, (q, k, v), lambda dy: _core.attention_backward(q.data, k.data, v.data, o, lse, dy, scale))


def embedding(weight: Tensor, ids: np.ndarray) -> Tensor:
    """Rows of weight [V, D] at integer ids (any shape) -> [*ids.shape, D]."""
    ids = _as_ids(ids)
    y = _core.embedding_forward(weight.data, ids)
    vocab = weight.shape[0]
    return record("embedding", y, (weight,), lambda dy: (_core.embedding_backward(ids, dy, vocab),))


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """Mean cross-entropy of logits [..., V] against integer targets (one per row); a 0-d Tensor."""
    targets = _as_ids(targets).reshape(-1)
    if not (grad_enabled() and logits.requires_grad):
        loss, _ = _core.cross_entropy_forward(logits.data, targets)
        return Tensor(_core.Tensor.full([], loss))
    # Training: the gradient comes out of the same pass over the logits as the loss.
    loss, dlogits = _core.cross_entropy_fused(logits.data, targets)

    def backward(dy):
        g = dy.item()
        return (dlogits if g == 1.0 else _core.scale(dlogits, g),)

    return record("cross_entropy", _core.Tensor.full([], loss), (logits,), backward)


def _as_ids(ids) -> np.ndarray:
    if isinstance(ids, (list, tuple)):
        ids = np.asarray(ids, dtype=np.int64)
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"token ids must be a numpy integer array, got {type(ids).__name__}")
    return ids
