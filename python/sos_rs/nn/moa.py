"""The Mixture-of-Attentions block (SPEC §6.2) and its parts. A block is two pre-norm residual
sublayers, each scaled by LayerScale:
  mixer:     a top-k router over four paths — LocalConv (causal depthwise conv), metric
             multi-head attention, metric multi-query attention, ChannelMix (per-token MLP);
  HyperFFN:  a top-k router over three branches — SwiGLU (hidden 3·d), causal depthwise conv,
             a low-rank gated bottleneck (a SwiGLU of rank 32).
Every path runs only on the tokens routed to it (see `routed_mixture`). `MoAHead` is the LM
head: final norm, then a LayerScaled rank-r gated adapter before the vocabulary projection
[ours: the source names an "MoA LM head" without defining it]."""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from .layers import Linear, RMSNorm
from .metric import MetricAttention
from .module import Module, Parameter
from .moe import Aux, Router, routed_mixture
from .transformer import SwiGLUMLP

MIXER_PATHS = ("conv", "mha", "mqa", "mix")
FFN_BRANCHES = ("swiglu", "conv", "bottleneck")


class LocalConv(Module):
    """Causal depthwise conv over time (kernel K, no bias); weight [D, K], init N(0, 1/K) so a
    channel's variance is kept."""

    def __init__(self, d_model: int, kernel: int, rng: np.random.Generator):
        super().__init__()
        self.weight = Parameter(rng.normal(0.0, 1.0 / math.sqrt(kernel), (d_model, kernel)))

    def __call__(self, h: Tensor, hf: Tensor, rows: np.ndarray) -> Tensor:
        return F.dwconv(h, self.weight, rows)  # [M, D]


class ChannelMix(Module):
    """Per-token MLP down(gelu(up(x)))."""

    def __init__(self, d_model: int, hidden: int, rng: np.random.Generator, std: float, out_std: float):
        super().__init__()
        self.up_proj = Linear(d_model, hidden, rng, std)
        self.down_proj = Linear(hidden, d_model, rng, out_std)

    def __call__(self, h: Tensor, hf: Tensor, rows: np.ndarray) -> Tensor:
        return self.down_proj(F.gelu(self.up_proj(F.gather_rows(hf, rows))))


class RowSwiGLU(SwiGLUMLP):
    """SwiGLU on the routed rows only (the FFN branch, and the rank-r bottleneck)."""

    def routed(self, h: Tensor, hf: Tensor, rows: np.ndarray) -> Tensor:
        return self(F.gather_rows(hf, rows))


def _out_std(cfg) -> float:
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


class MoAMixer(Module):
    """Top-k routing over the configured paths (a subset of MIXER_PATHS, in that order)."""

    def __init__(self, cfg, rng: np.random.Generator):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg.d_model, len(cfg.paths), cfg.router_top_k, cfg.router_temperature, rng, cfg.init_std)
        hd, std, out = cfg.head_dim, cfg.init_std, _out_std(cfg)
        attn = dict(
            alpha_init=cfg.alpha_init,
            rope_theta=cfg.rope_theta,
            rope_terms=cfg.rope_fourier_terms,
            v_gate_range=(cfg.v_gate_min, cfg.v_gate_max),
            ball_pruning=cfg.ball_pruning,
            ball_beta=cfg.ball_beta,
            ball_radius_init=cfg.ball_radius_init,
        )
        for name in cfg.paths:
            if name == "conv":
                self.conv = LocalConv(cfg.d_model, cfg.conv_kernel, rng)
            elif name == "mha":
                self.mha = MetricAttention(
                    cfg.d_model, cfg.n_heads, cfg.n_heads, hd, cfg.max_seq_len, rng, std, out, **attn
                )
            elif name == "mqa":
                self.mqa = MetricAttention(cfg.d_model, cfg.n_heads, 1, hd, cfg.max_seq_len, rng, std, out, **attn)
            elif name == "mix":
                self.mix = ChannelMix(cfg.d_model, cfg.mix_hidden, rng, std, out)

    def __call__(self, h: Tensor, aux: Aux, name: str) -> Tensor:
        paths, sizes = [], []
        for p in self.cfg.paths:
            mod = getattr(self, p)
            sizes.append(mod.num_parameters())
            if p in ("mha", "mqa"):
                paths.append(lambda h, hf, rows, mod=mod: mod(h, hf, rows, aux))
            else:
                paths.append(mod)
        return routed_mixture(
            name,
            h,
            self.router,
            paths,
            sizes,
            aux,
            self.cfg.aux_loss_coef,
            self.cfg.z_loss_coef,
            self.cfg.capacity_factor,
        )


class HyperFFN(Module):
    """Top-k routing over SwiGLU (hidden ffn_hidden), causal depthwise conv, rank-r gated bottleneck."""

    def __init__(self, cfg, rng: np.random.Generator):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg.d_model, len(FFN_BRANCHES), cfg.ffn_top_k, cfg.router_temperature, rng, cfg.init_std)
        self.swiglu = RowSwiGLU(cfg.d_model, cfg.ffn_hidden, rng, cfg.init_std, _out_std(cfg))
        self.conv = LocalConv(cfg.d_model, cfg.conv_kernel, rng)
        self.bottleneck = RowSwiGLU(cfg.d_model, cfg.ffn_rank, rng, cfg.init_std, _out_std(cfg))

    def __call__(self, h: Tensor, aux: Aux, name: str) -> Tensor:
        mods = (self.swiglu, self.conv, self.bottleneck)
        paths = (self.swiglu.routed, self.conv, self.bottleneck.routed)
        return routed_mixture(
            name,
            h,
            self.router,
            paths,
            [m.num_parameters() for m in mods],
            aux,
            self.cfg.aux_loss_coef,
            self.cfg.z_loss_coef,
            self.cfg.capacity_factor,
        )


class MoABlock(Module):
    """x + s1 ⊙ mixer(norm(x)), then + s2 ⊙ ffn(norm(x)); s1, s2 LayerScale vectors."""

    def __init__(self, cfg, rng: np.random.Generator):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MoAMixer(cfg, rng)
        self.mixer_scale = Parameter(np.full(cfg.d_model, cfg.layer_scale_init), no_decay=True)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = HyperFFN(cfg, rng)
        self.ffn_scale = Parameter(np.full(cfg.d_model, cfg.layer_scale_init), no_decay=True)

    def __call__(self, x: Tensor, aux: Aux, name: str) -> Tensor:
        x = F.add_col_scale(x, self.mixer(self.mixer_norm(x), aux, name + ".mixer"), self.mixer_scale)
        return F.add_col_scale(x, self.ffn(self.ffn_norm(x), aux, name + ".ffn"), self.ffn_scale)


class MoAHead(Module):
    """norm(x), then + s ⊙ bottleneck(norm(x)); the model applies the vocabulary projection."""

    def __init__(self, cfg, rng: np.random.Generator):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.adapter = SwiGLUMLP(cfg.d_model, cfg.ffn_rank, rng, cfg.init_std, _out_std(cfg))
        self.adapter_scale = Parameter(np.full(cfg.d_model, cfg.layer_scale_init), no_decay=True)

    def __call__(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        return F.add_col_scale(h, self.adapter(h), self.adapter_scale)
