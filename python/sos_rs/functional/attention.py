"""Causal dot-product attention (memory-efficient: no [B, H, T, T] tensor)."""

from __future__ import annotations

import math
from typing import Optional

from .. import _core
from ..autograd import Tensor, record


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> Tensor:
    """softmax(q·kᵀ·scale + causal mask)·v with q [B,T,Hq,hd], k/v [B,T,Hkv,hd] (Hq % Hkv == 0).
    Memory-efficient: no [B,H,T,T] tensor is formed."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.ndim == 4 and q.shape[-1] > 0 else 1.0
    o, lse = _core.attention_forward(q.data, k.data, v.data, scale)
    return record(
        "attention", o, (q, k, v), lambda dy: _core.attention_backward(q.data, k.data, v.data, o, lse, dy, scale)
    )
