"""Differentiable ops: each calls a Rust forward and records the matching Rust backward on the
autograd tape. One module per kind of op; everything is re-exported here, so model code writes
`from sos_rs import functional as F` and `F.linear(...)`.

Shapes follow PyTorch conventions: a Linear weight is [out, in]; attention takes
q [B, T, Hq, hd] and k, v [B, T, Hkv, hd] (no head transposes anywhere).
"""

from .activation import gelu, silu, softmax, swiglu, swiglu_packed
from .attention import causal_attention, check_window, qkv_proj_attention
from .elementwise import add, add_col_scale, col_scale, mul, scale, sigmoid_range, softplus
from .embedding import cross_entropy, embedding, linear_cross_entropy
from .linear import linear, linear_bias, matmul
from .metric import ball_penalty, metric_attention, ti_loss
from .norm import add_rmsnorm, layernorm, rmsnorm
from .positional import dwconv, rope, rope_angles
from .routing import (
    combine,
    combine_parts,
    dispatch,
    expert_fractions,
    experts_swiglu,
    load_balance_loss,
    moe_plan,
    moe_swiglu,
    router_probs,
    router_z_loss,
    topk_gates,
)
from .shape import concat_rows, gather_rows, reshape, scatter_add_rows

__all__ = [
    "add",
    "add_col_scale",
    "add_rmsnorm",
    "ball_penalty",
    "causal_attention",
    "check_window",
    "col_scale",
    "combine",
    "combine_parts",
    "concat_rows",
    "cross_entropy",
    "dispatch",
    "dwconv",
    "embedding",
    "expert_fractions",
    "experts_swiglu",
    "gather_rows",
    "gelu",
    "layernorm",
    "linear",
    "linear_bias",
    "linear_cross_entropy",
    "load_balance_loss",
    "matmul",
    "metric_attention",
    "moe_plan",
    "moe_swiglu",
    "mul",
    "qkv_proj_attention",
    "reshape",
    "rmsnorm",
    "rope",
    "rope_angles",
    "router_probs",
    "router_z_loss",
    "scale",
    "scatter_add_rows",
    "sigmoid_range",
    "silu",
    "softmax",
    "softplus",
    "swiglu",
    "swiglu_packed",
    "ti_loss",
    "topk_gates",
]
