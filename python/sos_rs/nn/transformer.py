"""Attention and MLP blocks of a Llama-style decoder, with HF Llama parameter names
(q_proj, k_proj, v_proj, o_proj; gate_proj, up_proj, down_proj), and the switches imported
checkpoints need: a head size apart from the width, q/k/v biases (Qwen2), per-head q/k RMSNorm
(Qwen3, Gemma3: q_norm, k_norm), a set score scale (Gemma3), a sliding attention window (Mistral,
Gemma3) and a GELU-tanh gate (GeGLU)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor, grad_enabled
from .layers import Linear, RMSNorm
from .module import Module


class CausalSelfAttention(Module):
    """Multi-head (n_kv_heads == n_heads) or grouped-query causal attention with RoPE.

    `head_dim` defaults to d_model / n_heads; `qkv_bias` adds biases to q/k/v (not o);
    `qk_norm_eps` (when set) RMS-normalises each head's query and key over head_dim, with a
    weight of head_dim, before RoPE; `scale` multiplies the scores (default 1/sqrt(head_dim));
    `window` (when set) lets each query see only the last `window` positions, itself included.

    Without a cache, q_norm or biases, the projections, RoPE and attention are one node
    (`F.qkv_proj_attention`): one gradient buffer for the three projections, so their backward is
    one GEMM per operand and the input gradient needs no sum of three."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        rope_theta: float,
        rng: np.random.Generator,
        std: float,
        out_std: float,
        head_dim: Optional[int] = None,
        qkv_bias: bool = False,
        qk_norm_eps: Optional[float] = None,
        scale: Optional[float] = None,
        window: Optional[int] = None,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.window = F.check_window(window)
        self.head_dim = head_dim or d_model // n_heads
        self.rope_theta = rope_theta
        self.scale = scale if scale is not None else 1.0 / math.sqrt(self.head_dim)
        hd = self.head_dim
        self.q_proj = Linear(d_model, n_heads * hd, rng, std, bias=qkv_bias)
        self.k_proj = Linear(d_model, n_kv_heads * hd, rng, std, bias=qkv_bias)
        self.v_proj = Linear(d_model, n_kv_heads * hd, rng, std, bias=qkv_bias)
        self.o_proj = Linear(n_heads * hd, d_model, rng, out_std)
        self.qk_norm = qk_norm_eps is not None
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(hd, qk_norm_eps)
            self.k_norm = RMSNorm(hd, qk_norm_eps)

    def __call__(
        self,
        x: Tensor,
        cache: Optional["LayerKVCache"] = None,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """x: [B, T, D]. With `cache` (inference), x holds the tokens after those already cached:
        their keys and values are appended and each attends to everything before it (or to the
        last `window` positions). Training on packed documents: `positions` (int [B, T]) are the
        RoPE positions (restarting at each document) and `segments` (int [B, T], non-decreasing
        along a row) keep each query within its own document; neither goes with a cache."""
        b, t, _ = x.shape
        if cache is not None and (positions is not None or segments is not None):
            raise ValueError("positions/segments (document masks) are for training passes, not with a KV cache")
        hd = self.head_dim
        if cache is None and not self.qk_norm and not self.q_proj.has_bias:
            # Fused: projections, RoPE and attention as one node whose backward is one GEMM per
            # operand against the stacked weights (the same values; see F.qkv_proj_attention).
            o = F.qkv_proj_attention(
                x,
                self.q_proj.weight,
                self.k_proj.weight,
                self.v_proj.weight,
                self.n_heads,
                self.n_kv_heads,
                hd,
                self.rope_theta,
                self.scale,
                self.window,
                positions,
                segments,
            )
            return self.o_proj(o)
        q = F.reshape(self.q_proj(x), [b, t, self.n_heads, hd])  # [B, T, H, hd]
        k = F.reshape(self.k_proj(x), [b, t, self.n_kv_heads, hd])  # [B, T, Hkv, hd]
        v = F.reshape(self.v_proj(x), [b, t, self.n_kv_heads, hd])
        if self.qk_norm:  # over the last axis (hd) of each head
            q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            positions = np.arange(cache.length, cache.length + t)
        elif positions is not None:
            positions = np.ascontiguousarray(positions).reshape(-1)  # [B·T]: per row
        q = F.rope(q, self.rope_theta, positions)
        k = F.rope(k, self.rope_theta, positions)
        if cache is None:
            o = F.causal_attention(q, k, v, self.scale, self.window, segments)  # [B, T, H, hd]
        else:
            kc, vc = cache.append(k.data, v.data)  # [B, len+T, Hkv, hd]
            o = Tensor(_core.attention_with_cache(q.data, kc, vc, self.scale, self.window))
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
    """down(silu(gate(x)) * up(x)); with activation="gelu_tanh", down(gelu_tanh(gate(x)) * up(x))
    (GeGLU, Gemma's MLP). While training (gradients on), the SiLU form runs gate and up as one
    GEMM against the two weights stacked, with the activation reading its output in one pass and
    its backward giving one [.., 2·hidden] gradient (one GEMM per operand instead of two and a
    sum); without gradients (sampling a token at a time) it keeps two GEMMs and skips stacking."""

    ACTIVATIONS = ("silu", "gelu_tanh")

    def __init__(
        self, d_model: int, hidden: int, rng: np.random.Generator, std: float, out_std: float, activation: str = "silu"
    ):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"MLP activation {activation!r} is not one of {', '.join(self.ACTIVATIONS)}")
        self.activation = activation
        self.gate_proj = Linear(d_model, hidden, rng, std)
        self.up_proj = Linear(d_model, hidden, rng, std)
        self.down_proj = Linear(hidden, d_model, rng, out_std)

    def __call__(self, x: Tensor) -> Tensor:
        if self.activation == "gelu_tanh":
            return self.down_proj(F.mul(F.gelu(self.gate_proj(x)), self.up_proj(x)))
        if grad_enabled():
            w = F.concat_rows([self.gate_proj.weight, self.up_proj.weight])
            return self.down_proj(F.swiglu_packed(F.linear(x, w)))
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))
