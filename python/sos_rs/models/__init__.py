"""Model families. `base.LanguageModel` is the contract every family implements; `registry`
maps the name used in TOML configs and checkpoints to the family's class."""

from __future__ import annotations

from .base import ExportError, LanguageModel, MemoryEstimate
from .dense import DenseConfig, DenseLM
from .discoverlm import DiscoverLM, DiscoverLMConfig
from .moa import MoAConfig, MoALM
from .registry import FAMILIES, build_model, config_fields, get_family
from .sagi import SAGILM, SAGIConfig

__all__ = [
    "FAMILIES",
    "DenseConfig",
    "DenseLM",
    "DiscoverLM",
    "DiscoverLMConfig",
    "ExportError",
    "LanguageModel",
    "MemoryEstimate",
    "MoAConfig",
    "MoALM",
    "SAGIConfig",
    "SAGILM",
    "build_model",
    "config_fields",
    "get_family",
]
