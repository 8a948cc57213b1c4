"""float64 numpy references of the sparse ops: the specification the gradient checks
differentiate. Discrete choices (top-k ids, plans, rows, triples) are passed in fixed, as the
gradient is defined almost everywhere with them held constant."""

import numpy as np

from tests.support.references_dense import softmax


def router_probs(x, tau):
    return softmax(x / tau)


def topk_gates(p, idx, renormalize=True):
    g = np.take_along_axis(p, idx, axis=1)
    return g / g.sum(1, keepdims=True) if renormalize else g


def load_balance(p, idx):
    n, e = p.shape
    f = np.bincount(idx.reshape(-1), minlength=e) / idx.size
    return e * np.sum(f * p.mean(0))


def z_loss(x):
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    return np.mean(lse**2)


def dispatch(x, slot_token):
    return x[slot_token]


def combine(ys, gates, token_slot):
    n, k = token_slot.shape
    y = np.zeros((n, ys.shape[1]))
    for t in range(n):
        for j in range(k):
            if token_slot[t, j] >= 0:
                y[t] += gates[t, j] * ys[token_slot[t, j]]
    return y


def silu(x):
    return x / (1.0 + np.exp(-x))


def experts_swiglu(xs, offsets, wg, wu, wd):
    ys = np.zeros_like(xs)
    for e in range(len(offsets) - 1):
        r = slice(offsets[e], offsets[e + 1])
        ys[r] = (silu(xs[r] @ wg[e].T) * (xs[r] @ wu[e].T)) @ wd[e].T
    return ys


def metric_attention(q, k, v, alpha, w, kb=None, rows=None, hard=False):
    """Materialised: s = -α Σ w (q - k)² + kb, causal softmax. q [B,T,H,hd] or [M,H,hd] at rows."""
    b, t, hkv, hd = k.shape
    if rows is None:
        h = q.shape[2]
        qf = q.reshape(b * t, h, hd)
        rows = np.arange(b * t)
    else:
        h = q.shape[1]
        qf = q
    rep = h // hkv
    out = np.zeros((len(rows), h, hd))
    for m, r in enumerate(rows):
        bb, i = divmod(int(r), t)
        for hh in range(h):
            keys = k[bb, : i + 1, hh // rep]  # [i+1, hd]
            s = -alpha[hh] * ((qf[m, hh] - keys) ** 2 * w[hh]).sum(-1)
            if kb is not None:
                bias = kb[bb, : i + 1, hh]
                if hard:
                    s = np.where((bias < 0) & (np.arange(i + 1) != i), -np.inf, s)
                else:
                    s = s + bias
            p = np.exp(s - s.max())
            out[m, hh] = (p / p.sum()) @ v[bb, : i + 1, hh // rep]
    return out.reshape(q.shape)


def ball_penalty(k, o, r, w, beta):
    hkv, h = k.shape[-2], o.shape[0]
    kk = np.repeat(k, h // hkv, axis=-2)  # [..., H, hd]
    dist = np.sqrt((w * (kk - o) ** 2).sum(-1) + 1e-6)
    return -beta * np.maximum(dist - r, 0.0)


def ti_loss(k, w, triples, lam):
    hkv, hd, h = k.shape[-2], k.shape[-1], w.shape[0]
    kf = k.reshape(-1, hkv, hd)
    total = 0.0
    for a, b, c in triples:
        for hh in range(h):
            g = hh // (h // hkv)
            d = lambda x, y: np.sum(w[hh] * (kf[x, g] - kf[y, g]) ** 2)  # noqa: E731
            s = np.array([d(a, b), d(b, c), d(a, c)])
            total += max(2 * s.max() - s.sum(), 0.0)
    return lam * total / (len(triples) * h)


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid_range(x, lo, hi):
    return lo + (hi - lo) / (1.0 + np.exp(-x))


def dwconv(x, w, rows=None):
    b, t, d = x.shape
    kk = w.shape[1]
    xp = np.concatenate([np.zeros((b, kk - 1, d)), x], 1)
    y = sum(w[:, s] * xp[:, s : s + t] for s in range(kk))
    return y if rows is None else y.reshape(b * t, d)[rows]


def rope_angles(x, ang, pos):
    shape = x.shape
    h, hd = shape[-2], shape[-1]
    xf = x.reshape(-1, h, hd)
    a = ang[pos][:, None, :]
    c, s = np.cos(a), np.sin(a)
    x1, x2 = xf[..., : hd // 2], xf[..., hd // 2 :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).reshape(shape)
