"""The dense baseline: a Llama-style decoder (pre-RMSNorm, RoPE, SwiGLU, no biases, optional
tied embeddings). Parameter names match HF `LlamaForCausalLM`, so an export needs no renaming.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..nn import CausalSelfAttention, Embedding, LayerKVCache, Linear, Module, ModuleList, RMSNorm, SwiGLUMLP
from .base import BYTES_F32, RUNTIME_BYTES, LanguageModel, MemoryEstimate, parameter_state_bytes


@dataclass
class DenseConfig:
    vocab_size: int = 4096
    """Tokens in the vocabulary; ids must lie in [0, vocab_size)."""
    d_model: int = 128
    """Width of the residual stream (HF hidden_size)."""
    n_layers: int = 4
    """Number of decoder blocks."""
    n_heads: int = 4
    """Query heads; head size is d_model / n_heads and must be even (RoPE rotates pairs)."""
    n_kv_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); None means n_heads (plain multi-head)."""
    ffn_hidden: Optional[int] = None
    """SwiGLU hidden width; None means the Llama rule 8/3 * d_model rounded up to a multiple of 32."""
    max_seq_len: int = 256
    """Longest sequence the model is trained and sampled at (HF max_position_embeddings)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the token embedding with the output projection (lm_head)."""
    init_std: float = 0.02
    """Std of the normal initialisation of every matrix; o_proj and down_proj use
    init_std / sqrt(2 * n_layers) so the residual stream's variance does not grow with depth."""
    seed: int = 0
    """Seed of the initialisation."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = 32 * math.ceil(8 * self.d_model / 3 / 32)
        problems = [
            f"{name} must be positive"
            for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len")
            if getattr(self, name) <= 0
        ]
        if problems:
            raise ValueError("DenseConfig: " + "; ".join(problems))
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        elif (self.d_model // self.n_heads) % 2:
            problems.append(f"head size {self.d_model // self.n_heads} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if problems:
            raise ValueError("DenseConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


class DecoderLayer(Module):
    def __init__(self, cfg: DenseConfig, rng: np.random.Generator):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # __post_init__ has resolved the None defaults of n_kv_heads and ffn_hidden.
        kv_heads, ffn = cfg.n_kv_heads or cfg.n_heads, cfg.ffn_hidden or 0
        self.self_attn = CausalSelfAttention(
            cfg.d_model, cfg.n_heads, kv_heads, cfg.rope_theta, rng, cfg.init_std, out_std
        )
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLUMLP(cfg.d_model, ffn, rng, cfg.init_std, out_std)

    def __call__(self, x: Tensor, cache=None) -> Tensor:
        x = F.add(x, self.self_attn(self.input_layernorm(x), cache))
        return F.add(x, self.mlp(self.post_attention_layernorm(x)))


class DenseBody(Module):
    def __init__(self, cfg: DenseConfig, rng: np.random.Generator):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, rng, cfg.init_std)
        self.layers = ModuleList(DecoderLayer(cfg, rng) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class DenseLM(LanguageModel):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    family = "dense"
    config: DenseConfig
    config_class = DenseConfig
    hf_model_type = "llama"

    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)
        rng = np.random.default_rng(cfg.seed)
        self.model = DenseBody(cfg, rng)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, rng, cfg.init_std)

    def forward(self, ids: np.ndarray, cache: Optional[list] = None) -> Tensor:
        """ids [B, T] -> logits [B, T, V]. With `cache` (from `new_cache`), ids continue the
        cached sequence (sampling; run under `no_grad`)."""
        ids = self.check_ids(ids, 0 if cache is None else cache[0].length)
        x = self.model.embed_tokens(ids)  # [B, T, D]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, None if cache is None else cache[i])
        x = self.model.norm(x)
        head = self.model.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight
        return F.linear(x, head)  # [B, T, V]

    def new_cache(self, batch: int) -> list:
        """One empty KV cache per layer, for up to max_seq_len positions."""
        c = self.config
        kv_heads = c.n_kv_heads or c.n_heads
        return [LayerKVCache(batch, c.max_seq_len, kv_heads, c.d_model // c.n_heads) for _ in range(c.n_layers)]

    def estimate_memory(self, batch: int, seq: int) -> MemoryEstimate:
        """Activation count per layer: residual, 2 norms, q/k/v/o, rope'd q/k, attention out+lse,
        gate/up/act, MLP out (~12 d-wide + 3 ffn-wide values per token); plus logits and their
        gradient (2 × vocab per token, and one more for the fused loss's gradient)."""
        c = self.config
        tokens = batch * seq
        ffn = c.ffn_hidden or 0  # resolved in __post_init__
        acts = tokens * (c.n_layers * (12 * c.d_model + 3 * ffn) + 3 * c.vocab_size) * BYTES_F32
        return MemoryEstimate(parameter_state_bytes(self.num_parameters()), acts, RUNTIME_BYTES)

    def export_hf(self, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
        """A `LlamaForCausalLM` folder: the parameter names already are HF Llama's."""
        from ..hf.llama import write_llama

        return write_llama(self, out, extra_config)
