"""Sampling with a KV cache: the prompt is run once, then each new token costs one forward of
one position against the cache (O(T) per token). Temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from typing import List, Optional

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


def generate(
    model,
    prompt_ids: list,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 200,
    top_p: float = 1.0,
    seed: int = 0,
    stop_id: Optional[int] = None,
) -> list:
    """Continues `prompt_ids` (non-empty) by up to max_new_tokens tokens; returns only the new ones.
    Stops early at `stop_id` or when the context is full."""
    if not prompt_ids:
        raise ValueError("generate: the prompt must hold at least one token")
    rng = np.random.default_rng(seed)
    max_len = model.config.max_seq_len
    prompt_ids = list(prompt_ids)[-max_len:]
    out: list = []
    cache = model.new_cache(1)
    if cache is None:
        return _generate_uncached(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, rng, stop_id, max_len)
    with no_grad():
        logits = model(np.asarray([prompt_ids], dtype=np.int64), cache).numpy()[0, -1]
        for _ in range(max_new_tokens):
            p = filter_logits(logits, temperature, top_k, top_p)
            tok = int(rng.choice(p.size, p=p))
            out.append(tok)
            if tok == stop_id or cache[0].length >= max_len:
                break
            logits = model(np.asarray([[tok]], dtype=np.int64), cache).numpy()[0, -1]
    return out


def _generate_uncached(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, rng, stop_id, max_len) -> list:
    """For families without a KV cache (the sparse ones): the whole context is re-read per token,
    in inference mode."""
    was = model.training
    model.eval()
    ctx, out = list(prompt_ids), []
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                logits = model(np.asarray([ctx[-max_len:]], dtype=np.int64)).numpy()[0, -1]
                tok = int(rng.choice(logits.size, p=filter_logits(logits, temperature, top_k, top_p)))
                out.append(tok)
                ctx.append(tok)
                if tok == stop_id or len(ctx) >= max_len:
                    break
    finally:
        model.train(was)
    return out


def decode(tokenizer, ids: list, eot_id: Optional[int]) -> str:
    """Text of `ids`, with each end-of-text token shown as a paragraph break: the tokenizer drops
    special tokens, which would run the generated documents together."""
    if eot_id is None:
        return tokenizer.decode(ids)
    parts: List[list] = []
    cur: list = []
    for t in ids:
        if t == eot_id:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    parts.append(cur)
    return "\n\n".join(tokenizer.decode(p) for p in parts)
