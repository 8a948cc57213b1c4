"""The dense baseline: a Llama-style decoder (pre-RMSNorm, RoPE, SwiGLU, no biases, optional
tied embeddings). Parameter names match HF `LlamaForCausalLM`, so an export needs no renaming.

A few switches, all off by default, cover the checkpoints `sos import --hf` reads (SPEC §6.5):
a head size apart from the width, q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma3),
GeGLU, sandwich norms, scaled embeddings and a set score scale (Gemma3), and sliding-window layers
with their own RoPE base (Mistral, Gemma3): a sliding layer's queries see only the last
`sliding_window` positions (training and cached sampling alike).
"""

from __future__ import annotations

import functools
import math
import pathlib
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor, checkpoint, no_grad
from ..nn import CausalSelfAttention, Embedding, LayerKVCache, Linear, Module, ModuleList, RMSNorm, SwiGLUMLP
from .base import BYTES_F32, RUNTIME_BYTES, LanguageModel, MemoryEstimate, Probe, parameter_state_bytes, zero_


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
    head_dim: Optional[int] = None
    """Size of one attention head; None means d_model / n_heads. Qwen3 and Gemma3 set it apart
    from the width: q_proj is then [n_heads * head_dim, d_model]."""
    qkv_bias: bool = False
    """Biases on q_proj, k_proj and v_proj (Qwen2); o_proj and the MLP never have one."""
    qk_norm: bool = False
    """RMSNorm (weight of head_dim, eps norm_eps) on each head's query and key before RoPE
    (Qwen3, Gemma3: self_attn.q_norm, self_attn.k_norm)."""
    mlp_activation: str = "silu"
    """Gate activation of the MLP: "silu" (SwiGLU, Llama) or "gelu_tanh" (GeGLU with the tanh
    GELU, Gemma)."""
    sandwich_norm: bool = False
    """Also RMS-normalise each sublayer's output before the residual add (Gemma3's post-attention
    and post-feedforward norms: attn_out_norm, mlp_out_norm here)."""
    embed_scale: bool = False
    """Multiply the token embeddings by sqrt(d_model) (Gemma); a tied output projection uses the
    unscaled rows."""
    query_pre_attn_scalar: Optional[float] = None
    """Attention scores are q·k / sqrt(query_pre_attn_scalar) (Gemma3); None means head_dim."""
    sliding_window: Optional[int] = None
    """Keys a query sees in a sliding-window layer, itself included (Mistral, Gemma3); None means
    no sliding layers. Any positive value: a query at position i sees keys i - sliding_window < j <= i
    (it binds where max_seq_len > sliding_window; full layers stay causal over the whole context)."""
    layer_types: Optional[List[str]] = None
    """Per layer "full" or "sliding"; None means every layer is "sliding" when sliding_window is
    set (Mistral) and "full" otherwise. Gemma3 alternates five sliding layers and one full."""
    rope_local_theta: Optional[float] = None
    """RoPE base of the sliding layers (Gemma3: 10000 while rope_theta is 1e6); None = rope_theta."""
    recompute: bool = False
    """Activation recomputation per decoder block: training keeps only each block's input and
    runs the block's forward again during backward (about a third more block FLOPs for a
    fraction of the activation memory). Gradients and weights are bit-identical to
    recompute = false. Not part of the architecture: exports and imports ignore it."""

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
        if self.head_dim is None and self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads} (or set head_dim)")
        elif self.head_dim is not None and self.head_dim <= 0:
            problems.append(f"head_dim={self.head_dim} must be positive")
        elif self.resolved_head_dim() % 2:
            problems.append(f"head size {self.resolved_head_dim()} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.mlp_activation not in ("silu", "gelu_tanh"):
            problems.append(f"mlp_activation={self.mlp_activation!r} is not one of silu, gelu_tanh")
        if not isinstance(self.recompute, bool):
            problems.append(f"recompute={self.recompute!r} must be true or false")
        if self.query_pre_attn_scalar is not None and not self.query_pre_attn_scalar > 0:
            problems.append(f"query_pre_attn_scalar={self.query_pre_attn_scalar} must be positive")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                problems.append(f"layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}")
            bad = sorted({t for t in self.layer_types if t not in ("full", "sliding")})
            if bad:
                problems.append(f"layer_types holds {', '.join(map(repr, bad))}; each must be 'full' or 'sliding'")
            if "sliding" in self.layer_types and self.sliding_window is None:
                problems.append("layer_types names sliding layers but sliding_window is not set")
        if self.sliding_window is not None and "sliding" in self.resolved_layer_types():
            if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int):
                problems.append(f"sliding_window={self.sliding_window!r} must be an int")
            elif self.sliding_window <= 0:
                problems.append(f"sliding_window={self.sliding_window} must be positive")
        if problems:
            raise ValueError("DenseConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def resolved_layer_types(self) -> List[str]:
        if self.layer_types is not None:
            return list(self.layer_types)
        return ["sliding" if self.sliding_window is not None else "full"] * self.n_layers


class DecoderLayer(Module):
    def __init__(self, cfg: DenseConfig, rng: np.random.Generator, sliding: bool = False):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # __post_init__ has resolved the None defaults of n_kv_heads and ffn_hidden.
        kv_heads, ffn = cfg.n_kv_heads or cfg.n_heads, cfg.ffn_hidden or 0
        theta = cfg.rope_local_theta if sliding and cfg.rope_local_theta is not None else cfg.rope_theta
        scale = None if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar**-0.5
        self.self_attn = CausalSelfAttention(
            cfg.d_model,
            cfg.n_heads,
            kv_heads,
            theta,
            rng,
            cfg.init_std,
            out_std,
            head_dim=cfg.resolved_head_dim(),
            qkv_bias=cfg.qkv_bias,
            qk_norm_eps=cfg.norm_eps if cfg.qk_norm else None,
            scale=scale,
            window=cfg.sliding_window if sliding else None,
        )
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)  # before the MLP, as in Llama
        self.mlp = SwiGLUMLP(cfg.d_model, ffn, rng, cfg.init_std, out_std, cfg.mlp_activation)
        self.sandwich = cfg.sandwich_norm
        if cfg.sandwich_norm:
            self.attn_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def __call__(self, x: Tensor, cache=None, positions=None, segments=None) -> Tensor:
        a = self.self_attn(self.input_layernorm(x), cache, positions, segments)
        x, h = self.post_attention_layernorm.residual(x, self.attn_out_norm(a) if self.sandwich else a)
        m = self.mlp(h)
        return F.add(x, self.mlp_out_norm(m) if self.sandwich else m)


class DenseBody(Module):
    def __init__(self, cfg: DenseConfig, rng: np.random.Generator):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, rng, cfg.init_std)
        self.layers = ModuleList(DecoderLayer(cfg, rng, kind == "sliding") for kind in cfg.resolved_layer_types())
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


def _run_layer(layer: "DecoderLayer", x: Tensor, positions=None, segments=None) -> Tensor:
    """One decoder block in a training pass (no cache): what `checkpoint` re-runs in backward."""
    return layer(x, None, positions, segments)


class DenseLM(LanguageModel):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    family = "dense"
    supports_doc_mask = True
    config: DenseConfig
    config_class = DenseConfig
    hf_model_type = "llama"

    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)
        rng = np.random.default_rng(cfg.seed)
        self.model = DenseBody(cfg, rng)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, rng, cfg.init_std)

    def forward(
        self,
        ids: np.ndarray,
        cache: Optional[list] = None,
        *,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """ids [B, T] -> logits [B, T, V]. With `cache` (from `new_cache`), ids continue the
        cached sequence (sampling; run under `no_grad`). `positions`/`segments` ([B, T], the
        belt's with data.doc_mask): RoPE positions restart and attention stays within each
        document (see `LanguageModel.loss`)."""
        return F.linear(self.hidden(ids, cache, positions, segments), self.head())  # [B, T, V]

    def hidden(
        self,
        ids: np.ndarray,
        cache: Optional[list] = None,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """ids [B, T] -> the final normed hidden states [B, T, D] the output projection reads."""
        ids = self.check_ids(ids, 0 if cache is None else cache[0].length)
        positions, segments = self.check_doc_masks(ids, positions, segments)
        x = self.model.embed_tokens(ids)  # [B, T, D]
        if self.config.embed_scale:
            x = F.scale(x, math.sqrt(self.config.d_model))
        for i, layer in enumerate(self.model.layers):
            if self.config.recompute and cache is None:
                x = checkpoint(functools.partial(_run_layer, layer, positions=positions, segments=segments), x)
            else:
                x = layer(x, None if cache is None else cache[i], positions, segments)
        return self.model.norm(x)

    def next_token_loss(
        self, ids: np.ndarray, targets: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]
    ) -> Tensor:
        """Mean next-token cross-entropy, with the output projection fused into the loss over
        row blocks (`F.linear_cross_entropy`): the [B, T, V] logits never exist at once.
        `positions`/`segments`: documents kept apart (see `LanguageModel.loss`)."""
        return F.linear_cross_entropy(self.hidden(ids, None, positions, segments), self.head(), targets)

    def forward_docs(self, ids: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]) -> Tensor:
        return self.forward(ids, positions=positions, segments=segments)

    def probe(self, ids: np.ndarray) -> Probe:
        """Each decoder block's output [B·T, D] (the dense family routes nothing)."""
        ids = self.check_ids(ids)
        acts: Dict[str, np.ndarray] = {}
        with no_grad():
            x = self.model.embed_tokens(ids)
            for i, layer in enumerate(self.model.layers):
                x = layer(x)
                acts[f"layers.{i}"] = x.numpy().reshape(-1, x.shape[-1])
        return Probe(acts, {})

    def grow(self, n: int, where: str = "top") -> None:
        """New decoder blocks with o_proj and down_proj at zero: both residual branches add 0,
        so the logits are unchanged; those two matrices get gradient at once (their inputs are
        not zero), the rest of the block from the step after."""

        def block(rng: np.random.Generator) -> DecoderLayer:
            layer = DecoderLayer(self.config, rng)
            zero_(layer.self_attn.o_proj.weight)
            zero_(layer.mlp.down_proj.weight)
            return layer

        self._grow_layers(n, where, block)

    def new_cache(self, batch: int) -> list:
        """One empty KV cache per layer, for up to max_seq_len positions."""
        c = self.config
        kv_heads = c.n_kv_heads or c.n_heads
        return [LayerKVCache(batch, c.max_seq_len, kv_heads, c.resolved_head_dim()) for _ in range(c.n_layers)]

    def estimate_memory(self, batch: int, seq: int) -> MemoryEstimate:
        """Activation count per layer: residual, 2 norms, q/k/v/o, rope'd q/k, attention out+lse,
        gate/up/act, MLP out (~12 d-wide + 3 ffn-wide values per token); with `recompute`, one
        d-wide block input per layer and a single block's activations. Plus the fused loss's logits
        buffer (one row block or vocabulary chunk, at most 64 MiB: `F.linear_cross_entropy`)."""
        c = self.config
        tokens = batch * seq
        ffn = c.ffn_hidden or 0  # resolved in __post_init__
        attn_width = max(c.d_model, c.n_heads * c.resolved_head_dim())
        block = 12 * attn_width + 3 * ffn
        per_token = c.n_layers * c.d_model + block if c.recompute else c.n_layers * block
        logits = _core.linear_cross_entropy_logits(tokens, c.vocab_size)
        # Calibrated (tests/models/test_memory_estimate.py): buffers resident between steps (the
        # loss's logits chunk in the scratch pool, per-thread GEMM and attention panels) and
        # allocator slack put the measured peak ~10% above this count at the test sizes.
        acts = int(1.1 * (tokens * per_token + logits)) * BYTES_F32
        return MemoryEstimate(parameter_state_bytes(self.num_parameters()), acts, RUNTIME_BYTES)

    def export_hf(self, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
        """A `LlamaForCausalLM` folder (the parameter names already are HF Llama's), or, when a
        switch of an imported architecture is on, that architecture's folder (`hf/importer.py`)."""
        from ..hf.importer import write_dense

        return write_dense(self, out, extra_config)
