"""Token embedding lookup and the fused cross-entropy over the vocabulary."""

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
