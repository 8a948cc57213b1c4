"""Validation loss and bits per byte over prepared shards.

bits per byte = (mean loss in nats / ln 2) × (tokens / bytes), with the split's tokens-per-byte
ratio from meta.json; it compares models across tokenizers."""

from __future__ import annotations

import math


def doc_masks(belt, on: bool) -> dict:
    """The last batch's positions and segments as `loss`/`eval_loss` keywords when `on`
    (data.doc_mask), else no keywords."""
    return {"positions": belt.last_positions(), "segments": belt.last_segments()} if on else {}


def evaluate(model, belt, batches: int, bytes_per_token: float) -> dict:
    """Mean loss over `batches` batches of `belt` (0 = one whole epoch of it); a belt made with
    doc_mask=True keeps its documents apart (data.doc_mask)."""
    masked = bool(getattr(belt, "doc_mask", False))
    if batches <= 0:
        per_batch = belt.batch_size * belt.seq_len if hasattr(belt, "seq_len") else None
        batches = max(1, belt.tokens_per_epoch // per_batch) if per_batch else 1
    total, count = 0.0, 0
    # Cross-entropy alone, in inference mode: a family's loss() may add regularisers.
    for _ in range(batches):
        ids, targets = belt.next_batch()
        loss = model.eval_loss(ids, targets, **doc_masks(belt, masked))
        total += loss * targets.size
        count += targets.size
    loss = total / count
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token, "val_tokens": count}
