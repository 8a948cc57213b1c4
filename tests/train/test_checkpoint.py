"""Checkpoints: atomic writes, verification, skipping broken ones, a full disk mid-save."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from sos_rs.train import checkpoint as ckpt


def arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def test_round_trip_and_listing(tmp_path):
    for step in (10, 20, 30):
        ckpt.save(tmp_path, step, arrays(step), {"m.b": np.zeros(5, np.float32)}, {"note": step})
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000010", "step-00000020", "step-00000030"]
    model, opt, state = ckpt.load(tmp_path / "step-00000020")
    np.testing.assert_array_equal(model["a.weight"], arrays(20)["a.weight"])
    assert state["step"] == 20 and state["note"] == 20
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "state"])
def test_damaged_checkpoint_is_reported_and_skipped(tmp_path, damage):
    ckpt.save(tmp_path, 1, arrays(1), {}, {})
    ckpt.save(tmp_path, 2, arrays(2), {}, {})
    target = tmp_path / "step-00000002" / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (tmp_path / "step-00000002" / "state.json").write_text("{not json")
    messages = []
    assert ckpt.latest_valid(tmp_path, log=messages.append) == tmp_path / "step-00000001"
    assert len(messages) == 1 and "step-00000002" in messages[0], messages
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(tmp_path / "step-00000002")


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save(tmp_path, 1, arrays(1), {}, {})
    real = ckpt.save_file

    def full_disk(tensors, path, *a, **k):
        if path.endswith("optimizer.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device"):
        ckpt.save(tmp_path, 2, arrays(2), {"m": np.zeros(2, np.float32)}, {})
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000001"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.verify(tmp_path / "step-00000001")["step"] == 1


def test_prune_keeps_last_k_and_best(tmp_path):
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.2)]:
        ckpt.save(tmp_path, step, arrays(step), {}, {"val_loss": loss})
    ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert json.loads((tmp_path / "step-00000002" / "state.json").read_text())["val_loss"] == 1.0
