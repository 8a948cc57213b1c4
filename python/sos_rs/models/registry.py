"""The registry of model families: the name used in TOML configs (`[model] family`) and in
checkpoints -> the family's `LanguageModel` subclass. The trainer, `sos sample/eval/export` and
the HF loader find families here and nowhere else. A new family adds one line to `FAMILIES`."""

from __future__ import annotations

import dataclasses
from typing import Dict, Type

from .base import LanguageModel
from .dense import DenseLM
from .discoverlm import DiscoverLM
from .moa import MoALM
from .sagi import SAGILM

FAMILIES: Dict[str, Type[LanguageModel]] = {
    DenseLM.family: DenseLM,
    MoALM.family: MoALM,
    DiscoverLM.family: DiscoverLM,
    SAGILM.family: SAGILM,
}


def get_family(family: str) -> Type[LanguageModel]:
    """The model class registered as `family`; an unknown name is a ValueError listing the known."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family]


def config_fields(family: str) -> set:
    """Names of the config fields of `family` (what `[model]` may set)."""
    return {f.name for f in dataclasses.fields(get_family(family).config_class)}


def build_model(family: str, config: dict) -> LanguageModel:
    """A fresh model of `family` from a dict of config fields (unknown fields are an error)."""
    cls = get_family(family)
    unknown = sorted(set(config) - config_fields(family))
    if unknown:
        raise ValueError(f"[model] has unknown keys for family {family!r}: {', '.join(unknown)}")
    return cls(cls.config_class(**config))


def family_for_model_type(model_type: str) -> Type[LanguageModel]:
    """The family whose Hugging Face export declares `model_type` in config.json."""
    for cls in FAMILIES.values():
        if cls.hf_model_type == model_type:
            return cls
    known = sorted(c.hf_model_type for c in FAMILIES.values() if c.hf_model_type)
    raise ValueError(f"unknown model_type {model_type!r} (known: {known})")
