"""`sos train` with data.doc_mask = true: the trainer hands the belt's positions and segments to the
dense model (training and validation), and configurations that cannot keep documents apart are
refused before training."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from sos_rs.train.config import ConfigError, from_dict
from tests.train.test_trainer import SOS, corpus, write_config  # noqa: F401  (corpus: a fixture)


def test_train_with_doc_mask(corpus, tmp_path):  # noqa: F811
    runs = {}
    for mask in (False, True):
        cfg = write_config(
            tmp_path / f"c{mask}.toml", corpus, tmp_path / f"run{mask}", steps=6, eval_every=3, eval_batches=2
        )
        subprocess.run(
            SOS + ["train", str(cfg), "--set", f"data.doc_mask={str(mask).lower()}"],
            check=True,
            capture_output=True,
            text=True,
        )
        records = [json.loads(x) for x in (tmp_path / f"run{mask}" / "metrics.jsonl").read_text().splitlines()]
        runs[mask] = records
    losses = {m: [r["loss"] for r in recs if "loss" in r] for m, recs in runs.items()}
    vals = {m: [r["val_loss"] for r in recs if "val_loss" in r] for m, recs in runs.items()}
    assert len(losses[True]) == 6 and all(np.isfinite(losses[True]))
    assert len(vals[True]) == 2
    # Rows of this corpus pack several documents, so the masks change the first step's loss.
    assert losses[True][0] != losses[False][0]
    assert vals[True][-1] != vals[False][-1]


def base_config(**data):
    return {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2}, "data": {"dir": "x", **data}, "run": {"out": "y"}}


def test_doc_mask_is_refused_where_it_cannot_apply():
    assert from_dict(base_config(doc_mask=True)).data.doc_mask is True
    assert from_dict(base_config()).data.doc_mask is False
    raw = base_config(doc_mask=True)
    raw["model"] = {"family": "moa", "d_model": 32, "n_layers": 1, "n_heads": 2}
    with pytest.raises(ConfigError, match="does not take document masks"):
        from_dict(raw)
    with pytest.raises(ConfigError, match="data.doc_mask"):
        from_dict(base_config(doc_mask="sometimes"))
