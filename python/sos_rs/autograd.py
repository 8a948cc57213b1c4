"""Reverse-mode autograd: a tape of Rust forward/backward pairs, kept in Python.

Each differentiable op (see `functional.py`) runs its Rust forward, then records a `Node` holding
its inputs and a closure that maps the output gradient to input gradients with the Rust backward.
`Tensor.backward()` walks the nodes in reverse topological order. The tape lives in Python so
that Ctrl-C, debugging and new model code stay in Python, while every op call does a whole
batch of work in Rust with the GIL released (ARCHITECTURE.md gives the full reasoning).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from . import _core

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Inside this block ops record nothing (inference, optimizer updates)."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = prev


def grad_enabled() -> bool:
    return _grad_enabled


class Node:
    """One recorded op: its inputs and the function from output grad to input grads."""

    __slots__ = ("inputs", "backward", "name")

    def __init__(self, name: str, inputs: Sequence["Tensor"], backward: Callable):
        self.name = name
        self.inputs = tuple(inputs)
        self.backward = backward


class Tensor:
    """A float32 tensor with optional gradient tracking. `data` is the Rust-owned `_core.Tensor`."""

    __slots__ = ("data", "requires_grad", "grad", "_node", "__weakref__")

    def __init__(self, data: _core.Tensor, requires_grad: bool = False, _node: Optional[Node] = None):
        if not isinstance(data, _core.Tensor):
            raise TypeError(f"Tensor wraps a sos_rs._core.Tensor; use sos_rs.tensor(array) for {type(data).__name__}")
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Optional[_core.Tensor] = None
        self._node = _node

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def numpy(self) -> np.ndarray:
        return self.data.numpy()

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, requires_grad={self.requires_grad})"

    def backward(self, grad: Optional[_core.Tensor] = None) -> None:
        """Accumulates d(self)/d(leaf) into `.grad` of every leaf that requires grad.
        Without `grad`, self must hold one element (a loss) and the seed is 1."""
        if grad is None:
            if self.data.numel() != 1:
                from .errors import ShapeError

                raise ShapeError(f"backward: implicit gradient needs a one-element tensor, got shape {self.shape}")
            grad = _core.Tensor.full(list(self.shape), 1.0)
        order = _topological(self)
        grads: dict[int, _core.Tensor] = {id(self): grad}
        for t in order:
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t._node is None:
                if t.requires_grad:
                    if t.grad is None:
                        t.grad = g
                    else:
                        t.grad = _core.add(t.grad, g)
                continue
            in_grads = t._node.backward(g)
            for inp, ig in zip(t._node.inputs, in_grads):
                if ig is None or not inp.requires_grad:
                    continue
                prev = grads.get(id(inp))
                grads[id(inp)] = ig if prev is None else _core.add(prev, ig)


def _topological(root: Tensor) -> list:
    """Tensors reachable from root, each after every tensor that consumes it (root first)."""
    seen: set[int] = set()
    post: list = []
    stack = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            post.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for inp in t._node.inputs:
                if inp.requires_grad and id(inp) not in seen:
                    stack.append((inp, False))
    post.reverse()
    return post


def record(name: str, out: _core.Tensor, inputs: Sequence[Tensor], backward: Callable) -> Tensor:
    """Wraps an op's output, recording the node when any input needs a gradient."""
    if _grad_enabled and any(t.requires_grad for t in inputs):
        return Tensor(out, requires_grad=True, _node=Node(name, inputs, backward))
    return Tensor(out)


def tensor(array, requires_grad: bool = False) -> Tensor:
    """A Tensor from array-like data. Python lists and float64 arrays are converted to float32
    (a documented conversion); integer and other dtypes raise DTypeError; NaN/inf raise
    InvalidValueError. Non-contiguous arrays are copied."""
    if isinstance(array, (list, tuple, float, int)):
        array = np.asarray(array, dtype=np.float32)
    elif isinstance(array, np.ndarray) and array.dtype == np.float64:
        array = array.astype(np.float32)
    return Tensor(_core.Tensor(array), requires_grad=requires_grad)
