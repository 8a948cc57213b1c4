"""Tiny random Hugging Face checkpoints of each importable architecture, built locally with
`transformers` (no hub access): the oracle of `sos import` and `sos fuse` tests."""

from __future__ import annotations

import copy
import pathlib
from typing import Optional

import numpy as np

VOCAB = 96


def word_tokenizer(path: pathlib.Path, words: list) -> None:
    """A word-level tokenizer.json over `words` (plus <eot>, <unk>), split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<eot>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


def hf_config(arch: str, **over):
    """A tiny config of `arch` (llama, mistral, qwen2, qwen3, gemma3) with GQA and a head_dim
    apart from the width where the architecture allows one."""
    import transformers as T

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        initializer_range=0.1,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=None,
    )
    if arch == "llama":
        cfg = T.LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "mistral":
        cfg = T.MistralConfig(**common, sliding_window=64, head_dim=8)
    elif arch == "qwen2":
        cfg = T.Qwen2Config(**common, tie_word_embeddings=True)
    elif arch == "qwen3":
        cfg = T.Qwen3Config(**common, head_dim=16)
    elif arch == "gemma3":
        cfg = T.Gemma3TextConfig(**common, head_dim=16, query_pre_attn_scalar=12, sliding_window=64, layer_types=None)
        cfg.layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
    else:
        raise ValueError(arch)
    for k, v in over.items():
        setattr(cfg, k, v)
    cfg.architectures = [
        {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(arch)
        or {"qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[arch]
    ]
    return cfg


def build(arch: str, folder: pathlib.Path, seed: int = 0, config=None, dtype: Optional[str] = None):
    """Writes a random model of `arch` (norm weights and biases randomised too, so a missed
    offset or bias shows) with a word tokenizer to `folder`; returns the torch model (eval)."""
    import torch
    import transformers as T

    cfg = config if config is not None else hf_config(arch)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight") or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if arch == "gemma3" or name.endswith(".bias") else 1.0))
    folder.mkdir(parents=True, exist_ok=True)
    if dtype == "bf16":  # round the weights (not the rotary buffers) and save a bfloat16 copy
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.bfloat16().float())
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
    word_tokenizer(folder / "tokenizer.json", [f"w{i}" for i in range(cfg.vocab_size - 2)])
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()
