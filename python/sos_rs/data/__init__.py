"""Data for training: token shards, the belt that packs them into batches, and `sos prepare`.

- `Belt`, `Mixture`, `ShardWriter`, `shard_info` are the Rust core's (rust/belt/, rust/py/belt.rs).
- `read_meta(DIR)` reads what `sos prepare` wrote.
- `prepare(INPUTS, DIR, ...)` / `PrepareConfig` (Polars + HF tokenizers) load on first use, so
  training imports neither.
"""

from __future__ import annotations

from typing import Any

from .._core import Belt, Mixture, ShardWriter, shard_info
from .meta import read_meta

__all__ = ["Belt", "Mixture", "PrepareConfig", "ShardWriter", "format_summary", "prepare", "read_meta", "shard_info"]

_LAZY = {"prepare": "pipeline", "PrepareConfig": "config", "format_summary": "summary"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
