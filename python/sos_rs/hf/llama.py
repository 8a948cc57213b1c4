"""The dense family as Hugging Face `LlamaForCausalLM`: its parameter names already are Llama's,
so an export writes the weights unchanged beside a Llama config.json."""

from __future__ import annotations

import json
import pathlib
from typing import List, Optional

import numpy as np


def llama_config(cfg: dict, extra_config: Optional[dict] = None) -> dict:
    """config.json of LlamaForCausalLM for a DenseConfig (as a dict)."""
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["d_model"],
        "intermediate_size": cfg["ffn_hidden"],
        "num_hidden_layers": cfg["n_layers"],
        "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "head_dim": cfg["d_model"] // cfg["n_heads"],
        "max_position_embeddings": cfg["max_seq_len"],
        "rms_norm_eps": cfg["norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "tie_word_embeddings": cfg["tie_embeddings"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg["init_std"],
        "torch_dtype": "float32",
    }
    out.update(extra_config or {})
    return out


def write_llama(model, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
    """The dense family's `export_hf`: model.safetensors and config.json; the paths written."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(arr) for name, arr in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llama_config(model.config.to_dict(), extra_config), indent=2))
    return [out / "model.safetensors", out / "config.json"]
