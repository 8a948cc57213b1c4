"""Gemma3ForCausalLM (text) <-> the dense family, with Gemma's switches on: RMSNorm weights stored
as w with the norm multiplying by (1 + w) (imported as 1 + w), GeGLU with the tanh GELU, embeddings
scaled by sqrt(hidden_size), per-head q/k norms, scores scaled by query_pre_attn_scalar^-1/2,
sandwich norms, and five sliding layers (RoPE base `rope_local_base_freq`) per full layer.

Gemma's norm names differ from Llama's: its post_attention_layernorm normalises the attention
*output* (our attn_out_norm), its pre_feedforward_layernorm is our (Llama-named)
post_attention_layernorm, and post_feedforward_layernorm is our mlp_out_norm. Logit soft-capping
and bidirectional attention are refused."""

from __future__ import annotations

import re
from typing import Optional

from .mapping import Architecture, HFImportError, layer_kinds, layout_config, llama_layout, refuse_if, rope_thetas

# (HF suffix, our suffix) of the per-layer norms whose names differ.
RENAMES = [
    ("post_attention_layernorm.weight", "attn_out_norm.weight"),
    ("pre_feedforward_layernorm.weight", "post_attention_layernorm.weight"),
    ("post_feedforward_layernorm.weight", "mlp_out_norm.weight"),
]
_LAYER = re.compile(r"^(model\.layers\.\d+\.)(.*)$")


def hf_to_ours(name: str) -> Optional[str]:
    m = _LAYER.match(name)
    if m:
        for theirs, ours in RENAMES:
            if m.group(2) == theirs:
                return m.group(1) + ours
    return None if name.endswith("rotary_emb.inv_freq") else name


def ours_to_hf(name: str) -> str:
    m = _LAYER.match(name)
    if m:
        for theirs, ours in RENAMES:
            if m.group(2) == ours:
                return m.group(1) + theirs
    return name


def to_dense(hf: dict) -> dict:
    act = hf.get("hidden_activation", hf.get("hidden_act", "gelu_pytorch_tanh"))
    if act != "gelu_pytorch_tanh":
        raise HFImportError(f"hidden_activation = {act!r} is not supported (gelu_pytorch_tanh only)")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        refuse_if(hf, key, lambda v: v is None, "logit soft-capping")
    refuse_if(hf, "use_bidirectional_attention", lambda v: not v, "causal attention only")
    refuse_if(hf, "attention_bias", lambda v: not v, "attention biases on q/k/v/o")
    out = llama_layout(hf, default_tie=True)
    _, local_theta = rope_thetas(hf)
    n = out["n_layers"]
    kinds = layer_kinds(hf, n)
    if kinds is None:
        pattern = int(hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6)))
        kinds = ["sliding" if (i + 1) % pattern else "full" for i in range(n)]
    out.update(
        mlp_activation="gelu_tanh",
        qk_norm=True,
        sandwich_norm=True,
        embed_scale=True,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", out["head_dim"] or 256)),
        rope_local_theta=local_theta if local_theta is not None else 10000.0,
    )
    if "sliding" in kinds:
        out["sliding_window"] = int(require_window(hf))
        out["layer_types"] = kinds
    return out


def require_window(hf: dict) -> int:
    if hf.get("sliding_window") is None:
        raise HFImportError("config.json has sliding layers but no sliding_window")
    return int(hf["sliding_window"])


def gemma3_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    out = layout_config(cfg, "Gemma3ForCausalLM", "gemma3_text")
    kinds = cfg["layer_types"] or ["sliding" if cfg["sliding_window"] else "full"] * cfg["n_layers"]
    local = cfg["rope_local_theta"] if cfg["rope_local_theta"] is not None else cfg["rope_theta"]
    del out["rope_theta"]
    out.update(
        {
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": _int_if_whole(cfg["query_pre_attn_scalar"] or out["head_dim"]),
            "sliding_window": cfg["sliding_window"] or cfg["max_seq_len"],
            "layer_types": [f"{k}_attention" for k in kinds],
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": cfg["rope_theta"]},
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            },
            "rope_theta": cfg["rope_theta"],
            "rope_local_base_freq": local,
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "attention_bias": False,
        }
    )
    out.update(extra_config or {})
    return out


def _int_if_whole(v: float):
    """transformers 5 types query_pre_attn_scalar as an int."""
    return int(v) if float(v).is_integer() else v


GEMMA3 = Architecture("Gemma3ForCausalLM", "gemma3_text", to_dense, gemma3_config, hf_to_ours, ours_to_hf, 1.0)
