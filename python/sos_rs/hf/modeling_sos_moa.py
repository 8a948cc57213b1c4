"""PyTorch reference of sos_rs's MoA and DiscoverLM families: loads an sos_rs export
(model.safetensors + config.json) with `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`, and doubles as the test oracle of the sos_rs implementation.

Self-contained (torch, optionally transformers; never sos_rs). Written for clarity, not speed:
every path runs on every token and the router's top-k gates (zero elsewhere) mix them, which is
the same function as sos_rs's sparse dispatch; metric attention is materialised [B, H, T, T].
Parameter names equal sos_rs's, so state dicts load without renaming.
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
    d_model=256,
    n_layers=4,
    n_heads=8,
    head_dim=None,
    max_seq_len=256,
    paths=["conv", "mha", "mqa", "mix"],
    router_top_k=2,
    router_temperature=2.0,
    conv_kernel=5,
    mix_hidden=None,
    ffn_hidden=None,
    ffn_rank=32,
    ffn_top_k=2,
    layer_scale_init=1e-4,
    alpha_init=1.5,
    rope_theta=10000.0,
    rope_fourier_terms=16,
    v_gate_min=0.5,
    v_gate_max=2.0,
    ball_pruning=False,
    ball_beta=1.0,
    ball_radius_init=2.0,
    ti_lambda=0.01,
    ti_triples=64,
    aux_loss_coef=0.01,
    z_loss_coef=0.0,
    capacity_factor=0.0,
    tie_embeddings=True,
    norm_eps=1e-5,
    init_std=0.02,
    seed=0,
)


class SosMoAConfig(PretrainedConfig):
    model_type = "sos_moa"

    def __init__(self, **kwargs):
        ours = {key: kwargs.pop(key, value) for key, value in DEFAULTS.items()}
        kwargs.setdefault("tie_word_embeddings", ours["tie_embeddings"])
        if PretrainedConfig is not object:
            super().__init__(**kwargs)
        # Set after the base class, which drops generation settings (top_k, ...) it finds in kwargs.
        for key, value in ours.items():
            object.__setattr__(self, key, value)
        self.head_dim = self.head_dim or self.d_model // self.n_heads
        self.mix_hidden = self.mix_hidden or 2 * self.d_model
        self.ffn_hidden = self.ffn_hidden or 3 * self.d_model


class SosDiscoverLMConfig(SosMoAConfig):
    model_type = "sos_discoverlm"


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = (
            nn.Linear(d, hidden, bias=False),
            nn.Linear(d, hidden, bias=False),
            nn.Linear(hidden, d, bias=False),
        )

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ChannelMix(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class LocalConv(nn.Module):
    def __init__(self, d, kernel):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, kernel))

    def forward(self, x):  # x [B, T, D]; causal depthwise conv, weight [D, K] (oldest tap first)
        y = F.conv1d(x.transpose(1, 2), self.weight.unsqueeze(1), padding=self.weight.shape[1] - 1, groups=x.shape[-1])
        return y[..., : x.shape[1]].transpose(1, 2)


class BlackHoleRoPE(nn.Module):
    def __init__(self, cfg, kv_dim):
        super().__init__()
        self.cfg = cfg
        self.coef = nn.Parameter(torch.zeros(cfg.head_dim // 2, cfg.rope_fourier_terms))
        self.v_gate = nn.Parameter(torch.zeros(kv_dim))

    def angles(self, t):  # [t, hd/2]; tables built on the fly (no buffers: meta-device safe)
        c, dev = self.cfg, self.coef.device
        inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64, device=dev).float() / c.head_dim)
        pos = torch.arange(c.max_seq_len, dtype=torch.float32, device=dev)
        basis = torch.sin(
            math.pi
            * (torch.arange(c.rope_fourier_terms, device=dev, dtype=torch.float64) + 1)
            * pos[:, None].double()
            / c.max_seq_len
        ).float()
        return (pos[:, None] * inv[None, :] + basis @ self.coef.T)[:t]

    def rotate(self, x, ang):  # x [B, T, H, hd], rotate-half layout
        c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    def gate(self, v):
        return v * (self.cfg.v_gate_min + (self.cfg.v_gate_max - self.cfg.v_gate_min) * torch.sigmoid(self.v_gate))


class MetricAttention(nn.Module):
    def __init__(self, cfg, n_kv):
        super().__init__()
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.cfg, self.n_kv = cfg, n_kv
        self.alpha = nn.Parameter(torch.zeros(h))
        self.metric_w = nn.Parameter(torch.zeros(h, hd))
        if cfg.ball_pruning:
            self.ball_origin = nn.Parameter(torch.zeros(h, hd))
            self.ball_radius = nn.Parameter(torch.zeros(h))
        self.q_proj, self.k_proj = nn.Linear(d, h * hd, bias=False), nn.Linear(d, n_kv * hd, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, n_kv * hd, bias=False), nn.Linear(h * hd, d, bias=False)
        self.rope = BlackHoleRoPE(cfg, n_kv * hd)

    def forward(self, x, state):
        c = self.cfg
        b, t, _ = x.shape
        h, hd, rep = c.n_heads, c.head_dim, c.n_heads // self.n_kv
        ang = self.rope.angles(t)
        q = self.rope.rotate(self.q_proj(x).view(b, t, h, hd), ang)
        k = self.rope.rotate(self.k_proj(x).view(b, t, self.n_kv, hd), ang)
        v = self.rope.gate(self.v_proj(x)).view(b, t, self.n_kv, hd)
        w = F.softplus(self.metric_w)  # [H, hd]
        kr, vr = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)  # [B, T, H, hd]
        dist = (
            (q * q * w).sum(-1).transpose(1, 2)[..., :, None]
            - 2 * torch.einsum("bihc,bjhc->bhij", q * w, kr)
            + (kr * kr * w).sum(-1).transpose(1, 2)[..., None, :]
        )  # [B, H, T, T]
        s = -self.alpha[None, :, None, None] * dist
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        if c.ball_pruning:
            r = torch.sqrt((w * (kr - self.ball_origin) ** 2).sum(-1) + 1e-6) - self.ball_radius  # [B, T, H]
            kb = (-c.ball_beta * F.relu(r)).transpose(1, 2)[:, :, None, :]  # [B, H, 1, T]
            if state["training"]:
                s = s + kb
            else:  # hard mask: keys outside the ball, except a query's own key
                causal = causal & ((kb >= 0) | torch.eye(t, dtype=torch.bool, device=x.device))
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1)
        o = torch.einsum("bhij,bjhc->bihc", p, vr).reshape(b, t, h * hd)
        if state["training"] and state["triples"] is not None and c.ti_lambda:
            state["losses"].append(
                ti_loss(k.reshape(b * t, self.n_kv, hd), w, state["triples"], c.ti_lambda * state["ti_weight"])
            )
        return self.o_proj(o)


def ti_loss(k, w, triples, lam):
    """λ · mean over triples × heads of relu(2·max(D) - ΣD), D the weighted squared distances."""
    rep = w.shape[0] // k.shape[1]
    kr = k.repeat_interleave(rep, 1)  # [N, H, hd]
    a, b, c = kr[triples[:, 0]], kr[triples[:, 1]], kr[triples[:, 2]]
    d = lambda x, y: ((x - y) ** 2 * w).sum(-1)  # noqa: E731
    sides = torch.stack([d(a, b), d(b, c), d(a, c)])  # [3, n, H]
    return lam * F.relu(2 * sides.max(0).values - sides.sum(0)).mean()


def route(x, router, k, tau, capacity_factor, state, coef, z_coef):
    """Dense gate matrix [N, E] of the top-k renormalised gates, with sos_rs's capacity rule
    (admission by choice rank, then token order), and the auxiliary losses."""
    logits = router(x)
    n, e = logits.shape
    probs = torch.softmax(logits / tau, -1)
    topv, topi = probs.topk(k, -1)
    gates = topv / topv.sum(-1, keepdim=True) if k > 1 else topv
    keep = torch.ones_like(topi, dtype=torch.bool)
    if capacity_factor > 0:
        cap, used = math.ceil(capacity_factor * n * k / e), torch.zeros(e, dtype=torch.long)
        for j in range(k):
            onehot = F.one_hot(topi[:, j], e)
            seat = (onehot.cumsum(0) + used) * onehot
            keep[:, j] = seat.sum(-1) <= cap
            used = used + (onehot * keep[:, j : j + 1]).sum(0)
    dense = torch.zeros(n, e, dtype=x.dtype, device=x.device).scatter_add(1, topi, gates * keep)
    if coef:
        f = torch.bincount(topi.reshape(-1), minlength=e).to(x.dtype) / topi.numel()
        state["losses"].append(coef * e * (f * probs.mean(0)).sum())
    if z_coef:
        state["losses"].append(z_coef * torch.logsumexp(logits, -1).pow(2).mean())
    return dense, torch.bincount(topi[keep], minlength=e)


class MoABlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.mixer_scale, self.ffn_scale = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
        self.mixer_norm, self.ffn_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.mixer = nn.Module()
        self.mixer.router = nn.Linear(d, len(cfg.paths), bias=False)
        for p in cfg.paths:
            mod = {
                "conv": lambda: LocalConv(d, cfg.conv_kernel),
                "mha": lambda: MetricAttention(cfg, cfg.n_heads),
                "mqa": lambda: MetricAttention(cfg, 1),
                "mix": lambda: ChannelMix(d, cfg.mix_hidden),
            }[p]()
            setattr(self.mixer, p, mod)
        self.ffn = nn.Module()
        self.ffn.router = nn.Linear(d, 3, bias=False)
        self.ffn.swiglu, self.ffn.conv, self.ffn.bottleneck = (
            SwiGLU(d, cfg.ffn_hidden),
            LocalConv(d, cfg.conv_kernel),
            SwiGLU(d, cfg.ffn_rank),
        )

    def mixture(self, h, router, mods, k, state):
        c = self.cfg
        b, t, d = h.shape
        gates, counts = route(
            h.reshape(b * t, d),
            router,
            k,
            c.router_temperature,
            c.capacity_factor,
            state,
            c.aux_loss_coef,
            c.z_loss_coef,
        )
        out = 0
        for e, m in enumerate(mods):
            if counts[e] > 0:  # as sos_rs: a path no token chose is not run (no regulariser either)
                y = m(h, state) if isinstance(m, MetricAttention) else m(h)
                out = out + gates[:, e].view(b, t, 1) * y
        return out

    def forward(self, x, state):
        c = self.cfg
        mods = [getattr(self.mixer, p) for p in c.paths]
        x = x + self.mixer_scale * self.mixture(self.mixer_norm(x), self.mixer.router, mods, c.router_top_k, state)
        ffn = [self.ffn.swiglu, self.ffn.conv, self.ffn.bottleneck]
        return x + self.ffn_scale * self.mixture(self.ffn_norm(x), self.ffn.router, ffn, c.ffn_top_k, state)


class MoAHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm, self.adapter = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg.d_model, cfg.ffn_rank)
        self.adapter_scale = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x):
        h = self.norm(x)
        return h + self.adapter_scale * self.adapter(h)


class SosMoAForCausalLM(PreTrainedModel):
    config_class = SosMoAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config) if PreTrainedModel is not nn.Module else super().__init__()
        self.config = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.model.layers = nn.ModuleList(MoABlock(config) for _ in range(config.n_layers))
        self.model.head = MoAHead(config)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if PreTrainedModel is not nn.Module:
            self.post_init()

    def _init_weights(self, module):  # weights come from the sos_rs export
        pass

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, labels=None, triples=None, return_aux=False, **kwargs):
        """Logits [B, T, V]; with labels the loss is next-token CE on (input_ids, labels) as given
        (already shifted, as sos_rs's `loss(ids, targets)`) plus the auxiliary losses."""
        c = self.config
        n_attn = c.n_layers * sum(p in ("mha", "mqa") for p in c.paths)
        state = {
            "training": self.training,
            "triples": None if triples is None else torch.as_tensor(triples, dtype=torch.long),
            "losses": [],
            "ti_weight": 1.0 / max(n_attn, 1),
        }
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, state)
        h = self.model.head(x)
        logits = h @ (self.model.embed_tokens.weight if c.tie_embeddings else self.lm_head.weight).T
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), labels.reshape(-1)) + sum(state["losses"])
        if return_aux:
            return logits, loss, state["losses"]
        return CausalLMOutput(loss=loss, logits=logits) if CausalLMOutput is not None else (loss, logits)


class SosDiscoverLMForCausalLM(SosMoAForCausalLM):
    config_class: Any = SosDiscoverLMConfig
