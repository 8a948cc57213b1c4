"""Validation loss and bits per byte over prepared shards.

bits per byte = (mean loss in nats / ln 2) × (tokens / bytes), with the split's tokens-per-byte
ratio from meta.json; it compares models across tokenizers."""

from __future__ import annotations

import math

from ..autograd import no_grad


def evaluate(model, belt, batches: int, bytes_per_token: float) -> dict:
    """Mean loss over `batches` batches of `belt` (0 = one whole epoch of it)."""
    if batches <= 0:
        per_batch = belt.batch_size * belt.seq_len if hasattr(belt, "seq_len") else None
        batches = max(1, belt.tokens_per_epoch // per_batch) if per_batch else 1
    total, count = 0.0, 0
    # Sparse families score cross-entropy alone, in inference mode (their loss() adds regularisers).
    score = getattr(model, "eval_loss", None)
    with no_grad():
        for _ in range(batches):
            ids, targets = belt.next_batch()
            loss = score(ids, targets) if score else model.loss(ids, targets).item()
            total += loss * targets.size
            count += targets.size
    loss = total / count
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token, "val_tokens": count}
