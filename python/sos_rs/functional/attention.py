"""Causal dot-product attention (memory-efficient: no [B, H, T, T] tensor), optionally within a
sliding window and within documents (segment ids)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from ..autograd import Tensor, record
from ..errors import InvalidValueError


def check_window(window: Optional[int]) -> Optional[int]:
    """`window` as the kernels take it: None (full causal) or a positive int."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise InvalidValueError(f"attention window={window!r} must be a positive int or None")
    return window


def causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: Optional[float] = None,
    window: Optional[int] = None,
    segments: Optional[np.ndarray] = None,
) -> Tensor:
    """softmax(q·kᵀ·scale + causal mask)·v with q [B,T,Hq,hd], k/v [B,T,Hkv,hd] (Hq % Hkv == 0).
    With `window` = W, query i sees only keys j with i - W < j <= i (the last W, itself included:
    Mistral's and Gemma3's sliding window); None is full causal. With `segments` (int [B, T],
    non-decreasing along each row, e.g. the belt's `last_segments()`), query i also sees only keys
    of its own segment: documents packed into one row stay apart (a block-diagonal causal mask).
    Memory-efficient: no [B,H,T,T] tensor is formed, and key blocks outside the window or the
    document are skipped."""
    window = check_window(window)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.ndim == 4 and q.shape[-1] > 0 else 1.0
    seg = None if segments is None else np.ascontiguousarray(segments).reshape(-1)
    o, lse = _core.attention_forward(q.data, k.data, v.data, scale, window, seg)
    return record(
        "attention",
        o,
        (q, k, v),
        lambda dy: _core.attention_backward(q.data, k.data, v.data, o, lse, dy, scale, window, seg),
    )
