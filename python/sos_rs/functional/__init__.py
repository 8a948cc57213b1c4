"""Differentiable ops: each calls a Rust forward and records the matching Rust backward on the
autograd tape. One module per kind of op; everything is re-exported here, so model code writes
`from sos_rs import functional as F` and `F.linear(...)`.

Shapes follow PyTorch conventions: a Linear weight is [out, in]; attention takes
q [B, T, Hq, hd] and k, v [B, T, Hkv, hd] (no head transposes anywhere).
"""

from .linear import linear, matmul
from .elementwise import add, mul, scale, softplus, sigmoid_range, col_scale
from .shape import reshape, gather_rows, concat_rows
from .norm import rmsnorm, layernorm
from .activation import silu, gelu, swiglu, softmax
from .positional import rope, rope_angles, dwconv
from .attention import causal_attention
from .metric import metric_attention, ball_penalty, ti_loss
from .embedding import embedding, cross_entropy
from .routing import router_probs, topk_gates, load_balance_loss, expert_fractions, router_z_loss, moe_plan, dispatch, combine, experts_swiglu

__all__ = [
    "add",
    "ball_penalty",
    "causal_attention",
    "col_scale",
    "combine",
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
    "load_balance_loss",
    "matmul",
    "metric_attention",
    "moe_plan",
    "mul",
    "reshape",
    "rmsnorm",
    "rope",
    "rope_angles",
    "router_probs",
    "router_z_loss",
    "scale",
    "sigmoid_range",
    "silu",
    "softmax",
    "softplus",
    "swiglu",
    "ti_loss",
    "topk_gates",
]
