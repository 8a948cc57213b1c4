"""Documents stay apart (data.doc_mask): the dense model with the belt's positions and segments
against the PyTorch twin with RoPE at those positions and an explicit boolean block-diagonal causal
mask in scaled_dot_product_attention (a golden written by scripts/make_golden.py, and live where
torch is installed); a document's logits do not depend on any other document of its row; families
without document masks refuse them."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from sos_rs import DenseConfig, DenseLM
from sos_rs.errors import InvalidValueError, ShapeError
from tests.support.golden_cases import DOC_MASK_CASES, doc_mask_batch

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

SOURCES = [
    pytest.param("golden", id="golden"),
    pytest.param(
        "torch",
        id="torch-live",
        marks=pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed; the golden comparison still ran"),
    ),
]


def reference(name: str, source: str) -> dict:
    if source == "golden":
        with np.load(GOLDEN / f"{name}.npz") as z:
            return {k: z[k] for k in z.files}
    from scripts.make_golden import run_case

    return run_case(name)


def model_of(ref: dict) -> DenseLM:
    model = DenseLM(DenseConfig(**json.loads(str(ref["config"]))))
    model.load_state_dict({k[len("param/") :]: v for k, v in ref.items() if k.startswith("param/")})
    return model


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(DOC_MASK_CASES))
def test_doc_mask_matches_torch_block_diagonal_mask(name: str, source: str) -> None:
    ref = reference(name, source)
    model = model_of(ref)
    ids, targets, pos, seg = ref["ids"], ref["targets"], ref["positions"], ref["segments"]
    logits = model.forward(ids, positions=pos, segments=seg)
    d_logits = float(np.abs(logits.numpy() - ref["logits"]).max())
    loss = model.loss(ids, targets, positions=pos, segments=seg)
    loss.backward()
    report = {"logits": d_logits, "loss": abs(loss.item() - float(ref["loss"]))}
    for pname, p in model.named_parameters():
        want = ref[f"grad/{pname}"]
        report[pname] = float(np.abs(p.grad.numpy() - want).max()) / float(np.abs(want).max())
    print(f"\n[{name}/{source}] max |Δ| (gradients: relative): " + ", ".join(f"{k}={v:.2e}" for k, v in report.items()))
    assert d_logits <= 1e-4
    assert report["loss"] <= 1e-5
    for pname, _ in model.named_parameters():
        assert report[pname] <= 1e-4, pname
    # The mask matters: without it the logits of every row with several documents differ.
    plain = model(ids).numpy()
    for row, lens in enumerate(DOC_MASK_CASES[name][1]):
        gap = float(np.abs(plain[row] - logits.numpy()[row]).max())
        assert (gap > 1e-3) if len(lens) > 1 else (gap <= 1e-5), (row, gap)


def test_a_document_does_not_see_its_neighbours() -> None:
    cfg, lens = DOC_MASK_CASES["dense_doc_mask"]
    model = DenseLM(DenseConfig(**dict(cfg, sliding_window=7)))  # the window composes with segments
    ids, _, pos, seg = doc_mask_batch(cfg, lens)
    base = model.forward(ids, positions=pos, segments=seg).numpy()
    # Replace the tokens of one document in each multi-document row: only that document moves.
    other = ids.copy()
    changed = seg == 1
    other[changed] = (other[changed] + 7) % cfg["vocab_size"]
    moved = model.forward(other, positions=pos, segments=seg).numpy()
    diff = np.abs(moved - base).max(-1)  # [B, T]
    assert diff[changed].min() > 1e-4
    assert diff[~changed].max() == 0.0, "a document's logits moved with another document's tokens"
    # RoPE takes the given positions: restarting them is invisible within a document (scores
    # depend on i - j only), stretching them is not.
    stretched = model.forward(ids, positions=pos * 3, segments=seg).numpy()
    assert np.abs(stretched - base).max() > 1e-3
    # A document alone in a row (positions from 0) gives the logits it gets packed after others.
    row, start, n = 0, 26, 38  # the last document of row 0
    alone = model.forward(ids[row : row + 1, start:], positions=pos[row : row + 1, start:], segments=seg[:1, :n] * 0)
    assert np.abs(alone.numpy()[0] - base[row, start:]).max() <= 1e-5


def test_document_masks_are_checked() -> None:
    cfg, lens = DOC_MASK_CASES["dense_doc_mask"]
    model = DenseLM(DenseConfig(**cfg))
    ids, targets, pos, seg = doc_mask_batch(cfg, lens)
    with pytest.raises(InvalidValueError, match="both positions and segments"):
        model.loss(ids, targets, positions=pos)
    with pytest.raises(ShapeError, match="segments"):
        model.loss(ids, targets, positions=pos, segments=seg[:, :10])
    bad = seg.copy()
    bad[0, -1] = 0  # a segment id going back: documents must be contiguous
    with pytest.raises(InvalidValueError, match="must not decrease"):
        model.loss(ids, targets, positions=pos, segments=bad)


def test_families_without_document_masks_refuse_them() -> None:
    from sos_rs.models import FAMILIES, MoAConfig

    moa = FAMILIES["moa"](MoAConfig.tiny())
    assert not moa.supports_doc_mask and DenseLM.supports_doc_mask
    ids = np.zeros((1, 8), np.int64)
    with pytest.raises(InvalidValueError, match="does not take document masks"):
        moa.loss(ids, ids, positions=ids, segments=ids)
    with pytest.raises(InvalidValueError, match="does not take document masks"):
        moa.eval_loss(ids, ids, positions=ids, segments=ids)
