"""MoA — Mixture of Attentions (SPEC §6.2): a stack of MoA blocks (routed paths: local conv,
metric multi-head and multi-query attention, channel mix; routed HyperFFN), BlackHoleRoPE, the
triangle-inequality regulariser, and the MoA LM head. Trained through the same API as the dense
baseline: `model.loss(ids, targets)` returns the total loss (cross-entropy plus the weighted
auxiliary losses) and leaves the step's statistics in `model.last_stats`.
"""

from __future__ import annotations

import pathlib
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..nn import Embedding, Linear, Module, ModuleList
from ..nn.moa import FFN_BRANCHES, MIXER_PATHS, MoABlock, MoAHead
from ..nn.moe import Aux
from .base import BYTES_F32, RUNTIME_BYTES, LanguageModel, MemoryEstimate, Probe, parameter_state_bytes, zero_


@dataclass
class MoAConfig:
    vocab_size: int = 4096
    """Tokens in the vocabulary; ids must lie in [0, vocab_size)."""
    d_model: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of MoA blocks."""
    n_heads: int = 8
    """Query heads of each metric attention path (the MQA path shares one key/value head)."""
    head_dim: Optional[int] = None
    """Size of a head; None means d_model / n_heads. Must be even (RoPE rotates pairs)."""
    max_seq_len: int = 256
    """Longest sequence; also the period L of BlackHoleRoPE's Fourier basis."""
    paths: List[str] = field(default_factory=lambda: list(MIXER_PATHS))
    """Mixer paths, a subset of ("conv", "mha", "mqa", "mix") kept in that order."""
    router_top_k: int = 2
    """Paths each token is routed to (the MoA-150M config uses 3)."""
    router_temperature: float = 2.0
    """τ of every router's softmax(logits / τ)."""
    conv_kernel: int = 5
    """Kernel of the causal depthwise convolutions (LocalConv path and HyperFFN branch)."""
    mix_hidden: Optional[int] = None
    """Hidden width of the ChannelMix path (GELU MLP); None means 2 · d_model [ours]."""
    ffn_hidden: Optional[int] = None
    """Hidden width of the HyperFFN SwiGLU branch; None means 3 · d_model."""
    ffn_rank: int = 32
    """Rank of the HyperFFN gated bottleneck branch and of the LM head's adapter."""
    ffn_top_k: int = 2
    """HyperFFN branches per token, of 3 [ours: the source says only "mixed by a router"]."""
    layer_scale_init: float = 1e-4
    """Initial LayerScale of every residual branch (and of the head's adapter)."""
    alpha_init: float = 1.5
    """Initial α_h, the per-head scale of the metric distance in the scores."""
    rope_theta: float = 10000.0
    """RoPE base of BlackHoleRoPE's unperturbed phases."""
    rope_fourier_terms: int = 16
    """Fourier terms of BlackHoleRoPE's learned phase perturbation."""
    v_gate_min: float = 0.5
    """Lower bound of BlackHoleRoPE's value gate."""
    v_gate_max: float = 2.0
    """Upper bound of BlackHoleRoPE's value gate."""
    ball_pruning: bool = False
    """Per-head balls (origin, radius) in key space: a soft score penalty in training, a hard
    key mask at inference (`model.eval()`)."""
    ball_beta: float = 1.0
    """β of the soft ball penalty -β·relu(‖k - o‖_w - r)."""
    ball_radius_init: float = 2.0
    """Initial ball radius r_h (in the weighted metric, before the square root is removed)."""
    ti_lambda: float = 0.01
    """λ of the triangle-inequality regulariser, averaged over attention modules; 0 turns it off."""
    ti_triples: int = 64
    """Random key triples per batch for the regulariser (distinct positions of the batch)."""
    aux_loss_coef: float = 0.01
    """Weight of each router's Switch load-balance loss (1.0 when perfectly balanced)."""
    z_loss_coef: float = 0.0
    """Weight of each router's z-loss; 0 turns it off."""
    capacity_factor: float = 0.0
    """Routing capacity per path, ceil(factor · N · k / paths); <= 0 means unlimited (paths are
    few and unequal in cost, so by default no token is dropped)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialisation of matrices; output projections use
    init_std / sqrt(2 · n_layers)."""
    seed: int = 0
    """Seed of the initialisation and of the regulariser's triples."""

    model_type: ClassVar[str] = "sos_moa"

    def __post_init__(self) -> None:
        self.paths = list(self.paths)
        self.head_dim = self.head_dim or (self.d_model // self.n_heads if self.n_heads else 0)
        self.mix_hidden = self.mix_hidden or 2 * self.d_model
        self.ffn_hidden = self.ffn_hidden or 3 * self.d_model
        problems = []
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "max_seq_len",
            "head_dim",
            "conv_kernel",
            "ffn_rank",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if (
            not self.paths
            or any(p not in MIXER_PATHS for p in self.paths)
            or self.paths != [p for p in MIXER_PATHS if p in self.paths]
        ):
            problems.append(f"paths {self.paths} must be a non-empty ordered subset of {MIXER_PATHS}")
        if not 1 <= self.router_top_k <= len(self.paths):
            problems.append(f"router_top_k={self.router_top_k} must be in 1..{len(self.paths)}")
        if not 1 <= self.ffn_top_k <= len(FFN_BRANCHES):
            problems.append(f"ffn_top_k={self.ffn_top_k} must be in 1..{len(FFN_BRANCHES)}")
        if self.router_temperature <= 0 or not self.v_gate_min < 1.0 < self.v_gate_max:
            problems.append("router_temperature must be positive and v_gate_min < 1 < v_gate_max")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MoAConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def tiny(cls, **over) -> "MoAConfig":
        """A few-second test model."""
        base = dict(
            vocab_size=256,
            d_model=64,
            n_layers=2,
            n_heads=4,
            max_seq_len=64,
            ffn_rank=8,
            ball_pruning=True,
            ball_radius_init=0.6,
        )
        return cls(**{**base, **over})


class MoABody(Module):
    def __init__(self, cfg: MoAConfig, rng: np.random.Generator):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, rng, cfg.init_std)
        self.layers = ModuleList(MoABlock(cfg, rng) for _ in range(cfg.n_layers))
        self.head = MoAHead(cfg, rng)


class MoALM(LanguageModel):
    """Token ids [B, T] -> logits [B, T, vocab]. Training mode samples regulariser triples and
    uses the soft ball penalty; eval mode uses the hard ball mask and adds no regulariser."""

    # The share of the counted activations resident at the peak (`estimate_memory`), calibrated
    # per family on 2 threads (tests/models/test_memory_estimate.py): at the small test size
    # MoA peaked at 84-93 MiB, DiscoverLM (whose count 0.7 fits) at 162-167 MiB.
    ACTIVATION_CALIBRATION = 0.5

    family = "moa"
    config: MoAConfig
    config_class: ClassVar[type] = MoAConfig
    hf_model_type = MoAConfig.model_type

    def __init__(self, cfg: MoAConfig):
        super().__init__(cfg)
        rng = np.random.default_rng(cfg.seed)
        self.model = MoABody(cfg, rng)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, rng, cfg.init_std)
        self._triple_rng = np.random.default_rng([cfg.seed, 1])

    def _attention_modules(self) -> int:
        return self.config.n_layers * sum(p in ("mha", "mqa") for p in self.config.paths)

    def rng_state(self) -> Optional[dict]:
        """The model's own triple stream (checkpointed). Training draws from (seed, batch ids)
        instead, which needs no state; this stream serves calls without a batch key."""
        return {"ti_triples": self._triple_rng.bit_generator.state}

    def set_rng_state(self, state: dict) -> None:
        try:
            rng = np.random.default_rng()
            rng.bit_generator.state = state["ti_triples"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad model random state {str(state)[:120]}: {e}") from None
        self._triple_rng = rng

    def sample_triples(self, n_tokens: int, key: Optional[np.ndarray] = None) -> np.ndarray:
        """ti_triples rows of 3 distinct flattened positions < n_tokens. With `key` (the batch's
        token ids, as training passes them) the draw is a function of (seed, key) alone, so a
        resumed run draws exactly the triples of the uninterrupted one with no RNG state to
        checkpoint; without it, the model's own stream is used (benchmarks, tests)."""
        if n_tokens < 3:
            return np.zeros((0, 3), np.int64)
        if key is None:
            rng = self._triple_rng
        else:
            digest = zlib.crc32(np.ascontiguousarray(key, dtype=np.int64).tobytes())
            rng = np.random.default_rng([self.config.seed, 1, digest])
        t = rng.integers(0, n_tokens, (self.config.ti_triples, 3))
        while True:  # redraw the (rare) rows that repeat a position
            bad = (t[:, 0] == t[:, 1]) | (t[:, 1] == t[:, 2]) | (t[:, 0] == t[:, 2])
            if not bad.any():
                return t
            t[bad] = rng.integers(0, n_tokens, (int(bad.sum()), 3))

    def routers(self) -> dict:
        """The mixer and HyperFFN router of every block, named as in routing statistics."""
        out = {}
        for i, layer in enumerate(self.model.layers):
            out[f"layers.{i}.mixer"] = layer.mixer.router
            out[f"layers.{i}.ffn"] = layer.ffn.router
        return out

    def probe(self, ids: np.ndarray) -> Probe:
        """Each block's output [B·T, D] and each router's logits [B·T, paths], in inference mode."""
        was = self.training
        self.eval()
        try:
            ids = self.check_ids(ids)
            aux = Aux(training=False, keep_logits=True)
            acts: Dict[str, np.ndarray] = {}
            with no_grad():
                x = self.model.embed_tokens(ids)
                for i, layer in enumerate(self.model.layers):
                    x = layer(x, aux, f"layers.{i}")
                    acts[f"layers.{i}"] = x.numpy().reshape(-1, x.shape[-1])
            return Probe(acts, dict(aux.logits))
        finally:
            self.train(was)

    def grow(self, n: int, where: str = "top") -> None:
        """New MoA blocks with both LayerScale vectors at zero (SPEC §7: identity through
        LayerScale): the logits are unchanged, and the scales get gradient at once."""

        def block(rng: np.random.Generator) -> MoABlock:
            b = MoABlock(self.config, rng)
            zero_(b.mixer_scale)
            zero_(b.ffn_scale)
            return b

        self._grow_layers(n, where, block)

    def forward_with_aux(self, ids: np.ndarray, triples: Optional[np.ndarray] = None) -> Tuple[Tensor, Aux]:
        """Logits and the pass's auxiliary losses/statistics. `triples` fixes the regulariser's
        key triples (sampled when None and training)."""
        h, aux = self.hidden_with_aux(ids, triples)
        return F.linear(h, self.head()), aux  # [B, T, V]

    def hidden_with_aux(self, ids: np.ndarray, triples: Optional[np.ndarray] = None) -> Tuple[Tensor, Aux]:
        """The head's output [B, T, D] (what the output projection reads) and the auxiliary
        losses/statistics (see `forward_with_aux`)."""
        cfg = self.config
        ids = self.check_ids(ids)
        if self.training and cfg.ti_lambda and triples is None:
            triples = self.sample_triples(ids.size, key=ids)
        aux = Aux(
            triples=triples,
            training=self.training,
            ti_lambda=cfg.ti_lambda,
            ti_weight=1.0 / max(self._attention_modules(), 1),
        )
        x = self.model.embed_tokens(ids)  # [B, T, D]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, aux, f"layers.{i}")
        return self.model.head(x), aux

    def forward(self, ids: np.ndarray, cache: Optional[list] = None) -> Tensor:
        """ids [B, T] -> logits [B, T, V]; the family has no KV cache (`new_cache` is None)."""
        if cache is not None:
            raise ValueError(f"the {self.family!r} family has no KV cache; call it on the whole context")
        logits, aux = self.forward_with_aux(ids)
        self.last_stats = self.stats(aux, np.asarray(ids).size)
        return logits

    def loss(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        triples: Optional[np.ndarray] = None,
        *,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """Mean next-token cross-entropy plus the weighted auxiliary losses (load balance, z-loss,
        triangle inequality); the parts are in `last_stats`. Document masks are refused."""
        self.check_doc_masks(np.asarray(ids), positions, segments)
        h, aux = self.hidden_with_aux(ids, triples)
        ce = F.linear_cross_entropy(h, self.head(), targets)
        extra = aux.total()
        self.last_stats = self.stats(aux, np.asarray(ids).size)
        self.last_stats["ce"] = ce.item()
        return ce if extra is None else F.add(ce, extra)

    def next_token_loss(
        self, ids: np.ndarray, targets: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]
    ) -> Tensor:
        """Mean next-token cross-entropy with the output projection fused into it over vocabulary
        chunks (`F.linear_cross_entropy`: no [B, T, V] logits); what `eval_loss` reports."""
        self.check_doc_masks(np.asarray(ids), positions, segments)
        h, aux = self.hidden_with_aux(ids)
        self.last_stats = self.stats(aux, np.asarray(ids).size)
        return F.linear_cross_entropy(h, self.head(), targets)

    def step_stats(self) -> dict:
        """Cross-entropy alone, the active-parameter fraction (SPEC §2 item 2), the TI violation
        rate and the tokens dropped by capacity, from the last `loss` call."""
        keys = ("ce", "active_param_fraction", "ti_violation_rate", "dropped")
        return {k: self.last_stats[k] for k in keys if k in self.last_stats}

    def stats(self, aux: Aux, n_tokens: int) -> dict:
        """Active-parameter fraction (per token and layer: parameters read for that token's
        output, divided by all), routing shares and drops, auxiliary losses, TI violation rate."""
        total = self.num_parameters()
        routed_all = sum(sum(r.path_params) for r in aux.routes)
        routed_read = sum(sum(c * p for c, p in zip(r.counts, r.path_params)) for r in aux.routes)
        embed = self.config.vocab_size * self.config.d_model
        # Untied, a token reads one embedding row; tied, the head reads the whole table anyway.
        always = total - routed_all - (0 if self.config.tie_embeddings else embed - self.config.d_model)
        return {
            "active_param_fraction": (n_tokens * always + routed_read) / (n_tokens * total),
            "routed_active_fraction": routed_read / max(n_tokens * routed_all, 1),
            "dropped": sum(r.dropped for r in aux.routes),
            "path_share": {r.name: [round(float(f), 4) for f in r.fractions] for r in aux.routes},
            "aux": dict(aux.named),
            "ti_violation_rate": aux.ti_violations / aux.ti_checks if aux.ti_checks else None,
        }

    def estimate_memory(self, batch: int, seq: int) -> MemoryEstimate:
        """Per token and layer the tape keeps: the residual, two norms, router logits and
        probabilities, and each routed path's activations on its share of the tokens (top-k of
        the paths): metric attention keeps k, v, rope'd and gated copies and its output for every
        token, q for its rows; ChannelMix and the FFN branches keep gathered rows, hidden
        activations and outputs; dispatch/combine keep the stacked outputs. Plus the head
        adapter and the fused loss's logits buffer (a row block or vocabulary chunk, at most 64 MiB:
        `F.linear_cross_entropy`)."""
        c = self.config
        tokens = batch * seq
        hd, mix, ffn_hidden = c.head_dim or 0, c.mix_hidden or 0, c.ffn_hidden or 0  # resolved in __post_init__
        attn = 10 * c.n_heads * hd + 2 * c.d_model  # per token, per attention path
        path_cost = {"conv": 3 * c.d_model, "mha": attn, "mqa": attn, "mix": 3 * mix + 2 * c.d_model}
        share = c.router_top_k / len(c.paths)
        mixer = sum(path_cost[p] for p in c.paths if p in ("mha", "mqa")) + share * sum(
            path_cost[p] for p in c.paths if p not in ("mha", "mqa")
        )
        ffn_share = c.ffn_top_k / len(FFN_BRANCHES)
        ffn = ffn_share * (4 * ffn_hidden + 3 * c.d_model + 3 * c.d_model + 4 * c.ffn_rank + 3 * c.d_model)
        per_layer = 8 * c.d_model + mixer + ffn + 2 * c.d_model * (c.router_top_k + c.ffn_top_k)
        head = 6 * c.d_model + 4 * c.ffn_rank
        logits = _core.linear_cross_entropy_logits(tokens, c.vocab_size)
        # Calibrated (tests/models/test_memory_estimate.py): the tape frees some of these before
        # the peak and the fused MoE op keeps fewer rows, so the counted values overstate the
        # peak. Measured on one thread (deterministic) the peak is 0.72-0.78 of the count; at 2
        # threads glibc's per-thread arenas add 10-40 MiB of slack that varies run to run, and
        # the tensor pool's headroom (`MemoryEstimate.pool`) is counted apart
        # (`ACTIVATION_CALIBRATION`).
        acts = (int(self.ACTIVATION_CALIBRATION * tokens * (c.n_layers * per_layer + head)) + logits) * BYTES_F32
        return MemoryEstimate(parameter_state_bytes(self.num_parameters()), acts, RUNTIME_BYTES)

    def export_hf(self, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
        """model.safetensors, config.json and modeling_sos_moa.py: the folder loads with
        `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`."""
        from ..hf.remote_code import write_remote_code

        return write_remote_code(self, out, extra_config)
