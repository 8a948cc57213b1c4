"""Modules: the parameter tree and the layers every model family is built from."""

from .layers import Embedding, LayerNorm, Linear, RMSNorm
from .module import Buffer, Module, ModuleList, Parameter
from .transformer import CausalSelfAttention, LayerKVCache, SwiGLUMLP

__all__ = [
    "Buffer",
    "CausalSelfAttention",
    "Embedding",
    "LayerKVCache",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleList",
    "Parameter",
    "RMSNorm",
    "SwiGLUMLP",
]
