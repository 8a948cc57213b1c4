"""Attention and MLP blocks of a Llama-style decoder, with HF Llama parameter names
(q_proj, k_proj, v_proj, o_proj; gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from .layers import Linear
from .module import Module


class CausalSelfAttention(Module):
    """Multi-head (n_kv_heads == n_heads) or grouped-query causal attention with RoPE."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        rope_theta: float,
        rng: np.random.Generator,
        std: float,
        out_std: float,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.rope_theta = rope_theta
        self.q_proj = Linear(d_model, n_heads * self.head_dim, rng, std)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, rng, std)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, rng, std)
        self.o_proj = Linear(n_heads * self.head_dim, d_model, rng, out_std)

    def __call__(self, x: Tensor, cache: Optional["LayerKVCache"] = None) -> Tensor:
        """x: [B, T, D]. With `cache` (inference), x holds the tokens after those already cached:
        their keys and values are appended and each attends to everything before it."""
        b, t, _ = x.shape
        hd = self.head_dim
        q = F.reshape(self.q_proj(x), [b, t, self.n_heads, hd])  # [B, T, H, hd]
        k = F.reshape(self.k_proj(x), [b, t, self.n_kv_heads, hd])  # [B, T, Hkv, hd]
        v = F.reshape(self.v_proj(x), [b, t, self.n_kv_heads, hd])
        positions = None if cache is None else np.arange(cache.length, cache.length + t)
        q = F.rope(q, self.rope_theta, positions)
        k = F.rope(k, self.rope_theta, positions)
        if cache is None:
            o = F.causal_attention(q, k, v, 1.0 / math.sqrt(hd))  # [B, T, H, hd]
        else:
            kc, vc = cache.append(k.data, v.data)  # [B, len+T, Hkv, hd]
            o = Tensor(_core.attention_with_cache(q.data, kc, vc, 1.0 / math.sqrt(hd)))
        return self.o_proj(F.reshape(o, [b, t, self.n_heads * hd]))


class LayerKVCache:
    """Keys and values of the tokens seen so far by one attention layer (sampling)."""

    def __init__(self, batch: int, max_len: int, n_kv_heads: int, head_dim: int):
        self.k = np.zeros((batch, max_len, n_kv_heads, head_dim), np.float32)
        self.v = np.zeros_like(self.k)
        self.length = 0

    def append(self, k: "_core.Tensor", v: "_core.Tensor"):
        t = k.shape[1]
        if self.length + t > self.k.shape[1]:
            from ..errors import ShapeError

            raise ShapeError(f"KV cache holds {self.k.shape[1]} positions; cannot add {t} to {self.length}")
        self.k[:, self.length : self.length + t] = k.numpy()
        self.v[:, self.length : self.length + t] = v.numpy()
        self.length += t
        n = self.length
        return _core.Tensor(self.k[:, :n]), _core.Tensor(self.v[:, :n])


class SwiGLUMLP(Module):
    """down(silu(gate(x)) * up(x))"""

    def __init__(self, d_model: int, hidden: int, rng: np.random.Generator, std: float, out_std: float):
        super().__init__()
        self.gate_proj = Linear(d_model, hidden, rng, std)
        self.up_proj = Linear(d_model, hidden, rng, std)
        self.down_proj = Linear(hidden, d_model, rng, out_std)

    def __call__(self, x: Tensor) -> Tensor:
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))
