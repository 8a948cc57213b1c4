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


def qkv_proj_attention(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    base: float,
    scale: Optional[float] = None,
    window: Optional[int] = None,
    positions: Optional[np.ndarray] = None,
    segments: Optional[np.ndarray] = None,
) -> Tensor:
    """The q/k/v projections of x [B, T, D] (weights [heads·head_dim, D]), RoPE on q and k
    (positions 0..T-1) and causal attention, as one node -> [B, T, n_heads·head_dim]. The forward
    runs one GEMM per projection (the GEMM is faster on the three narrow outputs than on one wide
    one); the backward rotates dq, dk back into one dqkv buffer (`qkv_rope_merge`) so the input
    gradient is one GEMM against the stacked weights (no sum of three) and the weight gradients
    one GEMM, split per projection. `positions` ([T] or [B, T]) replace 0..T-1 for RoPE and
    `segments` ([B, T]) keep queries within their document, as in `causal_attention`."""
    window = check_window(window)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    b, t, _ = x.shape
    pos = None if positions is None else np.ascontiguousarray(positions).reshape(-1)
    seg = None if segments is None else np.ascontiguousarray(segments).reshape(-1)
    q = _core.matmul(x.data, wq.data, False, True).reshape([b, t, n_heads, head_dim])
    k = _core.matmul(x.data, wk.data, False, True).reshape([b, t, n_kv_heads, head_dim])
    q, k = _core.rope_forward(q, base, pos), _core.rope_forward(k, base, pos)
    v = _core.matmul(x.data, wv.data, False, True).reshape([b, t, n_kv_heads, head_dim])
    o, lse = _core.attention_forward(q, k, v, scale, window, seg)
    sizes = [wq.shape[0], wk.shape[0], wv.shape[0]]

    def backward(dy):
        dy = dy.reshape([b, t, n_heads, head_dim])
        dq, dk, dv = _core.attention_backward(q, k, v, o, lse, dy, scale, window, seg)
        dqkv = _core.qkv_rope_merge(dq, dk, dv, base, pos)  # [B, T, (H + 2·Hkv)·hd]
        dx = None
        if x.requires_grad:
            dx = _core.matmul(dqkv, _core.concat_rows([wq.data, wk.data, wv.data]), False, False)
        dws = [None, None, None]
        if wq.requires_grad or wk.requires_grad or wv.requires_grad:
            dws = _core.split_rows(_core.matmul(dqkv, x.data, True, False), sizes)
        return (dx, *dws)

    return record("qkv_attention", o.reshape([b, t, n_heads * head_dim]), (x, wq, wk, wv), backward)
