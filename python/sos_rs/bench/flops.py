"""FLOP counts of what `sos bench` times (model FLOPs, multiply and add counted as 2).

Training step of a model on B × T tokens:
    6 · N_active · B·T                      parameter matmuls: forward 2, backward 4 per weight
  + 6 · n_attn · B · H · T² · hd            causal attention: QKᵀ and PV over the lower
                                            triangle (2·B·H·T²·hd forward), twice that backward
N_active = active_param_fraction · all parameters (1.0 for dense, measured on the step for
routed families), less what an untied input embedding contributes to it (a lookup, no
multiplies: the whole table for dense, the one row a routed family's fraction counts; tied, the
table is the head's matmul and stays). n_attn = attention modules (dense: one per
layer; MoA/DiscoverLM: one per metric-attention path per layer, counted over every query row
as the kernel runs them). Norms, activations, softmax and the optimizer are left out (< 1%).

Attention forward + backward alone: 7 · B · H · T² · hd (the kernel's work, counting the
backward's recomputation of the scores; the same convention as scripts/bench_side_by_side).
GEMM M × N × K: 2 · M · N · K.
"""

from __future__ import annotations


def attention_modules(model) -> int:
    cfg = model.config
    paths = getattr(cfg, "paths", None)
    if paths is None:
        return int(cfg.n_layers)
    return int(cfg.n_layers * sum(p in ("mha", "mqa") for p in paths))


def head_dim(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "head_dim", None) or cfg.d_model // cfg.n_heads)


def matmul_params(model, active_fraction: float, measured: bool) -> float:
    """N_active of the module docstring; `measured` says the fraction came from the family's
    step statistics (routed) rather than being 1.0 (dense)."""
    cfg = model.config
    n = active_fraction * model.num_parameters()
    if not cfg.tie_embeddings:
        n -= cfg.d_model if measured else cfg.vocab_size * cfg.d_model
    return n


def train_step_flops(model, batch: int, seq: int, active_fraction: float, measured: bool) -> float:
    cfg = model.config
    tokens = batch * seq
    attn = 6.0 * attention_modules(model) * batch * cfg.n_heads * seq * seq * head_dim(model)
    return 6.0 * matmul_params(model, active_fraction, measured) * tokens + attn


def attention_flops(batch: int, heads: int, seq: int, hd: int) -> float:
    return 7.0 * batch * heads * seq * seq * hd
