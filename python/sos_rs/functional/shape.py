"""Ops that only move rows: reshape, row gathers, their adjoint (scatter-add) and concatenation."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _core
from ..autograd import Tensor, record


def reshape(x: Tensor, shape: Sequence[int]) -> Tensor:
    old = list(x.shape)
    return record("reshape", x.data.reshape(list(shape)), (x,), lambda dy: (dy.reshape(old),))


def gather_rows(x: Tensor, rows: np.ndarray) -> Tensor:
    """x[rows] for x [N, D] -> [M, D]"""
    n = x.shape[0]
    return record(
        "gather_rows",
        _core.gather_rows_forward(x.data, rows),
        (x,),
        lambda d: (_core.gather_rows_backward(d, rows, n),),
    )


def scatter_add_rows(x: Tensor, rows: np.ndarray, n: int) -> Tensor:
    """out[r] = Σ_{m: rows[m] = r} x[m] for x [M, D] -> [n, D]: the adjoint of `gather_rows`,
    so its forward is gather_rows' Rust backward and its backward is gather_rows' forward.
    Each output row sums its inputs in ascending m, so the bits do not depend on threads."""
    return record(
        "scatter_add_rows",
        _core.gather_rows_backward(x.data, rows, n),
        (x,),
        lambda d: (_core.gather_rows_forward(d, rows),),
    )


def concat_rows(parts: Sequence[Tensor]) -> Tensor:
    """[M_i, D] pieces stacked into [Σ M_i, D]."""
    sizes = [p.shape[0] for p in parts]
    return record(
        "concat_rows",
        _core.concat_rows([p.data for p in parts]),
        tuple(parts),
        lambda d: tuple(_core.split_rows(d, sizes)),
    )
