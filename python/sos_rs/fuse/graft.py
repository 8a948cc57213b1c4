"""The graft: the donor's attention sublayers, carried into the host's hidden space through the
alignment W [D_donor, D_host] and regrouped to the host's heads, replace the host's.

In column form the host stream x_h maps to the donor's as x_d ≈ W x_h (exact for a square W), so
for host layer l taking donor layer m (`layer_map`):
    q/k/v_proj ← Wqkv_d · diag(g_d) · W      (g_d: the donor's pre-attention RMSNorm weight, folded in)
    o_proj     ← Wᵀ · Wo_d                   (the output goes back into the host's space)
    input_layernorm ← c·1, c = sqrt(D_donor / D_host)
because RMSNorm(W x_h) = c·W·x_h/rms(x_h) when W preserves norms. q/k norms and q/k/v biases act
per head and are copied. The fused model keeps everything else of the host (embeddings, MLPs,
their norms, the head) and takes the donor's RoPE base, score scale and q/k-norm/bias switches.

Heads are regrouped to the host's (n_heads, n_kv_heads) with the head size fixed: more host heads
than donor heads repeat each donor head r times with its o_proj columns divided by r (exact);
fewer keep the first head of each run of r (lossy: reported). A host key/value head whose query
heads need different donor key/value heads gets their mean (lossy: reported). What cannot be
bridged is refused: different head sizes (RoPE pairs channels per head size), head counts that do
not divide, sandwich-norm or GeGLU mismatches inside the attention sublayer."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .align import FuseError


@dataclass
class GraftReport:
    layers: List[int]
    """Donor layer grafted into each host layer."""
    scale: float
    """c = sqrt(D_donor / D_host), the host's new pre-attention norm weight."""
    notes: List[str] = field(default_factory=list)
    """What the regrouping and the config change did (lossy steps say so)."""
    grafted: List[str] = field(default_factory=list)
    """Names of the parameters the graft wrote (attention and its input norm)."""
    boundary: List[str] = field(default_factory=list)
    """Host parameters next to the graft (post-attention norms), healed with it first."""


def layer_map(host_layers: int, donor_layers: int, spec: Optional[str] = None) -> List[int]:
    """Donor layer per host layer: proportional by depth (host l -> floor((l + 0.5)·L_d/L_h)), or
    `spec`, a comma list of one donor layer per host layer ("0,0,1,1")."""
    if spec is None:
        return [min(donor_layers - 1, int((i + 0.5) * donor_layers / host_layers)) for i in range(host_layers)]
    try:
        out = [int(x) for x in spec.split(",")]
    except ValueError:
        raise FuseError(f"--layers {spec!r}: expected a comma list of donor layer numbers") from None
    if len(out) != host_layers:
        raise FuseError(f"--layers gives {len(out)} donor layers; the host has {host_layers} layers")
    bad = [m for m in out if not 0 <= m < donor_layers]
    if bad:
        raise FuseError(f"--layers names donor layers {bad}; the donor has layers 0..{donor_layers - 1}")
    return out


def _regroup(hc, dc, notes: List[str]) -> Tuple[List[int], List[float], List[List[int]]]:
    """(donor query head, o_proj factor) per host query head, and the donor kv heads each host
    kv head averages."""
    hh, hkv, dh, dkv = hc.n_heads, hc.n_kv_heads, dc.n_heads, dc.n_kv_heads
    if hh % dh == 0:
        r = hh // dh
        src, fac = [j // r for j in range(hh)], [1.0 / r] * hh
        if r > 1:
            notes.append(f"query heads: each of the donor's {dh} repeated {r}x with o_proj/{r} (exact)")
    elif dh % hh == 0:
        r = dh // hh
        src, fac = [j * r for j in range(hh)], [1.0] * hh
        notes.append(f"query heads: kept donor heads {src} of {dh} (lossy: {dh - hh} dropped)")
    else:
        raise FuseError(f"cannot regroup {dh} donor query heads into the host's {hh} (neither divides the other)")
    kv_src = []
    for k in range(hkv):
        group = range(k * hh // hkv, (k + 1) * hh // hkv)
        kv_src.append(sorted({src[j] // (dh // dkv) for j in group}))
    if any(len(s) > 1 for s in kv_src):
        notes.append(f"key/value heads: host kv heads average donor kv heads {kv_src} (lossy)")
    return src, fac, kv_src


def _heads(w: np.ndarray, n: int, hd: int) -> np.ndarray:
    return w.reshape(n, hd, *w.shape[1:])  # [n·hd, ...] -> [n, hd, ...]


def graft_attention(host, donor, w: np.ndarray, layers: List[int]):
    """(fused DenseLM, GraftReport): the host with the donor's attention grafted per `layers`.
    `w` [D_donor, D_host] is the alignment map."""
    from ..models.dense import DenseLM

    hc, dc = host.config, donor.config
    hd = hc.resolved_head_dim()
    if dc.resolved_head_dim() != hd:
        raise FuseError(
            f"head size {dc.resolved_head_dim()} (donor) vs {hd} (host) cannot be bridged: RoPE pairs "
            "channels i and i + hd/2 at frequencies set by the head size"
        )
    if dc.sandwich_norm != hc.sandwich_norm:
        raise FuseError("one model normalises attention outputs (sandwich_norm) and the other does not")
    if w.shape != (dc.d_model, hc.d_model):
        raise FuseError(f"alignment map is {list(w.shape)}; expected [{dc.d_model}, {hc.d_model}]")
    report = GraftReport(layers=list(layers), scale=math.sqrt(dc.d_model / hc.d_model))
    src, fac, kv_src = _regroup(hc, dc, report.notes)
    switches = dict(
        rope_theta=dc.rope_theta,
        rope_local_theta=dc.rope_local_theta,
        qkv_bias=dc.qkv_bias,
        qk_norm=dc.qk_norm,
        query_pre_attn_scalar=dc.query_pre_attn_scalar,
    )
    changed = {k: v for k, v in switches.items() if getattr(hc, k) != v}
    if changed:
        report.notes.append(f"config from the donor's attention: {changed}")
    fcfg = dataclasses.replace(hc, **switches)
    fused = DenseLM(dataclasses.replace(fcfg, init_std=0.0))
    fused.config = fcfg
    hstate, dstate = host.state_dict(), donor.state_dict()
    out = {k: v for k, v in hstate.items() if k in dict(fused.named_parameters())}
    w64 = w.astype(np.float64)
    for layer, m in enumerate(layers):
        hp, dp = f"model.layers.{layer}.", f"model.layers.{m}."
        g = dstate[dp + "input_layernorm.weight"].astype(np.float64)
        into = g[:, None] * w64  # diag(g_d) · W  [D_d, D_h]

        def proj(name: str, dp: str = dp, into: np.ndarray = into) -> np.ndarray:
            return dstate[dp + f"self_attn.{name}.weight"].astype(np.float64) @ into  # [n·hd, D_h]

        q = _heads(proj("q_proj"), dc.n_heads, hd)[src]  # [Hh, hd, D_h]
        k = _heads(proj("k_proj"), dc.n_kv_heads, hd)
        v = _heads(proj("v_proj"), dc.n_kv_heads, hd)
        kv = (
            [np.mean([k[s] for s in ss], axis=0) for ss in kv_src],
            [np.mean([v[s] for s in ss], axis=0) for ss in kv_src],
        )
        o = (w64.T @ dstate[dp + "self_attn.o_proj.weight"].astype(np.float64)).reshape(hc.d_model, dc.n_heads, hd)
        o = o[:, src] * np.asarray(fac)[None, :, None]  # [D_h, Hh, hd]
        new = {
            "self_attn.q_proj.weight": q.reshape(-1, hc.d_model),
            "self_attn.k_proj.weight": np.stack(kv[0]).reshape(-1, hc.d_model),
            "self_attn.v_proj.weight": np.stack(kv[1]).reshape(-1, hc.d_model),
            "self_attn.o_proj.weight": o.reshape(hc.d_model, -1),
            "input_layernorm.weight": np.full(hc.d_model, report.scale),
        }
        if dc.qkv_bias:
            new["self_attn.q_proj.bias"] = _heads(dstate[dp + "self_attn.q_proj.bias"], dc.n_heads, hd)[src].reshape(-1)
            for name in ("k", "v"):
                b = _heads(dstate[dp + f"self_attn.{name}_proj.bias"], dc.n_kv_heads, hd)
                new[f"self_attn.{name}_proj.bias"] = np.stack([b[ss].mean(axis=0) for ss in kv_src]).reshape(-1)
        if dc.qk_norm:
            for name in ("q_norm", "k_norm"):
                new[f"self_attn.{name}.weight"] = dstate[dp + f"self_attn.{name}.weight"]
        for key, arr in new.items():
            out[hp + key] = np.asarray(arr, np.float32)
            report.grafted.append(hp + key)
        report.boundary.append(hp + "post_attention_layernorm.weight")
        if hc.sandwich_norm:
            report.boundary.append(hp + "attn_out_norm.weight")
    fused.load_state_dict(out)
    return fused, report
