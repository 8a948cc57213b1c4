"""Metric attention (SPEC §6.2) as a module, with BlackHoleRoPE, optional ball pruning and the
triangle-inequality regulariser. Queries are computed only for the token rows routed to the
module; keys and values for every token, since they are the context those rows attend to."""

from __future__ import annotations

import math

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from .layers import Linear
from .module import Module, Parameter
from .moe import Aux


def rope_base_angles(max_seq_len: int, head_dim: int, theta: float) -> np.ndarray:
    """RoPE phases t·θ^(-2f/hd): [max_seq_len, hd/2] (HF Llama's inv_freq)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim)
    return (np.arange(max_seq_len, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32)


def fourier_basis(max_seq_len: int, n_terms: int) -> np.ndarray:
    """sin(π (m+1) t / L) for m < n_terms: [L, n_terms]."""
    t = np.arange(max_seq_len, dtype=np.float64)[:, None]
    return np.sin(np.pi * (np.arange(n_terms) + 1) * t / max_seq_len).astype(np.float32)


class BlackHoleRoPE(Module):
    """RoPE whose phases get a learned perturbation from a Fourier basis over position, and a
    value gate bounded in [gate_min, gate_max] [ours: the source gives only the name]:
      angle[t, f] = t·θ^(-2f/hd) + Σ_m coef[f, m]·sin(π (m+1) t / L)     (coef = 0 at init: RoPE)
      v ← v ⊙ (gate_min + (gate_max - gate_min)·sigmoid(v_gate))         (per channel, 1 at init)"""

    def __init__(
        self, head_dim: int, kv_dim: int, max_seq_len: int, theta: float, n_terms: int, gate_min: float, gate_max: float
    ):
        super().__init__()
        self.gate_min, self.gate_max = gate_min, gate_max
        self.coef = Parameter(np.zeros((head_dim // 2, n_terms)), no_decay=True)
        unit = (1.0 - gate_min) / (gate_max - gate_min)
        self.v_gate = Parameter(np.full(kv_dim, math.log(unit / (1.0 - unit))), no_decay=True)
        self._base = Tensor(_core.Tensor(rope_base_angles(max_seq_len, head_dim, theta)))
        self._basis = Tensor(_core.Tensor(fourier_basis(max_seq_len, n_terms)))

    def angles(self) -> Tensor:
        """[max_seq_len, hd/2]"""
        return F.add(self._base, F.linear(self._basis, self.coef))

    def gate_v(self, v: Tensor) -> Tensor:
        return F.col_scale(v, F.sigmoid_range(self.v_gate, self.gate_min, self.gate_max))


class MetricAttention(Module):
    """Causal metric attention, multi-head (n_kv_heads = n_heads) or multi-query (n_kv_heads = 1):
    score = -α_h Σ_c softplus(metric_w)_hc (q_c - k_c)² [- β relu(‖k - o_h‖ - r_h) with ball pruning].
    α init `alpha_init`; metric_w init 0 (w = ln 2)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        rng: np.random.Generator,
        std: float,
        out_std: float,
        alpha_init: float = 1.5,
        rope_theta: float = 10000.0,
        rope_terms: int = 16,
        v_gate_range=(0.5, 2.0),
        ball_pruning: bool = False,
        ball_beta: float = 1.0,
        ball_radius_init: float = 2.0,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.ball_beta = ball_beta
        self.q_proj = Linear(d_model, n_heads * head_dim, rng, std)
        self.k_proj = Linear(d_model, n_kv_heads * head_dim, rng, std)
        self.v_proj = Linear(d_model, n_kv_heads * head_dim, rng, std)
        self.o_proj = Linear(n_heads * head_dim, d_model, rng, out_std)
        self.alpha = Parameter(np.full(n_heads, alpha_init), no_decay=True)
        self.metric_w = Parameter(np.zeros((n_heads, head_dim)), no_decay=True)
        self.rope = BlackHoleRoPE(head_dim, n_kv_heads * head_dim, max_seq_len, rope_theta, rope_terms, *v_gate_range)
        self.ball = ball_pruning
        if ball_pruning:
            self.ball_origin = Parameter(np.zeros((n_heads, head_dim)), no_decay=True)
            self.ball_radius = Parameter(np.full(n_heads, ball_radius_init), no_decay=True)

    def __call__(self, h: Tensor, hf: Tensor, rows: np.ndarray, aux: Aux) -> Tensor:
        """h [B, T, D] (hf: the same as [N, D]); rows: query positions b·T + t -> [M, D]"""
        b, t, _ = h.shape
        hkv, hq, hd, m = self.n_kv_heads, self.n_heads, self.head_dim, len(rows)
        ang = self.rope.angles()  # [L, hd/2]
        k = F.reshape(self.k_proj(hf), [b, t, hkv, hd])
        k = F.rope_angles(k, ang, np.tile(np.arange(t), b))
        v = F.reshape(self.rope.gate_v(self.v_proj(hf)), [b, t, hkv, hd])
        q = F.reshape(self.q_proj(F.gather_rows(hf, rows)), [m, hq, hd])  # [M, H, hd]
        q = F.rope_angles(q, ang, rows % t)
        w = F.softplus(self.metric_w)
        kb = F.ball_penalty(k, self.ball_origin, self.ball_radius, w, self.ball_beta) if self.ball else None
        o = F.metric_attention(q, k, v, self.alpha, w, kb, rows, hard=self.ball and not aux.training)
        if aux.training and aux.triples is not None and aux.ti_lambda:
            ti, viol = F.ti_loss(k, w, aux.triples, aux.ti_lambda * aux.ti_weight)
            aux.add("ti", ti)
            aux.ti_violations += viol
            aux.ti_checks += len(aux.triples) * hq
        return self.o_proj(F.reshape(o, [m, hq * hd]))  # [M, D]
