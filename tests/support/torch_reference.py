"""A pure-PyTorch twin of sos_rs's dense baseline (same names, same math), used as the oracle
for the model comparison, by scripts/make_golden.py and by benches/train_vs_torch.py. Imported
only where torch is installed."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta, positions=None):
    # x: [B, T, H, hd], rotate_half layout as HF Llama; positions [B, T] (default 0..T-1 per row)
    b, t, h, hd = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    pos = torch.arange(t)[None, :].expand(b, t) if positions is None else positions
    ang = pos.to(torch.float32)[..., None] * inv  # [B, T, hd/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class TorchDense(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        d, v, hd = cfg["d_model"], cfg["vocab_size"], cfg["d_model"] // cfg["n_heads"]
        self.params = nn.ParameterDict()
        p = self.params
        std = cfg["init_std"]
        g = torch.Generator().manual_seed(cfg["seed"])

        def mat(o, i, s=std):
            return nn.Parameter(torch.randn(o, i, generator=g) * s)

        out_std = std / math.sqrt(2 * cfg["n_layers"])
        self.names = []

        def add(name, t):
            p[name.replace(".", "__")] = t
            self.names.append(name)

        add("model.embed_tokens.weight", mat(v, d))
        for i in range(cfg["n_layers"]):
            pre = f"model.layers.{i}."
            add(pre + "input_layernorm.weight", nn.Parameter(torch.ones(d)))
            add(pre + "self_attn.q_proj.weight", mat(cfg["n_heads"] * hd, d))
            add(pre + "self_attn.k_proj.weight", mat(cfg["n_kv_heads"] * hd, d))
            add(pre + "self_attn.v_proj.weight", mat(cfg["n_kv_heads"] * hd, d))
            add(pre + "self_attn.o_proj.weight", mat(d, cfg["n_heads"] * hd, out_std))
            add(pre + "post_attention_layernorm.weight", nn.Parameter(torch.ones(d)))
            add(pre + "mlp.gate_proj.weight", mat(cfg["ffn_hidden"], d))
            add(pre + "mlp.up_proj.weight", mat(cfg["ffn_hidden"], d))
            add(pre + "mlp.down_proj.weight", mat(d, cfg["ffn_hidden"], out_std))
        add("model.norm.weight", nn.Parameter(torch.ones(d)))
        if not cfg["tie_embeddings"]:
            add("lm_head.weight", mat(v, d))

    def get(self, name):
        return self.params[name.replace(".", "__")]

    def forward(self, ids, positions=None, segments=None):
        """Logits of ids [B, T]. Packed documents (`positions`, `segments` [B, T]): RoPE at the
        given positions and an explicit boolean block-diagonal causal mask."""
        c = self.cfg
        b, t = ids.shape
        mask = None
        if segments is not None:
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            mask = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]  # [B, 1, T, T]
        hd = c["d_model"] // c["n_heads"]
        x = self.get("model.embed_tokens.weight")[ids]
        for i in range(c["n_layers"]):
            pre = f"model.layers.{i}."
            h = rms_norm(x, self.get(pre + "input_layernorm.weight"), c["norm_eps"])
            q = (h @ self.get(pre + "self_attn.q_proj.weight").T).view(b, t, c["n_heads"], hd)
            k = (h @ self.get(pre + "self_attn.k_proj.weight").T).view(b, t, c["n_kv_heads"], hd)
            v = (h @ self.get(pre + "self_attn.v_proj.weight").T).view(b, t, c["n_kv_heads"], hd)
            q, k = rope(q, c["rope_theta"], positions), rope(k, c["rope_theta"], positions)
            rep = c["n_heads"] // c["n_kv_heads"]
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if mask is None:
                o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
            else:
                o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
            o = o.transpose(1, 2).reshape(b, t, c["n_heads"] * hd)
            x = x + o @ self.get(pre + "self_attn.o_proj.weight").T
            h = rms_norm(x, self.get(pre + "post_attention_layernorm.weight"), c["norm_eps"])
            a = F.silu(h @ self.get(pre + "mlp.gate_proj.weight").T) * (h @ self.get(pre + "mlp.up_proj.weight").T)
            x = x + a @ self.get(pre + "mlp.down_proj.weight").T
        x = rms_norm(x, self.get("model.norm.weight"), c["norm_eps"])
        head = self.get("model.embed_tokens.weight") if c["tie_embeddings"] else self.get("lm_head.weight")
        return x @ head.T

    def adamw(self, lr, betas, eps, weight_decay):
        decay = [self.get(n) for n in self.names if self.get(n).ndim >= 2 and "embed_tokens" not in n]
        other = [self.get(n) for n in self.names if not (self.get(n).ndim >= 2 and "embed_tokens" not in n)]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=lr,
            betas=betas,
            eps=eps,
            foreach=False,
        )
