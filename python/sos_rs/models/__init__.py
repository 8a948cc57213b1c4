"""Model families. Each is a module with a documented `<Family>Config`; `FAMILIES` maps the
name used in TOML configs and checkpoints to (config class, model class)."""

from __future__ import annotations

import dataclasses

from .dense import DenseConfig, DenseLM

FAMILIES = {
    "dense": (DenseConfig, DenseLM),
}


def config_fields(family: str) -> set:
    return {f.name for f in dataclasses.fields(family_classes(family)[0])}


def family_classes(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def build_model(family: str, config: dict):
    """A fresh model of `family` from a dict of config fields (unknown fields are an error)."""
    cfg_cls, model_cls = family_classes(family)
    unknown = sorted(set(config) - config_fields(family))
    if unknown:
        raise ValueError(f"[model] has unknown keys for family {family!r}: {', '.join(unknown)}")
    return model_cls(cfg_cls(**config))


__all__ = ["DenseConfig", "DenseLM", "FAMILIES", "build_model", "config_fields", "family_classes"]
