"""Checkpoints: atomic writes, verification, skipping broken ones, a full disk mid-save; a
checkpoint is untrusted input (schema, digest of state.json, only the expected files opened)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib

import numpy as np
import pytest

from sos_rs.models import DenseConfig
from sos_rs.train import checkpoint as ckpt
from sos_rs.train.config import from_dict


def state(**over) -> dict:
    """A state.json body of the shape the trainer writes."""
    cfg = from_dict({"data": {"dir": "d"}, "run": {"out": "o"}})
    base = {
        "model_family": "dense",
        "model_config": dataclasses.asdict(DenseConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2)),
        "train_config": cfg.to_dict(),
        "optimizer_step": 0,
        "belt": {"cursor": [0, 0, 0]},
        "rng": {"seed": 0},
        "curriculum": None,
        "val_loss": None,
        "best_val_loss": None,
        "elapsed_s": 1.5,
        "versions": {"sos_rs": "0"},
        "tokenizer": "tokenizer.json",
        "eot_id": 0,
    }
    return {**base, **over}


def arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def test_round_trip_and_listing(tmp_path):
    for step in (10, 20, 30):
        ckpt.save(tmp_path, step, arrays(step), {"m.b": np.zeros(5, np.float32)}, state(note=step))
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000010", "step-00000020", "step-00000030"]
    model, opt, st = ckpt.load(tmp_path / "step-00000020")
    np.testing.assert_array_equal(model["a.weight"], arrays(20)["a.weight"])
    assert st["step"] == 20 and st["note"] == 20
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "state", "array"])
def test_damaged_checkpoint_is_reported_and_skipped(tmp_path, damage):
    ckpt.save(tmp_path, 1, arrays(1), {}, state())
    ckpt.save(tmp_path, 2, arrays(2), {}, state())
    target = tmp_path / "step-00000002" / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    elif damage == "array":
        (tmp_path / "step-00000002" / "state.json").write_text("[1, 2]")
    else:
        (tmp_path / "step-00000002" / "state.json").write_text("{not json")
    messages = []
    assert ckpt.latest_valid(tmp_path, log=messages.append) == tmp_path / "step-00000001"
    assert len(messages) == 1 and "step-00000002" in messages[0], messages
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(tmp_path / "step-00000002")


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save(tmp_path, 1, arrays(1), {}, state())
    real = ckpt.write_safetensors

    def full_disk(path, tensors):
        if path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors)

    monkeypatch.setattr(ckpt, "write_safetensors", full_disk)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device"):
        ckpt.save(tmp_path, 2, arrays(2), {"m": np.zeros(2, np.float32)}, state())
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000001"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.verify(tmp_path / "step-00000001")["step"] == 1


def test_prune_keeps_last_k_and_best(tmp_path):
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.2)]:
        ckpt.save(tmp_path, step, arrays(step), {}, state(val_loss=loss))
    ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_steps(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert json.loads((tmp_path / "step-00000002" / "state.json").read_text())["val_loss"] == 1.0


def _rewrite(folder: pathlib.Path, edit, redigest: bool) -> None:
    """Applies `edit` to the parsed state.json; with `redigest` the digest is recomputed, so only
    the schema (not the digest) stands between the edit and a load."""
    path = folder / "state.json"
    st = json.loads(path.read_text())
    edit(st)
    if redigest and "state_sha256" in st:
        st["state_sha256"] = ckpt.state_digest(st)
    path.write_text(json.dumps(st))


def _del_bytes(st):
    del st["files"]["model.safetensors"]["bytes"]


def _listing(name, nbytes=0):
    def edit(st):
        meta = st["files"].pop("model.safetensors")
        st["files"][name] = dict(meta, bytes=nbytes)

    return edit


MUTATIONS = {
    "step edited (valid JSON)": (lambda st: st.update(step=1), False, "does not match its recorded digest"),
    "digest removed": (lambda st: st.pop("state_sha256"), False, "lacks its digest"),
    "missing key": (lambda st: st.pop("optimizer_step"), True, "missing keys: optimizer_step"),
    "missing bytes": (_del_bytes, True, "files = "),
    "step of wrong type": (lambda st: st.update(step="2"), True, "step = '2' is not an integer >= 0"),
    "negative step": (lambda st: st.update(step=-1), True, "step = -1"),
    "bool optimizer_step": (lambda st: st.update(optimizer_step=True), True, "optimizer_step = true"),
    "sha256 not hex": (lambda st: st["files"]["model.safetensors"].update(sha256="zz"), True, "files = "),
    "parent path listed": (_listing("../../x"), True, "files = "),
    "device listed": (_listing("/dev/zero"), True, "files = "),
    "extra file listed": (lambda st: st["files"].update(x={"bytes": 0, "sha256": "0" * 64}), True, "files = "),
    "unknown family": (lambda st: st.update(model_family="nope"), True, "unknown model family 'nope'"),
    "bad model config": (lambda st: st["model_config"].update(d_model="x"), True, "model_config does not build"),
    "bad train config": (lambda st: st["train_config"]["run"].update(steps=0), True, "train_config is invalid"),
    "format missing": (lambda st: st.clear() or st.update(x=[1]), False, "unsupported checkpoint format null"),
    "future format": (lambda st: st.update(format_version=99), True, "unsupported checkpoint format 99"),
    "elapsed NaN": (lambda st: st.update(elapsed_s=float("nan")), True, "elapsed_s = NaN"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_malformed_state_json_is_reported_and_skipped(tmp_path, name):
    edit, redigest, needle = MUTATIONS[name]
    ckpt.save(tmp_path, 1, arrays(1), {}, state())
    ckpt.save(tmp_path, 2, arrays(2), {}, state())
    _rewrite(tmp_path / "step-00000002", edit, redigest)
    messages = []
    assert ckpt.latest_valid(tmp_path, log=messages.append) == tmp_path / "step-00000001"
    assert len(messages) == 1 and "step-00000002" in messages[0] and needle in messages[0], messages
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(tmp_path / "step-00000002")
    found = ckpt.load_latest(tmp_path, lambda folder, m, o, st: (folder, st["step"]), log=messages.append)
    assert found == (tmp_path / "step-00000001", 1)


def test_only_the_expected_files_inside_the_folder_are_opened(tmp_path, monkeypatch):
    """A listing of ../../x or /dev/zero (bytes 0, digest recomputed) is refused before any file
    but state.json is opened; links to devices in place of the weight files are never opened."""
    ckpt.save(tmp_path / "ck", 1, arrays(1), {}, state())
    folder = tmp_path / "ck" / "step-00000001"
    opened = []
    real_open = os.open

    def spy(path, *a, **k):
        opened.append(os.path.abspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(ckpt.os, "open", spy)
    allowed = {str(folder / n) for n in ("state.json", *ckpt.WEIGHT_FILES)}
    for target in ("../../x", "/dev/zero"):
        _rewrite(folder, _listing(target), redigest=True)
        with pytest.raises(ckpt.CheckpointError, match="files = "):
            ckpt.verify(folder)
        assert set(opened) <= {str(folder / "state.json")}, opened
        ckpt.save(tmp_path / "ck", 1, arrays(1), {}, state())  # restore
        opened.clear()
    weights = folder / "model.safetensors"
    weights.unlink()
    weights.symlink_to("/dev/zero")
    opened.clear()
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors is not a regular file"):
        ckpt.load(folder)
    assert set(opened) <= allowed and str(weights) not in opened, opened
    (folder / "state.json").rename(folder / "real.json")
    (folder / "state.json").symlink_to(folder / "real.json")
    with pytest.raises(ckpt.CheckpointError, match="state.json is not a regular file"):
        ckpt.verify(folder)


def test_oversized_state_json_is_refused_unread(tmp_path):
    ckpt.save(tmp_path, 1, arrays(1), {}, state())
    path = tmp_path / "step-00000001" / "state.json"
    with open(path, "r+b") as f:
        f.truncate(ckpt.MAX_STATE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ckpt.CheckpointError, match="more than the"):
        ckpt.verify(tmp_path / "step-00000001")


def test_weights_of_the_wrong_dtype_or_garbage_are_refused(tmp_path):
    ckpt.save(tmp_path, 1, {"a": np.zeros(3, np.float64)}, {}, state())
    with pytest.raises(ckpt.CheckpointError, match="non-float32"):
        ckpt.load(tmp_path / "step-00000001")
    folder = tmp_path / "step-00000001"
    (folder / "model.safetensors").write_bytes(b"\xff" * 40)
    garbage = {"bytes": 40, "sha256": __import__("hashlib").sha256(b"\xff" * 40).hexdigest()}
    _rewrite(folder, lambda st: st["files"].update({"model.safetensors": garbage}), redigest=True)
    with pytest.raises(ckpt.CheckpointError, match="cannot read model.safetensors"):
        ckpt.load(folder)


def test_format_1_checkpoints_load_with_a_note(tmp_path):
    """Checkpoints of the previous format (no state digest) are loaded, with a note saying that
    edits to their state.json cannot be detected; their fields are still checked."""
    ckpt.save(tmp_path, 1, arrays(1), {}, state())
    folder = tmp_path / "step-00000001"

    def to_v1(st):
        st.pop("state_sha256")
        st["format_version"] = 1
        st["tokenizer"] = "/abs/path/tokenizer.json"

    _rewrite(folder, to_v1, redigest=False)
    notes = []
    model, _, st = ckpt.load(folder, log=notes.append)
    np.testing.assert_array_equal(model["b"], arrays(1)["b"])
    assert st["step"] == 1 and len(notes) == 1 and "format-1" in notes[0] and "cannot be detected" in notes[0]
    _rewrite(folder, lambda st: st.pop("belt"), redigest=False)
    with pytest.raises(ckpt.CheckpointError, match="missing keys: belt"):
        ckpt.load(folder, log=notes.append)


def test_save_refuses_a_state_outside_the_schema(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="missing keys"):
        ckpt.save(tmp_path, 1, arrays(1), {}, {"note": 1})
    assert not list(tmp_path.iterdir())


def test_streamed_safetensors_read_back_by_the_safetensors_package(tmp_path):
    """write_safetensors (one tensor at a time, lazily fetched) gives a file the safetensors
    package reads back exactly, and fetches each lazy array once, when it is written."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    arrays = {"b": rng.standard_normal((3, 5)).astype(np.float32), "a": rng.standard_normal(7).astype(np.float32)}
    arrays["scalar"] = np.float32(2.5).reshape(())
    fetched = []
    lazy = ckpt.LazyArrays({k: v.shape for k, v in arrays.items()}, lambda k: fetched.append(k) or arrays[k])
    assert fetched == []
    ckpt.write_safetensors(tmp_path / "x.safetensors", lazy)
    back = load_file(str(tmp_path / "x.safetensors"))
    assert sorted(fetched) == sorted(arrays) and len(fetched) == len(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
    with pytest.raises(ckpt.CheckpointError, match="header says"):
        ckpt.write_safetensors(tmp_path / "y.safetensors", ckpt.LazyArrays({"a": (2,)}, lambda k: arrays["a"]))
