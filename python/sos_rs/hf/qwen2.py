"""Qwen2ForCausalLM <-> the dense family: Llama's layout with biases on q_proj, k_proj and v_proj
(`qkv_bias`). Sliding windows (`use_sliding_window`) follow `layer_types`, or the layers from
`max_window_layers` on when a config.json has no `layer_types`."""

from __future__ import annotations

from typing import Optional

from .mapping import Architecture, layer_kinds, layout_config, llama_layout, same_name, silu_only


def qwen_windows(hf: dict, out: dict) -> None:
    """Qwen's optional sliding windows, into DenseConfig fields."""
    if not hf.get("use_sliding_window"):
        return
    n = out["n_layers"]
    kinds = layer_kinds(hf, n)
    if kinds is None:
        first = int(hf.get("max_window_layers", n))
        kinds = ["sliding" if i >= first else "full" for i in range(n)]
    if "sliding" in kinds:
        out["sliding_window"] = int(hf["sliding_window"])
        out["layer_types"] = kinds


def qwen_window_config(cfg: dict) -> dict:
    kinds = cfg["layer_types"] or ["sliding" if cfg["sliding_window"] else "full"] * cfg["n_layers"]
    return {
        "use_sliding_window": "sliding" in kinds,
        "sliding_window": cfg["sliding_window"],
        "layer_types": [f"{k}_attention" for k in kinds],
    }


def to_dense(hf: dict) -> dict:
    silu_only(hf)
    out = llama_layout(hf, default_tie=False)
    out["qkv_bias"] = True
    qwen_windows(hf, out)
    return out


def qwen2_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    out = layout_config(cfg, "Qwen2ForCausalLM", "qwen2")
    out.update({"hidden_act": "silu", **qwen_window_config(cfg)})
    out.update(extra_config or {})
    return out


QWEN2 = Architecture("Qwen2ForCausalLM", "qwen2", to_dense, qwen2_config, same_name, lambda n: n)
