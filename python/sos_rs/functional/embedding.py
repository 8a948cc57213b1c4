"""Token embedding lookup, the fused cross-entropy over the vocabulary, and the output projection
fused with it."""

from __future__ import annotations

import numpy as np

from .. import _core
from ..autograd import Tensor, grad_enabled, record
from ._util import _as_ids


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


def linear_cross_entropy(x: Tensor, weight: Tensor, targets: np.ndarray, chunk: int = 0) -> Tensor:
    """Mean cross-entropy of the logits x · weightᵀ (x [..., D], weight [V, D]) against integer
    targets (one per row of x), a 0-d Tensor, computed without holding the [N, V] logits
    (rust/ops/linear_ce.rs). chunk: 0 picks the cut (row blocks over the whole vocabulary whose
    logits take at most 64 MiB; vocabulary chunks only for vocabularies over 128k entries); V or
    more forces row blocks, fewer walks the vocabulary in chunks of that many rows of weight.
    Training takes dx and dweight for dloss = 1 in the same call: bit-identical to
    F.cross_entropy(F.linear(x, weight), targets) with one row block or blocks a multiple of the
    GEMM's k block (every vocabulary up to 32k at 2k rows), within 1e-6 otherwise; backward
    scales them by the upstream gradient."""
    targets = _as_ids(targets).reshape(-1)
    need = grad_enabled() and (x.requires_grad or weight.requires_grad)
    loss, grads = _core.linear_cross_entropy(x.data, weight.data, targets, chunk, need)
    if grads is None:
        return Tensor(_core.Tensor.full([], loss))
    dx, dw = grads

    def backward(dy):
        g = dy.item()
        return (dx, dw) if g == 1.0 else (_core.scale(dx, g), _core.scale(dw, g))

    return record("linear_cross_entropy", _core.Tensor.full([], loss), (x, weight), backward)
