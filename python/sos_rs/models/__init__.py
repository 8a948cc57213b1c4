"""Model families. Each is a module with a documented `<Family>Config`; `FAMILIES` maps the
family name (as `sos train` and exports call it) to (config class, model class)."""

from .dense import DenseConfig, DenseLM
from .discoverlm import DiscoverLM, DiscoverLMConfig
from .moa import MoAConfig, MoALM

FAMILIES = {
    "dense": (DenseConfig, DenseLM),
    "moa": (MoAConfig, MoALM),
    "discoverlm": (DiscoverLMConfig, DiscoverLM),
}

__all__ = ["FAMILIES", "DenseConfig", "DenseLM", "DiscoverLM", "DiscoverLMConfig", "MoAConfig", "MoALM"]
