"""LlamaForCausalLM <-> the dense family: the parameter names already are Llama's, so tensors pass
unchanged. Imported: head_dim apart from the width, tied or untied embeddings. Refused: attention
or MLP biases, a gate other than silu, RoPE scaling."""

from __future__ import annotations

from typing import Optional

from .mapping import Architecture, layout_config, llama_layout, refuse_if, same_name, silu_only


def llama_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    """config.json of LlamaForCausalLM for a DenseConfig (as a dict)."""
    out = layout_config(cfg, "LlamaForCausalLM", "llama")
    out.update({"hidden_act": "silu", "attention_bias": False, "mlp_bias": False})
    out.update(extra_config or {})
    return out


def to_dense(hf: dict) -> dict:
    silu_only(hf)
    refuse_if(hf, "attention_bias", lambda v: not v, "attention biases on q/k/v/o")
    return llama_layout(hf, default_tie=False)


LLAMA = Architecture("LlamaForCausalLM", "llama", to_dense, llama_config, same_name, lambda n: n)
