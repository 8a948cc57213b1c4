"""The SAGI swarm layer (SPEC §6.4, dynamics ours): a bank of small SwiGLU agents that tokens
route to by attention between the token's query and keys derived from each agent's state vector,
under a compute budget that caps the agents per token and the "thought" rounds of message
refinement. Agent states are a deterministic EMA buffer of the observations each agent served;
agent messages condition the decoder through a LayerScaled projection added to the residual.

What it deliberately does not do: the author's trust dynamics, episodic memory, curiosity engine
and value monitor have no definition in the source and are not implemented; rollback on anomaly
is a trainer feature (train/rollback.py) shared by every family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from .layers import Linear
from .module import Buffer, Module, Parameter


@dataclass
class SwarmRecord:
    """What one swarm layer did in one forward pass (numbers over the N tokens of the batch)."""

    n_tokens: int
    agents: int  # (token, agent) assignments run through an agent expert
    thought_rounds: int  # message-refinement updates summed over tokens
    counts: List[int]  # tokens each agent processed
    entropy: float  # mean routing entropy over agents, nats
    agent_params: int  # parameters of one agent expert


@dataclass
class SwarmContext:
    """Per-pass settings and what the swarm layers report: `update_state` lets training passes
    move the agent-state EMAs; `losses` are the weighted load-balance losses."""

    update_state: bool = False
    aux_loss_coef: float = 0.0
    losses: List[Tensor] = field(default_factory=list)
    records: List[SwarmRecord] = field(default_factory=list)


def budget_caps(
    budget: float, per_agent: float, per_thought: float, top_k: int, n_agents: int, thought_max: int
) -> Tuple[int, int]:
    """The MetaController's cost model: a token spends `per_agent` per active agent and
    `per_thought` per thought round in each swarm layer, within `budget`. Agents come first (up to
    top_k), thought rounds take what is left (up to thought_max). Returns (agent cap, round cap).
    E.g. budget 60, 2.0 per agent, 2.5 per round, top-5, at most 5 rounds: 5 agents cost 10, the
    remaining 50 would buy 20 rounds, capped at 5 -> (5, 5)."""
    agents = min(top_k, n_agents, int(math.floor(budget / per_agent + 1e-9)))
    rounds = int(math.floor((budget - per_agent * agents) / per_thought + 1e-9)) if per_thought > 0 else thought_max
    return agents, max(0, min(thought_max, rounds))


class SwarmLayer(Module):
    """h [B, T, D] (normalised residual) -> agent outputs plus message conditioning [B, T, D].

    Per token: observation o = W_obs h [dim_s]; query q = W_q o [attn_dim]. Per agent: key
    W_k s_a and message W_m s_a [dim_msg] from its state s_a (a buffer). Routing: softmax of
    q·K / sqrt(attn_dim) / route_temp over agents, soft top-k renormalised gates, message
    m = Σ gates · messages. A thought round refines the query, q += W_t m, and routes again; a
    token stops refining once its top-k agent set no longer changes. The final gates send the
    token to its agents (one GEMM per agent over its tokens, through the expert dispatch); an
    agent whose gate is below route_min_gate is skipped (the best one never is). Output:
    Σ_kept gate · agent(h) + message_scale ⊙ W_out m."""

    def __init__(self, cfg, rng: np.random.Generator):
        super().__init__()
        d, a, h = cfg.d_model, cfg.max_agents, cfg.agent_hidden
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.cfg = cfg
        self.agent_cap, self.thought_cap = cfg.caps()
        self.obs_proj = Linear(d, cfg.dim_s, rng, std)
        self.query_proj = Linear(cfg.dim_s, cfg.attn_dim, rng, std)
        self.key_proj = Linear(cfg.dim_s, cfg.attn_dim, rng, std)
        self.msg_proj = Linear(cfg.dim_s, cfg.dim_msg, rng, std)
        self.thought_proj = Linear(cfg.dim_msg, cfg.attn_dim, rng, std)
        self.message_out = Linear(cfg.dim_msg, d, rng, std)
        self.message_scale = Parameter(np.full(d, cfg.msg_scale_init), no_decay=True)
        self.w_gate = Parameter(rng.normal(0.0, std, (a, h, d)))
        self.w_up = Parameter(rng.normal(0.0, std, (a, h, d)))
        self.w_down = Parameter(rng.normal(0.0, out_std, (a, d, h)))
        self.agent_state = Buffer(rng.normal(0.0, cfg.state_init_std, (a, cfg.dim_s)))
        self.agent_params = 3 * h * d

    def _route(self, q: Tensor, keys: Tensor, msgs: Tensor):
        """q [N, attn] -> (probs [N, A], gates [N, k], idx [N, k], message [N, dim_msg])"""
        c = self.cfg
        logits = F.scale(F.linear(q, keys), 1.0 / math.sqrt(c.attn_dim))  # [N, A]
        probs = F.router_probs(logits, c.route_temp)
        gates, idx = F.topk_gates(probs, self.agent_cap, renormalize=self.agent_cap > 1)
        plan = F.moe_plan(idx, c.max_agents)
        slot_agent = np.repeat(np.arange(c.max_agents), plan.counts)
        m = F.combine(F.gather_rows(msgs, slot_agent), gates, plan)  # [N, dim_msg]
        return probs, gates, idx, m

    def __call__(self, h: Tensor, ctx: SwarmContext) -> Tensor:
        c = self.cfg
        b, t, d = h.shape
        n, a = b * t, c.max_agents
        hf = F.reshape(h, [n, d])
        state = Tensor(_core.Tensor(self.agent_state.numpy()))  # a copy: the EMA below must not alter the tape
        keys, msgs = self.key_proj(state), self.msg_proj(state)  # [A, attn], [A, dim_msg]
        obs = self.obs_proj(hf)  # [N, dim_s]
        q = self.query_proj(obs)  # [N, attn]
        probs, gates, idx, m = self._route(q, keys, msgs)
        active = np.ones(n, bool)
        rounds = 0
        prev = np.sort(idx, 1)
        for _ in range(self.thought_cap):
            if not active.any():
                break
            mask = np.repeat(active[:, None].astype(np.float32), c.attn_dim, 1)  # [N, attn]
            q = F.add(q, F.mul(self.thought_proj(m), Tensor(_core.Tensor(mask))))
            rounds += int(active.sum())
            probs, gates, idx, m = self._route(q, keys, msgs)
            cur = np.sort(idx, 1)
            active &= ~(cur == prev).all(1)
            prev = cur

        # Agents: each kept (token, agent) choice runs the agent's SwiGLU on the token, weighted
        # by its gate, in one fused op (rows gathered per agent, outputs scattered back).
        k = self.agent_cap
        keep = gates.numpy() >= c.route_min_gate  # [N, k]
        keep[:, 0] = True
        flat = np.flatnonzero(keep.reshape(-1))  # kept choices n*k + j, token order
        tok, agent = flat // k, idx.reshape(-1)[flat]
        plan = F.moe_plan(idx, a, keep=keep)
        y = F.moe_swiglu(hf, gates, plan, self.w_gate, self.w_up, self.w_down)  # [N, D]
        y = F.add(y, F.col_scale(self.message_out(m), self.message_scale))

        if ctx.aux_loss_coef:
            ctx.losses.append(F.scale(F.load_balance_loss(probs, idx), ctx.aux_loss_coef))
        p = probs.numpy().astype(np.float64)
        entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum(1).mean())
        ctx.records.append(SwarmRecord(n, len(flat), rounds, list(plan.counts), entropy, self.agent_params))
        if ctx.update_state:
            self._update_state(obs.numpy(), tok, agent, gates.numpy().reshape(-1)[flat])
        return F.reshape(y, [b, t, d])

    def _update_state(self, obs: np.ndarray, tok: np.ndarray, agent: np.ndarray, g: np.ndarray) -> None:
        """s_a <- (1 - η) s_a + η · (gate-weighted mean observation of the tokens a processed);
        agents with no token keep their state. Sums in float64, in row order (deterministic)."""
        a = self.cfg.max_agents
        acc = np.zeros((a, obs.shape[1]), np.float64)
        np.add.at(acc, agent, obs[tok].astype(np.float64) * g[:, None].astype(np.float64))
        w = np.zeros(a, np.float64)
        np.add.at(w, agent, g.astype(np.float64))
        s = self.agent_state.numpy().astype(np.float64)
        used = w > 0
        eta = self.cfg.state_ema
        s[used] = (1.0 - eta) * s[used] + eta * acc[used] / w[used, None]
        self.agent_state.assign(s)
