"""DiscoverLM — metric-space causal LM (SPEC §6.3): the MoA block stack with metric attention in
every attention path, the triangle-inequality regulariser always on, tied embeddings. The
`DiscoverLMConfig` defaults are the stated Discovery config; `tiny()` is the test preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .moa import MoAConfig, MoALM


@dataclass
class DiscoverLMConfig(MoAConfig):
    """MoAConfig with the Discovery defaults: d=512, 4 layers, 16 heads, ffn 1536 (= 3·d), top-2
    routing at τ 2.0, bottleneck rank 32, TI λ 0.01 over 64 triples, tied embeddings, context
    1024. The vocabulary is not stated; 32000 is a placeholder to set from your tokenizer."""

    vocab_size: int = 32000
    """Tokens in the vocabulary (not stated by the source; set it to the tokenizer's)."""
    d_model: int = 512
    """Width of the residual stream (Discovery: 512)."""
    n_layers: int = 4
    """MoA blocks (Discovery: 4)."""
    n_heads: int = 16
    """Query heads of each metric attention path (Discovery: 16, head size 32)."""
    max_seq_len: int = 1024
    """Context length (Discovery: 1024)."""
    ffn_hidden: int = 1536
    """HyperFFN SwiGLU hidden width (Discovery: 1536)."""
    ffn_rank: int = 32
    """Gated bottleneck rank (Discovery: 32)."""
    ti_lambda: float = 0.01
    """Triangle-inequality λ (Discovery: 0.01); must stay positive for this family."""
    ti_triples: int = 64
    """Triples per batch (Discovery: 64)."""
    tie_embeddings: bool = True
    """Tied input/output embeddings (Discovery: tied)."""

    model_type: ClassVar[str] = "sos_discoverlm"

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.ti_lambda <= 0 or self.ti_triples <= 0:
            problems.append("DiscoverLM keeps the triangle-inequality regulariser on (ti_lambda, ti_triples > 0)")
        if not {"mha", "mqa"} & set(self.paths):
            problems.append("DiscoverLM needs at least one metric attention path")
        if problems:
            raise ValueError("DiscoverLMConfig: " + "; ".join(problems))

    @classmethod
    def tiny(cls, **over) -> "DiscoverLMConfig":
        """A few-second test model with the Discovery structure scaled down."""
        base = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64, ffn_hidden=192, ffn_rank=8)
        return cls(**{**base, **over})


class DiscoverLM(MoALM):
    """Token ids [B, T] -> logits [B, T, vocab]."""

    ACTIVATION_CALIBRATION = 0.7  # see MoALM: its larger FFN buffers fill more of the pool headroom

    family = "discoverlm"
    config_class = DiscoverLMConfig
    hf_model_type = DiscoverLMConfig.model_type
