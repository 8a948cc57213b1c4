"""Helpers shared by the op modules."""

from __future__ import annotations

import numpy as np

from .. import _core


def _scalar(x: float) -> _core.Tensor:
    return _core.Tensor.full([], x)


def _as_ids(ids) -> np.ndarray:
    if isinstance(ids, (list, tuple)):
        ids = np.asarray(ids, dtype=np.int64)
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"token ids must be a numpy integer array, got {type(ids).__name__}")
    return ids
