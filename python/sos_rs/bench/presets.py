"""Model sizes `sos bench` trains: a small and a medium preset per family, with the batch.
A family registered without an entry here is benched at its `tiny()` config (small only).

`large` (dense only) is the 100M-class model of issue 14: d 768, 12 layers, 12 heads, SwiGLU
2048, vocabulary 32768 with an untied lm_head (135M parameters; 110M tied), T 1024, B 2. A step takes tens
of seconds, so it runs only when asked for (`--presets large`), never by default."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

# family -> preset -> (config fields, batch); seq = max_seq_len.
PRESETS: Dict[str, Dict[str, Tuple[dict, int]]] = {
    "dense": {
        "small": (dict(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, max_seq_len=128), 16),
        "medium": (dict(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, max_seq_len=256), 8),
        "large": (
            dict(vocab_size=32768, d_model=768, n_layers=12, n_heads=12, ffn_hidden=2048, max_seq_len=1024),
            2,
        ),
    },
    "moa": {
        "small": (dict(vocab_size=4096, d_model=128, n_layers=2, n_heads=4, max_seq_len=128), 8),
        "medium": (dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, max_seq_len=256), 8),
    },
    "discoverlm": {
        "small": (dict(vocab_size=4096, d_model=128, n_layers=2, n_heads=4, max_seq_len=128, ffn_hidden=384), 8),
        "medium": (dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, max_seq_len=256, ffn_hidden=768), 8),
    },
    # the swarm with the published routing (top-5 of up to 20 agents, budgets), narrower decoders
    "sagi": {
        "small": (dict(vocab_size=4096, d_model=128, n_layers=2, n_heads=4, ffn_hidden=384, max_seq_len=128), 8),
        "medium": (dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=8, ffn_hidden=768, max_seq_len=256), 8),
    },
}


DEFAULT_PRESETS = ("small", "medium")
"""Presets run when none is named (`--quick`: small only)."""
ALL_PRESETS = ("small", "medium", "large")


def preset(family: str, name: str) -> Optional[Tuple[dict, int]]:
    """(config fields, batch) of `family` at preset `name`, or None when it has no such preset."""
    from ..models import get_family

    if family in PRESETS:
        return PRESETS[family].get(name)
    if name != "small":
        return None
    cls = get_family(family)
    tiny = getattr(cls.config_class, "tiny", None)
    if tiny is None:
        return None
    return tiny().to_dict(), 8
