"""A stack of dense-baseline blocks (pre-RMSNorm, causal multi-head attention with RoPE, SwiGLU,
residuals: the block of `models/dense.py`) in numpy, forward and backward, evaluated in an
emulated number format. Batched over a leading seed axis: every array is [S, ...] and seed s
has its own input, weights and output gradient.

Arithmetic in a format (`Arith`), for float16, bfloat16 and float32 alike:
- every tensor is stored in the format: inputs and weights are rounded once, every op's result
  is rounded (`Format.round`, round to nearest even, subnormals, overflow to inf);
- matrix products take format values and accumulate in float32 (numpy's float32 matmul, i.e.
  OpenBLAS sgemm: fused multiply-adds in its blocked order, as mixed-precision hardware does),
  then the result is rounded to the format; float16 × float16 and bfloat16 × bfloat16 products
  are exact in float32, so only the additions round;
- reductions (RMSNorm's mean square, softmax's denominator, the norm-weight gradients and the
  backward row sums) are float32 sums of format values (numpy's pairwise summation), rounded;
- each elementwise op (+, ×, ÷, 1/√, exp, sigmoid) is computed in float64 from format values
  and rounded once, i.e. correctly rounded (exact for +, ×, ÷ by Figueroa's theorem; exp and
  sigmoid are within a float64 ulp before that rounding): no hardware is more accurate.
The float64 `Arith` does the same arithmetic without rounding: the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .formats import FLOAT64, Format

PARAMS = ("g_attn", "wq", "wk", "wv", "wo", "g_mlp", "w_gate", "w_up", "w_down")


@dataclass(frozen=True)
class BlockShape:
    """Sizes of one block: d_model, heads, SwiGLU width, sequence length."""

    d_model: int = 64
    n_heads: int = 4
    ffn_hidden: int = 192
    seq_len: int = 32
    eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Arith:
    """The arithmetic of one format (see the module docstring)."""

    def __init__(self, fmt: Format):
        self.fmt = fmt
        self.exact = fmt.name == "float64"

    def q(self, x: np.ndarray) -> np.ndarray:
        return x if self.exact else self.fmt.round(x)

    def mm(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.exact:
            return np.matmul(a, b)
        return self.q(np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float64))

    def sum(self, x: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
        if self.exact:
            return x.sum(axis=axis, keepdims=keepdims)
        total = np.asarray(np.sum(x.astype(np.float32), axis=axis, keepdims=keepdims, dtype=np.float32))
        return self.q(total.astype(np.float64))

    def add(self, a, b):
        return self.q(a + b)

    def sub(self, a, b):
        return self.q(a - b)

    def mul(self, a, b):
        return self.q(a * b)


def init_stack(rng: np.random.Generator, shape: BlockShape, n_layers: int, n_seeds: int) -> List[Dict[str, np.ndarray]]:
    """Weights of `n_layers` blocks per seed, as the dense family initialises them: N(0, 0.02²)
    matrices, o_proj and down_proj N(0, (0.02 / sqrt(2L))²), norm gains 1. Matrices are stored
    [S, in, out] (x @ W)."""
    d, f, std = shape.d_model, shape.ffn_hidden, 0.02
    out_std = std / math.sqrt(2 * n_layers)
    layers = []
    for _ in range(n_layers):
        layers.append(
            {
                "g_attn": np.ones((n_seeds, d)),
                "wq": rng.normal(0, std, (n_seeds, d, d)),
                "wk": rng.normal(0, std, (n_seeds, d, d)),
                "wv": rng.normal(0, std, (n_seeds, d, d)),
                "wo": rng.normal(0, out_std, (n_seeds, d, d)),
                "g_mlp": np.ones((n_seeds, d)),
                "w_gate": rng.normal(0, std, (n_seeds, d, f)),
                "w_up": rng.normal(0, std, (n_seeds, d, f)),
                "w_down": rng.normal(0, out_std, (n_seeds, f, d)),
            }
        )
    return layers


def _rope_tables(shape: BlockShape, ar: Arith) -> Tuple[np.ndarray, np.ndarray]:
    hd = shape.head_dim
    inv = 1.0 / shape.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(shape.seq_len)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], -1)  # [T, hd], rotate-half layout (HF Llama)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], -1)
    return ar.q(cos), ar.q(sin)


def _rot(x: np.ndarray) -> np.ndarray:  # rotate_half: (x1, x2) -> (-x2, x1)
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], -1)


def _rot_t(x: np.ndarray) -> np.ndarray:  # its transpose: (z1, z2) -> (z2, -z1)
    h = x.shape[-1] // 2
    return np.concatenate([x[..., h:], -x[..., :h]], -1)


def _t(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _rms_fwd(ar: Arith, x, g, eps):
    d = x.shape[-1]
    ms = ar.q(ar.sum(ar.mul(x, x), -1, keepdims=True) / d)
    r = ar.q(1.0 / np.sqrt(ar.add(ms, eps)))
    n = ar.mul(x, r)
    return ar.mul(n, g[:, None, :]), (r, n)


def _rms_bwd(ar: Arith, dh, g, cache):
    r, n = cache
    d = dh.shape[-1]
    dg = ar.sum(ar.mul(dh, n), 1)  # [S, d]
    dn = ar.mul(dh, g[:, None, :])
    t = ar.q(ar.sum(ar.mul(dn, n), -1, keepdims=True) / d)
    dx = ar.mul(r, ar.sub(dn, ar.mul(n, t)))
    return dx, dg


def block_forward(ar: Arith, x: np.ndarray, p: Dict[str, np.ndarray], shape: BlockShape, tables):
    """x [S, T, d] -> (y [S, T, d], cache for backward)."""
    s_, t_, _ = x.shape
    h_, hd = shape.n_heads, shape.head_dim
    cos, sin = tables
    h, rms1 = _rms_fwd(ar, x, p["g_attn"], shape.eps)

    def heads(z):  # [S, T, d] -> [S, H, T, hd]
        return z.reshape(s_, t_, h_, hd).transpose(0, 2, 1, 3)

    q, k, v = (heads(ar.mm(h, p[w])) for w in ("wq", "wk", "wv"))
    qr = ar.add(ar.mul(q, cos), ar.mul(_rot(q), sin))
    kr = ar.add(ar.mul(k, cos), ar.mul(_rot(k), sin))
    scale = 1.0 / math.sqrt(hd)
    scores = ar.mul(ar.mm(qr, _t(kr)), scale)
    mask = np.triu(np.ones((t_, t_), dtype=bool), 1)
    scores = np.where(mask, -np.inf, scores)
    e = ar.q(np.exp(ar.sub(scores, scores.max(-1, keepdims=True))))
    prob = ar.q(e / ar.sum(e, -1, keepdims=True))
    o = ar.mm(prob, v).transpose(0, 2, 1, 3).reshape(s_, t_, -1)
    x1 = ar.add(x, ar.mm(o, p["wo"]))
    h2, rms2 = _rms_fwd(ar, x1, p["g_mlp"], shape.eps)
    gate, up = ar.mm(h2, p["w_gate"]), ar.mm(h2, p["w_up"])
    sg = ar.q(1.0 / (1.0 + np.exp(-gate)))
    si = ar.mul(gate, sg)
    a = ar.mul(si, up)
    y = ar.add(x1, ar.mm(a, p["w_down"]))
    cache = dict(h=h, rms1=rms1, q=q, k=k, v=v, qr=qr, kr=kr, prob=prob, o=o, h2=h2, rms2=rms2)
    cache.update(gate=gate, up=up, sg=sg, si=si, a=a)
    return y, cache


def block_backward(ar: Arith, dy: np.ndarray, p: Dict[str, np.ndarray], shape: BlockShape, tables, c):
    """dy [S, T, d] -> (dx, {parameter: gradient})."""
    s_, t_, d = dy.shape
    h_, hd = shape.n_heads, shape.head_dim
    cos, sin = tables
    g: Dict[str, np.ndarray] = {}
    # MLP
    g["w_down"] = ar.mm(_t(c["a"]), dy)
    da = ar.mm(dy, _t(p["w_down"]))
    dsi, dup = ar.mul(da, c["up"]), ar.mul(da, c["si"])
    dsilu = ar.add(c["sg"], ar.mul(c["si"], ar.sub(1.0, c["sg"])))  # silu' = σ + silu·(1 − σ)
    dgate = ar.mul(dsi, dsilu)
    g["w_gate"], g["w_up"] = ar.mm(_t(c["h2"]), dgate), ar.mm(_t(c["h2"]), dup)
    dh2 = ar.add(ar.mm(dgate, _t(p["w_gate"])), ar.mm(dup, _t(p["w_up"])))
    dx1, g["g_mlp"] = _rms_bwd(ar, dh2, p["g_mlp"], c["rms2"])
    dx1 = ar.add(dx1, dy)
    # attention
    g["wo"] = ar.mm(_t(c["o"]), dx1)
    do = ar.mm(dx1, _t(p["wo"])).reshape(s_, t_, h_, hd).transpose(0, 2, 1, 3)
    prob = c["prob"]
    dprob = ar.mm(do, _t(c["v"]))
    dv = ar.mm(_t(prob), do)
    dscores = ar.mul(prob, ar.sub(dprob, ar.sum(ar.mul(dprob, prob), -1, keepdims=True)))
    dscores = ar.mul(dscores, 1.0 / math.sqrt(hd))
    dqr, dkr = ar.mm(dscores, c["kr"]), ar.mm(_t(dscores), c["qr"])
    dq = ar.add(ar.mul(dqr, cos), _rot_t(ar.mul(dqr, sin)))
    dk = ar.add(ar.mul(dkr, cos), _rot_t(ar.mul(dkr, sin)))

    def merge(z):  # [S, H, T, hd] -> [S, T, d]
        return z.transpose(0, 2, 1, 3).reshape(s_, t_, d)

    dq, dk, dv = merge(dq), merge(dk), merge(dv)
    h = c["h"]
    g["wq"], g["wk"], g["wv"] = ar.mm(_t(h), dq), ar.mm(_t(h), dk), ar.mm(_t(h), dv)
    dh = ar.add(ar.add(ar.mm(dq, _t(p["wq"])), ar.mm(dk, _t(p["wk"]))), ar.mm(dv, _t(p["wv"])))
    dx, g["g_attn"] = _rms_bwd(ar, dh, p["g_attn"], c["rms1"])
    return ar.add(dx, dx1), g


def stack_forward_backward(fmt: Format, x, layers, dy, shape: BlockShape):
    """The stack's output and every parameter's gradient for the loss sum(y · dy), in `fmt`
    (inputs, weights and dy are rounded to it first). Returns (y, [per-layer gradient dicts])."""
    ar = Arith(fmt)
    tables = _rope_tables(shape, ar)
    params = [{k: ar.q(v) for k, v in layer.items()} for layer in layers]
    h = ar.q(x)
    caches = []
    with np.errstate(over="ignore", invalid="ignore"):
        for p in params:
            h, c = block_forward(ar, h, p, shape, tables)
            caches.append(c)
        y = h
        grads: List[Dict[str, np.ndarray]] = [{} for _ in params]
        d = ar.q(dy)
        for i in reversed(range(len(params))):
            d, grads[i] = block_backward(ar, d, params[i], shape, tables, caches[i])
            caches[i] = {}
    return y, grads


def reference(x, layers, dy, shape: BlockShape):
    """The float64 reference of `stack_forward_backward`."""
    return stack_forward_backward(FLOAT64, x, layers, dy, shape)
