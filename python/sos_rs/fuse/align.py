"""Hidden-space alignment of two models through the tokens their vocabularies share.

Rows of the embedding tables for the same token string are paired, and W [D_donor, D_host] is the
orthogonal Procrustes solution of min ‖E_donor W − E_host‖_F over those rows: with
U Σ Vᵀ = svd(E_donorᵀ E_host), W = U Vᵀ. When the widths differ the same formula (thin SVD) gives
the semi-orthogonal least-squares map (W Wᵀ = I when D_donor ≤ D_host, Wᵀ W = I otherwise).
No scale is fitted: a rotation keeps RMS norms, which is what lets a grafted attention read the
host's normalised stream. The residual ‖E_donor W − E_host‖_F / ‖E_host‖_F is reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np


class FuseError(ValueError):
    """Two models cannot be fused as asked; the message says why."""


@dataclass
class Alignment:
    map: np.ndarray
    """W [D_donor, D_host], float64: a donor row vector x maps to x·W in the host's space."""
    shared: int
    """Tokens both vocabularies hold (matched by string)."""
    residual: float
    """‖E_donor W − E_host‖_F / ‖E_host‖_F over the shared rows."""


def shared_rows(host_vocab: Dict[str, int], donor_vocab: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(host ids, donor ids) of the token strings both vocabularies hold, in host-id order."""
    pairs = sorted((i, donor_vocab[s]) for s, i in host_vocab.items() if s in donor_vocab)
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    h, d = zip(*pairs)
    return np.asarray(h, np.int64), np.asarray(d, np.int64)


def align_embeddings(host_emb: np.ndarray, donor_emb: np.ndarray, host_ids: np.ndarray, donor_ids: np.ndarray):
    """The Alignment of the donor's embedding rows `donor_ids` onto the host's rows `host_ids`.
    host_emb [V_h, D_h], donor_emb [V_d, D_d]."""
    dd, dh = donor_emb.shape[1], host_emb.shape[1]
    n = len(host_ids)
    if n < max(dd, dh):
        raise FuseError(f"the vocabularies share {n} tokens; aligning widths {dd} -> {dh} needs at least {max(dd, dh)}")
    a = donor_emb[donor_ids].astype(np.float64)  # [n, D_d]
    b = host_emb[host_ids].astype(np.float64)  # [n, D_h]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FuseError("an embedding table holds NaN or inf")
    u, _, vt = np.linalg.svd(a.T @ b, full_matrices=False)  # [D_d, r], [r, D_h]
    w = u @ vt
    residual = float(np.linalg.norm(a @ w - b) / max(np.linalg.norm(b), 1e-30))
    return Alignment(w, n, residual)
