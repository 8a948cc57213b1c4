"""Ops that only move rows: reshape, row gathers and concatenation."""

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


def concat_rows(parts: Sequence[Tensor]) -> Tensor:
    """[M_i, D] pieces stacked into [Σ M_i, D]."""
    sizes = [p.shape[0] for p in parts]
    return record(
        "concat_rows",
        _core.concat_rows([p.data for p in parts]),
        tuple(parts),
        lambda d: tuple(_core.split_rows(d, sizes)),
    )
