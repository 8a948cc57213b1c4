"""MistralForCausalLM <-> the dense family: Llama's layout with a sliding window on every layer
(`sliding_window`, null for none): each query sees the last `sliding_window` positions, itself
included, as in transformers."""

from __future__ import annotations

from typing import Optional

from .mapping import Architecture, layout_config, llama_layout, same_name, silu_only


def to_dense(hf: dict) -> dict:
    silu_only(hf)
    out = llama_layout(hf, default_tie=False)
    window = hf.get("sliding_window")
    if window is not None:
        out["sliding_window"] = int(window)
    return out


def mistral_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    out = layout_config(cfg, "MistralForCausalLM", "mistral")
    out.update({"hidden_act": "silu", "sliding_window": cfg["sliding_window"]})
    out.update(extra_config or {})
    return out


MISTRAL = Architecture("MistralForCausalLM", "mistral", to_dense, mistral_config, same_name, lambda n: n)
