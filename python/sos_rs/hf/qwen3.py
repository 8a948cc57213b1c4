"""Qwen3ForCausalLM <-> the dense family: Llama's layout with a per-head RMSNorm on queries and
keys before RoPE (`qk_norm`: self_attn.q_norm, self_attn.k_norm) and usually a head_dim apart from
the width. Attention biases are refused; sliding windows as in Qwen2."""

from __future__ import annotations

from typing import Optional

from .mapping import Architecture, layout_config, llama_layout, refuse_if, same_name, silu_only
from .qwen2 import qwen_window_config, qwen_windows


def to_dense(hf: dict) -> dict:
    silu_only(hf)
    refuse_if(hf, "attention_bias", lambda v: not v, "attention biases on q/k/v/o")
    out = llama_layout(hf, default_tie=False)
    out["qk_norm"] = True
    qwen_windows(hf, out)
    return out


def qwen3_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    out = layout_config(cfg, "Qwen3ForCausalLM", "qwen3")
    out.update({"hidden_act": "silu", "attention_bias": False, **qwen_window_config(cfg)})
    out.update(extra_config or {})
    return out


QWEN3 = Architecture("Qwen3ForCausalLM", "qwen3", to_dense, qwen3_config, same_name, lambda n: n)
