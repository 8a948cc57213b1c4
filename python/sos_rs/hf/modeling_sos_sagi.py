"""PyTorch reference of sos_rs's SAGI family: loads an sos_rs export (model.safetensors, agent
states included, + config.json) with `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`, and doubles as the test oracle of the sos_rs implementation.

Self-contained (torch, optionally transformers; never sos_rs). Same function as
sos_rs/nn/swarm.py: routing by attention over agent keys from the state buffer, thought rounds
that stop per token once its top-k agent set is stable, kept agents (gate >= route_min_gate, the
best always) run on their tokens, messages through a LayerScaled projection, and the agent-state
EMA after a training forward pass. Parameter and buffer names equal sos_rs's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # transformers is optional: without it the classes are plain torch modules.
    import transformers
    import transformers.modeling_outputs

    PretrainedConfig: Any = transformers.PretrainedConfig
    PreTrainedModel: Any = transformers.PreTrainedModel
    CausalLMOutput: Any = transformers.modeling_outputs.CausalLMOutput
except ImportError:  # pragma: no cover - exercised where transformers is absent
    PretrainedConfig = object
    PreTrainedModel = nn.Module
    CausalLMOutput = None

DEFAULTS = dict(
    vocab_size=4096,
    d_model=512,
    n_layers=6,
    n_heads=8,
    ffn_hidden=2048,
    max_seq_len=2048,
    rope_theta=10000.0,
    max_agents=20,
    agent_hidden=128,
    route_top_k=5,
    route_temp=1.0,
    route_min_gate=0.05,
    dim_s=64,
    dim_msg=16,
    attn_dim=64,
    budget_compute=60.0,
    k_thought_max=5,
    compute_per_agent=2.0,
    compute_per_thought=2.5,
    state_ema=0.01,
    state_init_std=0.5,
    msg_scale_init=0.01,
    aux_loss_coef=0.01,
    tie_embeddings=True,
    norm_eps=1e-5,
    init_std=0.02,
    seed=0,
)


def budget_caps(c):
    """(agents per token, thought rounds per layer): agents first, rounds from what is left."""
    agents = min(c.route_top_k, c.max_agents, int(math.floor(c.budget_compute / c.compute_per_agent + 1e-9)))
    if c.compute_per_thought <= 0:
        return agents, c.k_thought_max
    rounds = int(math.floor((c.budget_compute - c.compute_per_agent * agents) / c.compute_per_thought + 1e-9))
    return agents, max(0, min(c.k_thought_max, rounds))


class SosSAGIConfig(PretrainedConfig):
    model_type = "sos_sagi"

    def __init__(self, **kwargs):
        ours = {key: kwargs.pop(key, value) for key, value in DEFAULTS.items()}
        kwargs.setdefault("tie_word_embeddings", ours["tie_embeddings"])
        if PretrainedConfig is not object:
            super().__init__(**kwargs)
        for key, value in ours.items():
            object.__setattr__(self, key, value)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope(x, theta, offset=0):
    """x [B, T, H, hd], HF Llama rotate-half layout, positions offset..offset+T-1."""
    b, t, h, hd = x.shape
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=x.device).float() / hd)
    ang = torch.arange(offset, offset + t, dtype=torch.float32, device=x.device)[:, None] * inv[None, :]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c.d_model
        self.h, self.theta = c.n_heads, c.rope_theta
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.h
        q = rope(self.q_proj(x).view(b, t, self.h, hd), self.theta).transpose(1, 2)
        k = rope(self.k_proj(x).view(b, t, self.h, hd), self.theta).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.h, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, d))


class Swarm(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, a, h = c.d_model, c.max_agents, c.agent_hidden
        self.c = c
        self.agent_cap, self.thought_cap = budget_caps(c)
        self.obs_proj = nn.Linear(d, c.dim_s, bias=False)
        self.query_proj = nn.Linear(c.dim_s, c.attn_dim, bias=False)
        self.key_proj = nn.Linear(c.dim_s, c.attn_dim, bias=False)
        self.msg_proj = nn.Linear(c.dim_s, c.dim_msg, bias=False)
        self.thought_proj = nn.Linear(c.dim_msg, c.attn_dim, bias=False)
        self.message_out = nn.Linear(c.dim_msg, d, bias=False)
        self.message_scale = nn.Parameter(torch.full((d,), float(c.msg_scale_init)))
        self.w_gate = nn.Parameter(torch.zeros(a, h, d))
        self.w_up = nn.Parameter(torch.zeros(a, h, d))
        self.w_down = nn.Parameter(torch.zeros(a, d, h))
        self.register_buffer("agent_state", torch.zeros(a, c.dim_s), persistent=True)

    def route(self, q, keys, msgs):
        c, k = self.c, self.agent_cap
        probs = torch.softmax(q @ keys.T / math.sqrt(c.attn_dim) / c.route_temp, -1)  # [N, A]
        topv, topi = probs.topk(k, -1)
        gates = topv / topv.sum(-1, keepdim=True) if k > 1 else topv
        return probs, gates, topi, (gates[..., None] * msgs[topi]).sum(1)

    def forward(self, h, state):
        c = self.c
        b, t, d = h.shape
        hf = h.reshape(b * t, d)
        s = self.agent_state.clone()
        keys, msgs = self.key_proj(s), self.msg_proj(s)
        obs = self.obs_proj(hf)
        q = self.query_proj(obs)
        probs, gates, idx, m = self.route(q, keys, msgs)
        active = torch.ones(b * t, dtype=torch.bool)
        prev = idx.sort(-1).values
        rounds = 0
        for _ in range(self.thought_cap):
            if not active.any():
                break
            q = q + active[:, None].to(q.dtype) * self.thought_proj(m)
            rounds += int(active.sum())
            probs, gates, idx, m = self.route(q, keys, msgs)
            cur = idx.sort(-1).values
            active = active & ~(cur == prev).all(-1)
            prev = cur
        keep = gates.detach() >= c.route_min_gate
        keep[:, 0] = True
        tok, j = keep.nonzero(as_tuple=True)
        agent, g = idx[tok, j], gates[tok, j]
        y = torch.zeros_like(hf)
        for a in range(c.max_agents):
            rows = (agent == a).nonzero(as_tuple=True)[0]
            if len(rows) == 0:
                continue
            x = hf[tok[rows]]
            out = (F.silu(x @ self.w_gate[a].T) * (x @ self.w_up[a].T)) @ self.w_down[a].T
            y = y.index_add(0, tok[rows], g[rows, None] * out)
        y = y + self.message_scale * self.message_out(m)
        if state["training"] and c.aux_loss_coef:
            e = c.max_agents
            f = torch.bincount(idx.reshape(-1), minlength=e).to(h.dtype) / idx.numel()
            state["losses"].append(c.aux_loss_coef * e * (f * probs.mean(0)).sum())
        state["stats"].append({"agents": len(tok), "rounds": rounds, "tokens": b * t})
        if state["update_state"]:
            with torch.no_grad():
                acc = torch.zeros(c.max_agents, c.dim_s, dtype=torch.float64)
                acc.index_add_(0, agent, obs.detach()[tok].double() * g.detach()[:, None].double())
                w = torch.zeros(c.max_agents, dtype=torch.float64).index_add_(0, agent, g.detach().double())
                new = self.agent_state.double()
                used = w > 0
                new[used] = (1 - c.state_ema) * new[used] + c.state_ema * acc[used] / w[used, None]
                self.agent_state.copy_(new.float())
        return y.view(b, t, d)


class SAGILayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm, self.self_attn = RMSNorm(c.d_model, c.norm_eps), Attention(c)
        if c.ffn_hidden:
            self.post_attention_layernorm = RMSNorm(c.d_model, c.norm_eps)
            self.mlp = SwiGLU(c.d_model, c.ffn_hidden)
        self.swarm_layernorm, self.swarm = RMSNorm(c.d_model, c.norm_eps), Swarm(c)
        self.has_mlp = bool(c.ffn_hidden)

    def forward(self, x, state):
        x = x + self.self_attn(self.input_layernorm(x))
        if self.has_mlp:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x + self.swarm(self.swarm_layernorm(x), state)


class SosSAGIForCausalLM(PreTrainedModel):
    config_class = SosSAGIConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config) if PreTrainedModel is not nn.Module else super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.model.layers = nn.ModuleList(SAGILayer(config) for _ in range(config.n_layers))
        self.model.norm = RMSNorm(config.d_model, config.norm_eps)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if PreTrainedModel is not nn.Module:
            self.post_init()

    def _init_weights(self, module):  # weights and agent states come from the sos_rs export
        pass

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, labels=None, update_state=None, return_aux=False, **kwargs):
        """Logits [B, T, V]; with labels, the loss is next-token CE on (input_ids, labels) as
        given (already shifted, as sos_rs's `loss(ids, targets)`) plus the load-balance losses.
        The agent states move after a training-mode pass with labels (as sos_rs's `loss`), or
        as `update_state` says."""
        c = self.config
        if update_state is None:
            update_state = self.training and labels is not None
        state = {"training": self.training, "losses": [], "stats": [], "update_state": update_state}
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, state)
        x = self.model.norm(x)
        logits = x @ (self.model.embed_tokens.weight if c.tie_embeddings else self.lm_head.weight).T
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), labels.reshape(-1)) + sum(state["losses"])
        if return_aux:
            return logits, loss, state
        return CausalLMOutput(loss=loss, logits=logits) if CausalLMOutput is not None else (loss, logits)
