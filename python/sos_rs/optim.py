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
        """One update from the current `.grad`s (parameters without a grad are left alone): one
        Rust call over all parameters (`_core.adamw_multi`)."""
        self._update(lr, None)

    def clip_and_step(self, max_norm: float, lr: Optional[float] = None) -> float:
        """`clip_grad_norm(params, max_norm)` then `step(lr)`, fused into one Rust call and one
        pass over the gradients (the same bits, the grads left clipped); returns the norm before
        clipping. max_norm <= 0 clips nothing (the norm is still returned)."""
        return self._update(lr, max_norm if max_norm > 0 else float("inf"))

    def _update(self, lr: Optional[float], max_norm: Optional[float]) -> float:
        self.step_count += 1
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return 0.0
        ps = [self.params[i] for i in live]
        grads = [p.grad for p in ps if p.grad is not None]
        if len({id(g) for g in grads}) < len(ps):
            # Two parameters hold the same gradient object (an op handed one tensor to both):
            # the multi-tensor call borrows each gradient mutably once, so go tensor by tensor.
            norm = clip_grad_norm(ps, max_norm) if max_norm is not None else 0.0
            for i, p, g in zip(live, ps, grads):
                wd = self.weight_decay if self.decays(p) else 0.0
                _core.adamw_step(p.data, g, self.m[i], self.v[i], lr, b1, b2, self.eps, wd, self.step_count)
            return norm
        return _core.adamw_multi(
            [p.data for p in ps],
            grads,
            [self.m[i] for i in live],
            [self.v[i] for i in live],
            [self.weight_decay if self.decays(p) else 0.0 for p in ps],
            lr,
            b1,
            b2,
            self.eps,
            self.step_count,
            max_norm,
        )

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
