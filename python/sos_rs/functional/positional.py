"""Rotary position embeddings and the causal depthwise convolution over time."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from ..autograd import Tensor, record


def rope(x: Tensor, base: float = 10000.0, positions: Optional[np.ndarray] = None) -> Tensor:
    """Rotary embedding on x: [B, T, H, hd] (HF Llama rotate_half layout). `positions` is an
    integer array of T (shared by the batch) or B*T entries; default 0..T-1."""
    y = _core.rope_forward(x.data, base, positions)
    return record("rope", y, (x,), lambda dy: (_core.rope_backward(dy, base, positions),))


def rope_angles(x: Tensor, ang: Tensor, pos: np.ndarray) -> Tensor:
    """Rotate-half RoPE with given angles: row n of x [..., H, hd] rotates by ang[pos[n]]."""
    y = _core.rope_angles_forward(x.data, ang.data, pos)
    return record("rope_angles", y, (x, ang), lambda d: _core.rope_angles_backward(x.data, ang.data, pos, d))


def dwconv(x: Tensor, w: Tensor, rows: Optional[np.ndarray] = None) -> Tensor:
    """Causal depthwise conv over time. x [B, T, D], w [D, K] -> [B, T, D], or [M, D] at `rows`."""
    y = _core.dwconv_forward(x.data, w.data, rows)
    return record("dwconv", y, (x, w), lambda d: _core.dwconv_backward(x.data, w.data, rows, d))
