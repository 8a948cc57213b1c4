"""Sampling with a KV cache: the prompt is run once, then each new token costs one forward of
one position against the cache (O(T) per token). Temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .autograd import no_grad


def filter_logits(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Probabilities over the vocabulary after temperature, top-k and top-p. logits: [V]."""
    x = logits.astype(np.float64)
    if temperature <= 0:
        p = np.zeros_like(x)
        p[int(np.argmax(x))] = 1.0
        return p
    x = x / temperature
    if 0 < top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if 0 < top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        cut = np.searchsorted(cum, top_p) + 1  # smallest prefix whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[:cut]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def generate(model, prompt_ids: list, max_new_tokens: int, temperature: float = 0.8, top_k: int = 200,
             top_p: float = 1.0, seed: int = 0, stop_id: Optional[int] = None) -> list:
    """Continues `prompt_ids` (non-empty) by up to max_new_tokens tokens; returns only the new ones.
    Stops early at `stop_id` or when the context is full."""
    if not prompt_ids:
        raise ValueError("generate: the prompt must hold at least one token")
    rng = np.random.default_rng(seed)
    max_len = model.config.max_seq_len
    prompt_ids = list(prompt_ids)[-max_len:]
    out: list = []
    with no_grad():
        cache = model.new_cache(1)
        logits = model(np.asarray([prompt_ids], dtype=np.int64), cache).numpy()[0, -1]
        for _ in range(max_new_tokens):
            p = filter_logits(logits, temperature, top_k, top_p)
            tok = int(rng.choice(p.size, p=p))
            out.append(tok)
            if tok == stop_id or cache[0].length >= max_len:
                break
            logits = model(np.asarray([[tok]], dtype=np.int64), cache).numpy()[0, -1]
    return out
