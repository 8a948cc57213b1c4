"""Basic layers: Linear (weight [out, in], bias optional and off by default), Embedding, RMSNorm,
LayerNorm."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from .. import _core
from .. import functional as F
from ..autograd import Tensor
from .module import Module, Parameter


def _normal(rng: np.random.Generator, std: float, shape: tuple) -> Union[np.ndarray, "_core.Tensor"]:
    """N(0, std²) of `shape`; std 0 gives a zero Rust tensor on untouched pages without drawing
    (how `sos import` builds a model it is about to fill, keeping its peak memory low)."""
    return rng.normal(0.0, std, shape) if std > 0 else _core.Tensor.zeros(list(shape))


class Linear(Module):
    def __init__(
        self, in_features: int, out_features: int, rng: np.random.Generator, std: float = 0.02, bias: bool = False
    ):
        super().__init__()
        self.weight = Parameter(_normal(rng, std, (out_features, in_features)))
        if bias:  # zero at init, never decayed (Qwen2's q/k/v biases)
            self.bias = Parameter(np.zeros(out_features), no_decay=True)
        self.has_bias = bias

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear_bias(x, self.weight, self.bias) if self.has_bias else F.linear(x, self.weight)


class Embedding(Module):
    def __init__(self, num_embeddings: int, dim: int, rng: np.random.Generator, std: float = 0.02):
        super().__init__()
        self.weight = Parameter(_normal(rng, std, (num_embeddings, dim)), no_decay=True)

    def __call__(self, ids: np.ndarray) -> Tensor:
        return F.embedding(self.weight, ids)


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim), no_decay=True)

    def __call__(self, x: Tensor) -> Tensor:
        return F.rmsnorm(x, self.weight, self.eps)

    def residual(self, x: Tensor, a: Tensor) -> Tuple[Tensor, Tensor]:
        """(x + a, this norm of x + a) in one pass: a residual add and the pre-norm after it."""
        return F.add_rmsnorm(x, a, self.weight, self.eps)


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim), no_decay=True)
        self.bias = Parameter(np.zeros(dim), no_decay=True)

    def __call__(self, x: Tensor) -> Tensor:
        return F.layernorm(x, self.weight, self.bias, self.eps)
