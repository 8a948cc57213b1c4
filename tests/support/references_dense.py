"""float64 numpy references of every op, the specification the gradient checks differentiate."""

import numpy as np


def linear(x, w):
    return x @ w.T


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def layernorm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def swiglu(g, u):
    return silu(g) * u


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(x, base, positions=None):
    b, t, h, hd = x.shape
    half = hd // 2
    pos = np.arange(t) if positions is None else np.asarray(positions)
    pos = np.broadcast_to(pos.reshape(-1, t) if pos.size == b * t else pos.reshape(1, t), (b, t))
    inv = 1.0 / base ** (np.arange(half) * 2.0 / hd)
    ang = pos[..., None, None] * inv  # [B, T, 1, half]
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def attention(q, k, v, scale, window=None, segments=None):
    """Causal attention; with `window` = W query i sees keys i - W < j <= i; with `segments`
    [B, T] only keys of its own segment (a block-diagonal causal mask)."""
    b, t, hq, hd = q.shape
    rep = hq // k.shape[2]
    k = np.repeat(k, rep, axis=2)
    v = np.repeat(v, rep, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (j > i - window)
    if segments is not None:
        seg = np.asarray(segments)
        visible = visible[None] & (seg[:, :, None] == seg[:, None, :])  # [B, T, T]
        visible = visible[:, None]  # [B, 1, T, T]
    s = np.where(visible, s, -np.inf)
    return np.einsum("bhij,bjhd->bihd", softmax(s), v)


def embedding(w, ids):
    return w[ids]


def cross_entropy(logits, targets):
    x = logits.reshape(-1, logits.shape[-1])
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    return np.mean(lse - x[np.arange(len(x)), targets.reshape(-1)])
