"""Basic layers: Linear (no bias, weight [out, in]), Embedding, RMSNorm, LayerNorm."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from .module import Module, Parameter


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator, std: float = 0.02):
        super().__init__()
        self.weight = Parameter(rng.normal(0.0, std, (out_features, in_features)))

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class Embedding(Module):
    def __init__(self, num_embeddings: int, dim: int, rng: np.random.Generator, std: float = 0.02):
        super().__init__()
        self.weight = Parameter(rng.normal(0.0, std, (num_embeddings, dim)), no_decay=True)

    def __call__(self, ids: np.ndarray) -> Tensor:
        return F.embedding(self.weight, ids)


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim), no_decay=True)

    def __call__(self, x: Tensor) -> Tensor:
        return F.rmsnorm(x, self.weight, self.eps)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim), no_decay=True)
        self.bias = Parameter(np.zeros(dim), no_decay=True)

    def __call__(self, x: Tensor) -> Tensor:
        return F.layernorm(x, self.weight, self.bias, self.eps)
