"""What every imported architecture shares: the error type, the `Architecture` record each mapping
module fills in (config.json <-> DenseConfig fields, tensor names both ways, norm offset), and the
config readers common to the Llama layout (sizes, RoPE bases, refusals).

Two config.json dialects are read: transformers 4 (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `sliding_window_pattern`) and transformers 5 (`rope_parameters`, per layer
type for Gemma3; `layer_types`). Only the default RoPE is supported; any scaling kind is refused by
name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple


class HFImportError(ValueError):
    """A Hugging Face folder cannot be imported; the message names what is missing or unsupported."""


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture maps onto the dense family."""

    name: str
    """`architectures[0]` in config.json (LlamaForCausalLM, ...)."""
    model_type: str
    """`model_type` written on export."""
    to_dense: Callable[[dict], dict]
    """config.json -> DenseConfig fields (raises HFImportError naming what is unsupported)."""
    from_dense: Callable[[dict, Optional[dict]], dict]
    """(DenseConfig fields, extra config.json keys) -> config.json (export)."""
    hf_to_ours: Callable[[str], Optional[str]]
    """HF tensor name -> our parameter name; None for tensors that carry nothing (rotary caches)."""
    ours_to_hf: Callable[[str], str]
    """Our parameter name -> HF tensor name (export)."""
    norm_offset: float = 0.0
    """HF stores RMSNorm weights as w with the norm multiplying by (offset + w) (Gemma: 1). The
    importer stores offset + w, so the model's RMSNorm is the plain one; export subtracts it.
    Norm weights are never decayed, so training is unchanged by this reparametrisation."""


def is_norm(name: str) -> bool:
    """Our RMSNorm weights: *layernorm.weight, *_norm.weight, model.norm.weight."""
    return name.endswith("norm.weight")


def require(hf: dict, *keys: str) -> List[Any]:
    missing = [k for k in keys if k not in hf]
    if missing:
        raise HFImportError(f"config.json lacks {', '.join(missing)}")
    return [hf[k] for k in keys]


def refuse_if(hf: dict, key: str, ok: Callable[[Any], bool], what: str) -> None:
    """Refuses the import when config.json sets `key` to a value `ok` rejects."""
    if key in hf and not ok(hf[key]):
        raise HFImportError(f"{key} = {hf[key]!r} is not supported ({what})")


def rope_thetas(hf: dict) -> Tuple[float, Optional[float]]:
    """(RoPE base of full-attention layers, base of sliding layers or None), refusing any RoPE
    scaling kind but the default one."""
    refuse_if(hf, "partial_rotary_factor", lambda v: v in (None, 1, 1.0), "RoPE on every channel only")
    params = hf.get("rope_parameters")
    if params:
        per = {"full_attention": params} if ("rope_theta" in params or "rope_type" in params) else params
        thetas: Dict[str, float] = {}
        for kind, p in per.items():
            rtype = p.get("rope_type", p.get("type", "default"))
            if rtype != "default":
                raise HFImportError(f"rope scaling kind {rtype!r} ({kind}) is not supported (only the default RoPE)")
            thetas[kind] = float(p.get("rope_theta", 10000.0))
        full = thetas.get("full_attention", thetas.get("sliding_attention", 10000.0))
        return full, thetas.get("sliding_attention")
    scaling = hf.get("rope_scaling")
    if scaling:
        rtype = scaling.get("rope_type", scaling.get("type", "default"))
        if rtype != "default":
            raise HFImportError(f"rope scaling kind {rtype!r} is not supported (only the default RoPE)")
    local = hf.get("rope_local_base_freq")
    return float(hf.get("rope_theta", 10000.0)), None if local is None else float(local)


def layer_kinds(hf: dict, n_layers: int) -> Optional[List[str]]:
    """`layer_types` as "full"/"sliding", or None when config.json has none."""
    types = hf.get("layer_types")
    if types is None:
        return None
    names = {"full_attention": "full", "sliding_attention": "sliding"}
    bad = sorted({t for t in types if t not in names})
    if bad:
        raise HFImportError(f"layer_types {bad} are not supported (full_attention, sliding_attention)")
    if len(types) != n_layers:
        raise HFImportError(f"layer_types has {len(types)} entries for num_hidden_layers={n_layers}")
    return [names[t] for t in types]


def llama_layout(hf: dict, default_tie: bool) -> dict:
    """The DenseConfig fields every Llama-layout config.json gives (sizes, norm, RoPE base)."""
    vocab, d, ffn, layers, heads = require(
        hf, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"
    )
    head_dim = hf.get("head_dim")
    full_theta, _ = rope_thetas(hf)
    return {
        "vocab_size": int(vocab),
        "d_model": int(d),
        "n_layers": int(layers),
        "n_heads": int(heads),
        "n_kv_heads": int(hf.get("num_key_value_heads") or heads),
        "ffn_hidden": int(ffn),
        "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
        "rope_theta": full_theta,
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", default_tie)),
        "init_std": float(hf.get("initializer_range", 0.02)),
        "head_dim": None if head_dim in (None, d // heads) else int(head_dim),
    }


def silu_only(hf: dict) -> None:
    refuse_if(hf, "hidden_act", lambda v: v == "silu", "the MLP gate must be silu")
    refuse_if(hf, "mlp_bias", lambda v: not v, "MLP biases")


def layout_config(cfg: dict, architecture: str, model_type: str) -> dict:
    """The config.json fields shared by the Llama-layout exports, from DenseConfig fields."""
    head_dim = cfg["head_dim"] or cfg["d_model"] // cfg["n_heads"]
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg["vocab_size"],
        "hidden_size": cfg["d_model"],
        "intermediate_size": cfg["ffn_hidden"],
        "num_hidden_layers": cfg["n_layers"],
        "num_attention_heads": cfg["n_heads"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "head_dim": head_dim,
        "max_position_embeddings": cfg["max_seq_len"],
        "rms_norm_eps": cfg["norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "tie_word_embeddings": cfg["tie_embeddings"],
        "initializer_range": cfg["init_std"],
        "torch_dtype": "float32",
    }


def same_name(name: str) -> Optional[str]:
    """The Llama layout's tensor names are ours; rotary caches of old checkpoints carry nothing."""
    return None if name.endswith("rotary_emb.inv_freq") else name
