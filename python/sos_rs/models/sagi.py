"""SAGI — swarm intelligence (SPEC §6.4): a Llama-style decoder (RMSNorm, RoPE attention, an
optional dense SwiGLU MLP) whose every layer ends with a swarm of small SwiGLU agents
(nn/swarm.py). Tokens route to agents by attention over agent keys derived from EMA agent states,
under the config's compute budget; agents' messages condition the residual stream.
`model.loss(ids, targets)` returns cross-entropy plus the weighted load-balance losses and, in
training mode, moves the agent-state EMAs (buffers saved in checkpoints and exports).
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, List, Optional, Tuple

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from ..nn import CausalSelfAttention, Embedding, LayerKVCache, Linear, Module, ModuleList, RMSNorm, SwiGLUMLP
from ..nn.swarm import SwarmContext, SwarmLayer, budget_caps
from .base import BYTES_F32, RUNTIME_BYTES, LanguageModel, MemoryEstimate, parameter_state_bytes


@dataclass
class SAGIConfig:
    """Defaults are the author's published SAGI config where it names a value (SPEC §6.4);
    fields marked [ours] fill what the source leaves open."""

    vocab_size: int = 4096
    """Tokens in the vocabulary; ids must lie in [0, vocab_size)."""
    d_model: int = 512
    """Width of the residual stream."""
    n_layers: int = 6
    """Decoder layers; each has attention, the dense MLP (if any) and a swarm layer."""
    n_heads: int = 8
    """Attention heads (plain multi-head); head size d_model / n_heads must be even (RoPE)."""
    ffn_hidden: int = 2048
    """Hidden width of each layer's dense SwiGLU MLP; 0 leaves the swarm as the only MLP."""
    max_seq_len: int = 2048
    """Longest sequence (the author's context 2048)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    max_agents: int = 20
    """Agents per swarm layer (the author's max_agents)."""
    agent_hidden: int = 128
    """Hidden width of each agent's SwiGLU expert [ours: the source gives none]."""
    route_top_k: int = 5
    """Agents a token may route to (the author's soft top-5 of 20), before the budget cap."""
    route_temp: float = 1.0
    """Temperature of the routing softmax over agents (the author's route_temp)."""
    route_min_gate: float = 0.05
    """A routed agent whose renormalised gate is below this is skipped, so a token may use fewer
    agents than the cap; the best agent is always used. Must be <= 1 / route_top_k [ours]."""
    dim_s: int = 64
    """Size of an agent's state vector and of a token's observation (the author's dim_s)."""
    dim_msg: int = 16
    """Size of an agent's message (the author's dim_msg)."""
    attn_dim: int = 64
    """Size of routing queries and agent keys (the author's attn_dim)."""
    budget_compute: float = 60.0
    """Compute budget of a token in each swarm layer (the author's B_compute); see
    compute_per_agent and compute_per_thought for the cost model."""
    k_thought_max: int = 5
    """Most thought rounds (routing refinements from the agents' messages) per layer (the author's
    K_thought_max); the budget may allow fewer."""
    compute_per_agent: float = 2.0
    """Budget a token spends per active agent (the author's compute_per_agent)."""
    compute_per_thought: float = 2.5
    """Budget a token spends per thought round (the author's compute_per_thought)."""
    state_ema: float = 0.01
    """Rate η of the agent-state EMA, s <- (1 - η)·s + η·(mean observation processed), applied
    after every training forward pass [ours]."""
    state_init_std: float = 0.5
    """Std of the normal initial agent states (distinct keys from the start) [ours]."""
    msg_scale_init: float = 0.01
    """Initial LayerScale of the message projection added to the residual (small) [ours]."""
    aux_loss_coef: float = 0.01
    """Weight of each swarm layer's Switch load-balance loss over agents; 0 turns it off."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Std of the normal initialisation of matrices; output projections (attention, MLP, agents'
    down projections) use init_std / sqrt(2 · n_layers)."""
    seed: int = 0
    """Seed of the initialisation (weights and initial agent states)."""

    model_type: ClassVar[str] = "sos_sagi"

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "max_seq_len",
            "max_agents",
            "agent_hidden",
            "route_top_k",
            "dim_s",
            "dim_msg",
            "attn_dim",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.n_heads > 0 and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            problems.append(f"d_model={self.d_model} / n_heads={self.n_heads} must be an even integer (RoPE)")
        if self.ffn_hidden < 0 or self.k_thought_max < 0:
            problems.append("ffn_hidden and k_thought_max must be >= 0")
        if self.route_top_k > self.max_agents:
            problems.append(f"route_top_k={self.route_top_k} exceeds max_agents={self.max_agents}")
        if self.route_top_k > 0 and not 0.0 <= self.route_min_gate <= 1.0 / self.route_top_k:
            problems.append(f"route_min_gate={self.route_min_gate} must be in [0, 1/route_top_k]")
        if self.route_temp <= 0 or self.compute_per_agent <= 0 or self.compute_per_thought < 0:
            problems.append("route_temp and compute_per_agent must be positive, compute_per_thought >= 0")
        elif self.budget_compute < self.compute_per_agent:
            problems.append(
                f"budget_compute={self.budget_compute} cannot pay for one agent (compute_per_agent="
                f"{self.compute_per_agent})"
            )
        if not 0.0 <= self.state_ema <= 1.0:
            problems.append(f"state_ema={self.state_ema} must be in [0, 1]")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))

    def caps(self) -> Tuple[int, int]:
        """(agents per token, thought rounds per layer) the compute budget allows."""
        return budget_caps(
            self.budget_compute,
            self.compute_per_agent,
            self.compute_per_thought,
            self.route_top_k,
            self.max_agents,
            self.k_thought_max,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAGIConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def tiny(cls, **over) -> "SAGIConfig":
        """A few-second test model whose budget binds: 4 agents cost 8 of the 14, the remaining 6
        buy 2 of the 3 allowed thought rounds."""
        base = dict(
            vocab_size=256,
            d_model=64,
            n_layers=2,
            n_heads=4,
            ffn_hidden=64,
            max_seq_len=64,
            max_agents=8,
            agent_hidden=32,
            route_top_k=4,
            dim_s=16,
            dim_msg=8,
            attn_dim=16,
            budget_compute=14.0,
            k_thought_max=3,
            route_min_gate=0.15,
            state_ema=0.1,
        )
        return cls(**{**base, **over})


class SAGILayer(Module):
    """x + attn(norm x), + mlp(norm x) when ffn_hidden > 0, + swarm(norm x)."""

    def __init__(self, cfg: SAGIConfig, rng: np.random.Generator):
        super().__init__()
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = CausalSelfAttention(
            cfg.d_model, cfg.n_heads, cfg.n_heads, cfg.rope_theta, rng, cfg.init_std, out_std
        )
        if cfg.ffn_hidden:
            self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp = SwiGLUMLP(cfg.d_model, cfg.ffn_hidden, rng, cfg.init_std, out_std)
        self.swarm_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.swarm = SwarmLayer(cfg, rng)
        self.has_mlp = bool(cfg.ffn_hidden)

    def __call__(self, x: Tensor, ctx: SwarmContext, cache: Optional[LayerKVCache] = None) -> Tensor:
        x = F.add(x, self.self_attn(self.input_layernorm(x), cache))
        if self.has_mlp:
            x = F.add(x, self.mlp(self.post_attention_layernorm(x)))
        return F.add(x, self.swarm(self.swarm_layernorm(x), ctx))


class SAGIBody(Module):
    def __init__(self, cfg: SAGIConfig, rng: np.random.Generator):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model, rng, cfg.init_std)
        self.layers = ModuleList(SAGILayer(cfg, rng) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class SAGILM(LanguageModel):
    """Token ids [B, T] -> logits [B, T, vocab]. Training-mode `loss` moves the agent states;
    `forward` never does (inference, sampling with a KV cache)."""

    family = "sagi"
    config: SAGIConfig
    config_class: ClassVar[type] = SAGIConfig
    hf_model_type = SAGIConfig.model_type

    def __init__(self, cfg: SAGIConfig):
        super().__init__(cfg)
        rng = np.random.default_rng(cfg.seed)
        self.model = SAGIBody(cfg, rng)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, rng, cfg.init_std)

    def forward_with_aux(
        self, ids: np.ndarray, cache: Optional[list] = None, update_state: bool = False
    ) -> Tuple[Tensor, SwarmContext]:
        """Logits [B, T, V] and the pass's swarm context (losses, per-layer records)."""
        h, ctx = self.hidden_with_aux(ids, cache, update_state)
        return F.linear(h, self.head()), ctx

    def hidden_with_aux(
        self, ids: np.ndarray, cache: Optional[list] = None, update_state: bool = False
    ) -> Tuple[Tensor, SwarmContext]:
        """The final normed hidden states [B, T, D] the output projection reads, and the swarm
        context (see `forward_with_aux`)."""
        ids = self.check_ids(ids, 0 if cache is None else cache[0].length)
        ctx = SwarmContext(update_state=update_state, aux_loss_coef=self.config.aux_loss_coef if self.training else 0)
        x = self.model.embed_tokens(ids)  # [B, T, D]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, ctx, None if cache is None else cache[i])
        return self.model.norm(x), ctx

    def forward(self, ids: np.ndarray, cache: Optional[list] = None) -> Tensor:
        """ids [B, T] -> logits [B, T, V]; the agent states are left unchanged."""
        logits, ctx = self.forward_with_aux(ids, cache)
        self.last_stats = self.stats(ctx)
        return logits

    def loss(
        self,
        ids: np.ndarray,
        targets: np.ndarray,
        *,
        positions: Optional[np.ndarray] = None,
        segments: Optional[np.ndarray] = None,
    ) -> Tensor:
        """Cross-entropy plus the weighted load-balance losses; in training mode the agent-state
        EMAs move (after the pass, so this step's keys are the previous states). Document masks
        are refused."""
        self.check_doc_masks(np.asarray(ids), positions, segments)
        h, ctx = self.hidden_with_aux(ids, update_state=self.training)
        ce = F.linear_cross_entropy(h, self.head(), targets)
        self.last_stats = self.stats(ctx)
        self.last_stats["ce"] = ce.item()
        out = ce
        for extra in ctx.losses:
            out = F.add(out, extra)
        return out

    def next_token_loss(
        self, ids: np.ndarray, targets: np.ndarray, positions: Optional[np.ndarray], segments: Optional[np.ndarray]
    ) -> Tensor:
        """Mean next-token cross-entropy with the output projection fused into it
        (`F.linear_cross_entropy`); the agent states are left unchanged. What `eval_loss` reports."""
        self.check_doc_masks(np.asarray(ids), positions, segments)
        h, ctx = self.hidden_with_aux(ids)
        self.last_stats = self.stats(ctx)
        return F.linear_cross_entropy(h, self.head(), targets)

    def new_cache(self, batch: int) -> list:
        """One empty KV cache per layer: the swarm works per token, so only attention caches."""
        c = self.config
        return [LayerKVCache(batch, c.max_seq_len, c.n_heads, c.d_model // c.n_heads) for _ in range(c.n_layers)]

    def step_stats(self) -> dict:
        """Cross-entropy, active-parameter fraction, agents per token, thought rounds per token
        and layer, realised compute per token and layer, routing entropy, per-agent load."""
        keys = (
            "ce",
            "active_param_fraction",
            "agents_per_token",
            "thought_rounds",
            "compute_per_token",
            "routing_entropy",
            "agent_load",
            "load_balance",
        )
        return {k: self.last_stats[k] for k in keys if k in self.last_stats}

    def stats(self, ctx: SwarmContext) -> dict:
        """Numbers of one pass. Active-parameter fraction as the MoA family measures it: per token
        and layer, the parameters read for that token's output (everything but the agents, plus
        the agents it used) over all parameters."""
        c = self.config
        recs = ctx.records
        if not recs:
            return {}
        n = recs[0].n_tokens
        total = self.num_parameters()
        routed_all = sum(c.max_agents * r.agent_params for r in recs)
        routed_read = sum(r.agents * r.agent_params for r in recs)
        embed = c.vocab_size * c.d_model
        always = total - routed_all - (0 if c.tie_embeddings else embed - c.d_model)
        agents = sum(r.agents for r in recs) / (n * len(recs))
        rounds = sum(r.thought_rounds for r in recs) / (n * len(recs))
        load = np.sum([r.counts for r in recs], 0) / max(sum(r.agents for r in recs), 1)
        return {
            "active_param_fraction": (n * always + routed_read) / (n * total),
            "agents_per_token": agents,
            "thought_rounds": rounds,
            "compute_per_token": c.compute_per_agent * agents + c.compute_per_thought * rounds,
            "routing_entropy": float(np.mean([r.entropy for r in recs])),
            "agent_load": [round(float(f), 4) for f in load],
            "load_balance": float(sum(t.item() for t in ctx.losses)) if ctx.losses else None,
        }

    def estimate_memory(self, batch: int, seq: int) -> MemoryEstimate:
        """Per token and layer: the dense decoder's activations (as the dense family: ~12 d-wide
        and 3 ffn-wide values), the swarm's norm, observation, every routing round's query,
        logits, probabilities and message, for each of its k agents the two hidden-wide
        pre-activations the fused expert op keeps (`F.moe_swiglu`), and the agents' d-wide sum;
        plus the fused loss's logits buffer (a row block or vocabulary chunk, at most 64 MiB)."""
        c = self.config
        k, rounds = c.caps()
        swarm = 3 * c.d_model + c.dim_s + (rounds + 1) * (2 * c.attn_dim + 3 * c.max_agents + 2 * c.dim_msg)
        swarm += k * 2 * c.agent_hidden + c.d_model
        per_layer = 12 * c.d_model + 3 * c.ffn_hidden + swarm
        # Calibrated: routing temporaries (per-round gathers and their gradients) add about 15% to
        # the count at the peak (tests/models/test_memory_estimate.py).
        logits = _core.linear_cross_entropy_logits(batch * seq, c.vocab_size)
        acts = (int(1.15 * batch * seq * c.n_layers * per_layer) + logits) * BYTES_F32
        return MemoryEstimate(parameter_state_bytes(self.num_parameters()), acts, RUNTIME_BYTES)

    def export_hf(self, out: pathlib.Path, extra_config: Optional[dict] = None) -> List[pathlib.Path]:
        """model.safetensors (weights and agent states), config.json and modeling_sos_sagi.py:
        loads with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`."""
        from ..hf.remote_code import write_remote_code

        return write_remote_code(self, out, extra_config)
