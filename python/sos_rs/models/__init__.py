"""Model families. Each is a module with a documented `<Family>Config`."""

from .dense import DenseConfig, DenseLM

__all__ = ["DenseConfig", "DenseLM"]
