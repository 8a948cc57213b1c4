"""AdamW (fused Rust kernel, in place) and global gradient-norm clipping."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from . import _core
from .nn.module import Parameter


class AdamW:
    """PyTorch-equivalent AdamW. Parameters flagged `no_decay` (norms, embeddings, biases) and
    1-D parameters get no weight decay."""

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        self.params = list(params)
        if not self.params:
            raise ValueError("AdamW: no parameters to optimise")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.step_count = 0
        self.m = [_core.Tensor.zeros(list(p.shape)) for p in self.params]
        self.v = [_core.Tensor.zeros(list(p.shape)) for p in self.params]

    def decays(self, p: Parameter) -> bool:
        return not getattr(p, "no_decay", False) and p.ndim >= 2

    def step(self, lr: Optional[float] = None) -> None:
        """One update from the current `.grad`s (parameters without a grad are left alone)."""
        self.step_count += 1
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            wd = self.weight_decay if self.decays(p) else 0.0
            _core.adamw_step(p.data, p.grad, m, v, lr, b1, b2, self.eps, wd, self.step_count)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def clip_grad_norm(params: Sequence[Parameter], max_norm: float) -> float:
    """Scales all grads so their global L2 norm is at most max_norm; returns the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return _core.clip_grad_norm(grads, max_norm)


def grad_norm(params: Sequence[Parameter]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return _core.global_norm(grads) if grads else 0.0
