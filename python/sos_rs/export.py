"""Export to a Hugging Face folder: model.safetensors, config.json, tokenizer.json and
tokenizer_config.json. For the dense baseline the folder loads with
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` as LlamaForCausalLM with the same logits."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
from safetensors.numpy import save_file


def llama_config(cfg: dict, eot_id: int) -> dict:
    return {
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
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def export_hf(model, family: str, tokenizer_path: pathlib.Path, eot_token: str, eot_id: int, out: pathlib.Path) -> list:
    """Writes the folder; returns the paths written."""
    if family != "dense":
        raise ValueError(f"HF export is implemented for the dense family; {family!r} exports through its own modeling file")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    tensors = {name: np.ascontiguousarray(arr) for name, arr in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llama_config(cfg, eot_id), indent=2))
    shutil.copyfile(tokenizer_path, out / "tokenizer.json")
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot_token,
        "eos_token": eot_token,
        "unk_token": None,
        "model_max_length": cfg["max_seq_len"],
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return [out / n for n in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")]
