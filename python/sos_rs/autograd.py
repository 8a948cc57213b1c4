"""Reverse-mode autograd: a tape of Rust forward/backward pairs, kept in Python.

Each differentiable op (see `functional.py`) runs its Rust forward, then records a `Node` holding
its inputs and a closure that maps the output gradient to input gradients with the Rust backward.
`Tensor.backward()` walks the nodes in reverse topological order. The tape lives in Python so
that Ctrl-C, debugging and new model code stay in Python, while every op call does a whole
batch of work in Rust with the GIL released (ARCHITECTURE.md gives the full reasoning).

Memory: backward frees the graph as it goes. Once a node's backward has run, its inputs and its
closure (the saved activations) are dropped and the walk lets go of the tensor, so each
activation is freed as soon as the last op that needs it has been differentiated, and the loss
tensor a caller still holds keeps nothing alive (a second backward through the same graph raises
`GraphFreedError`, as PyTorch does without retain_graph). A leaf's first gradient is adopted
without a copy; later ones (grad accumulation, a parameter used twice) are added into that
buffer in place.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from .errors import SosError

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


@contextlib.contextmanager
def _enable_grad() -> Iterator[None]:
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = prev


class GraphFreedError(SosError, RuntimeError):
    """backward reached a node whose saved tensors an earlier backward already freed."""


class Node:
    """One recorded op: its inputs and the function from output grad to input grads.

    `accumulate`, when given, is `backward` with the gradient that inputs[0] has already received
    from its other consumers as a second argument: it returns inputs[0]'s gradient with that one
    added (in the op's own pass, the bits of `add(prev, grad)`), saving the tape a separate add
    over both buffers (a residual stream feeding a norm)."""

    __slots__ = ("inputs", "backward", "accumulate", "name")

    def __init__(
        self, name: str, inputs: Sequence["Tensor"], backward: Callable, accumulate: Optional[Callable] = None
    ):
        self.name = name
        self.inputs = tuple(inputs)
        self.backward = backward
        self.accumulate = accumulate

    def release(self) -> None:
        """Drops the inputs and the closure (with every tensor it saved) once backward has used them."""
        self.inputs = ()
        self.backward = self._freed
        self.accumulate = None

    def _freed(self, _grad):
        raise GraphFreedError(
            f"backward through {self.name!r} a second time: the first backward freed its saved tensors "
            "(compute the loss again for another backward)"
        )


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
        # Root last: popping from the end walks consumers before producers, and lets go of each
        # tensor as soon as it is processed (with its node released, nothing else holds it).
        order = _topological(self)
        grads: dict[int, _core.Tensor] = {id(self): grad}
        while order:
            t = order.pop()
            g = grads.pop(id(t), None)
            node = t._node
            if g is None:
                if node is not None:
                    node.release()
                continue
            if node is None:
                if t.requires_grad:
                    if t.grad is None:
                        # A handle of its own (sharing the buffer, copy-on-write): a backward may
                        # hand the same object to several inputs, so the in-place add below must
                        # not write through an alias.
                        t.grad = g.reshape(list(g.shape))
                    else:
                        _core.add_(t.grad, g)
                continue
            first = node.inputs[0] if node.inputs else None
            prev0 = None
            if node.accumulate is not None and first is not None and all(i is not first for i in node.inputs[1:]):
                prev0 = grads.get(id(first))
            in_grads = node.backward(g) if prev0 is None else node.accumulate(g, prev0)
            for i, (inp, ig) in enumerate(zip(node.inputs, in_grads)):
                if ig is None or not inp.requires_grad:
                    continue
                prev = None if (i == 0 and prev0 is not None) else grads.get(id(inp))
                grads[id(inp)] = ig if prev is None else _core.add(prev, ig)
            del in_grads, g
            node.release()


def _topological(root: Tensor) -> list:
    """Tensors reachable from root, each before every tensor that consumes it (root last)."""
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
    return post


def record(
    name: str, out: _core.Tensor, inputs: Sequence[Tensor], backward: Callable, accumulate: Optional[Callable] = None
) -> Tensor:
    """Wraps an op's output, recording the node when any input needs a gradient (`accumulate`:
    see `Node`)."""
    if _grad_enabled and any(t.requires_grad for t in inputs):
        return Tensor(out, requires_grad=True, _node=Node(name, inputs, backward, accumulate))
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


def checkpoint(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn(x) without keeping fn's inner activations (activation recomputation): the forward runs
    unrecorded, and backward runs fn(x) again, recorded, and differentiates that copy. The same
    ops on the same inputs give the same bits, so gradients equal those of a plain fn(x) exactly
    (for a deterministic fn: no random draws). The parameters fn uses receive their gradients
    during that inner backward; only x is saved."""
    if not _grad_enabled:
        return fn(x)
    with no_grad():
        y = fn(x)

    def backward(dy):
        xi = Tensor(x.data, requires_grad=x.requires_grad)  # a leaf standing in for x
        with _enable_grad():
            yi = fn(xi)
        yi.backward(dy)
        return (xi.grad,)

    # Recorded even when x needs no gradient: fn's parameters do.
    return Tensor(y.data, requires_grad=True, _node=Node("checkpoint", (x,), backward))
