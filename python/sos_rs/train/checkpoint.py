"""Crash-proof checkpoints: one folder per step with model.safetensors, optimizer.safetensors
and state.json. A folder is written under a temporary name beside its target, every file and
the folder are fsynced, then it is renamed into place, so a checkpoint either exists whole or
not at all. state.json records each file's size and SHA-256; a checkpoint that fails those checks
is reported and skipped, never loaded. No pickle anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
from typing import Dict, Optional, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

FORMAT_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder and the cause."""


def _fsync_file(path: pathlib.Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


REQUIRED_FILES = {"model.safetensors", "optimizer.safetensors"}


def save(
    root: pathlib.Path,
    step: int,
    model: Dict[str, np.ndarray],
    optimizer: Dict[str, np.ndarray],
    state: dict,
    extra: Optional[Dict[str, Dict[str, np.ndarray]]] = None,
) -> pathlib.Path:
    """Writes root/step-XXXXXXXX atomically and returns its path. `extra` adds safetensors files
    by name (the trainer's rollback snapshot), listed and verified like the others. On any
    failure (a full disk, say) the temporary folder is removed, earlier checkpoints are
    untouched, and CheckpointError says what happened."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(model, str(tmp / "model.safetensors"))
        save_file(optimizer, str(tmp / "optimizer.safetensors"))
        for name, arrays in (extra or {}).items():
            save_file(arrays, str(tmp / name))
        files = {}
        for name in ("model.safetensors", "optimizer.safetensors", *(extra or {})):
            _fsync_file(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        state = dict(state, step=step, format_version=FORMAT_VERSION, files=files)
        with open(tmp / "state.json", "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step after resuming: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final}: {e.strerror or e} — earlier checkpoints are intact"
        ) from e
    return final


def verify(folder: pathlib.Path) -> dict:
    """Returns the checkpoint's state if every file is present with the recorded size and hash."""
    state_path = folder / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: state.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder}: state.json is corrupt ({e})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: unsupported checkpoint format {state.get('format_version')!r}")
    for name, meta in state.get("files", {}).items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{folder}: {name} is missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(f"{folder}: {name} has {size} bytes, expected {meta['bytes']} (truncated?)")
        if _sha256(path) != meta["sha256"]:
            raise CheckpointError(f"{folder}: {name} does not match its recorded SHA-256 (corrupt)")
    if not REQUIRED_FILES <= set(state.get("files", {})):
        raise CheckpointError(f"{folder}: state.json does not list both weight files")
    return state


def load(folder: pathlib.Path) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], dict]:
    state = verify(folder)
    try:
        return load_file(str(folder / "model.safetensors")), load_file(str(folder / "optimizer.safetensors")), state
    except Exception as e:  # safetensors raises its own error types on malformed files
        raise CheckpointError(f"{folder}: cannot read weights: {e}") from None


def load_extra(folder: pathlib.Path, name: str) -> Optional[Dict[str, np.ndarray]]:
    """An extra file of a verified checkpoint (see `save`), or None when it has none."""
    if not (folder / name).exists():
        return None
    try:
        return load_file(str(folder / name))
    except Exception as e:  # safetensors raises its own error types on malformed files
        raise CheckpointError(f"{folder}: cannot read {name}: {e}") from None


def list_steps(root: pathlib.Path) -> list:
    """Checkpoint folders under root, oldest first (temporary folders are not listed)."""
    if not root.exists():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_valid(root: pathlib.Path, log=None) -> Optional[pathlib.Path]:
    """The newest checkpoint that verifies; broken ones are reported through `log` and skipped."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for folder in reversed(list_steps(root)):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            log(f"skipping checkpoint: {e}")
    return None


def prune(root: pathlib.Path, keep_last: int) -> None:
    """Removes all but the newest `keep_last` checkpoints and the best one (lowest val_loss),
    plus temporary folders left by a crash."""
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    steps = list_steps(root)
    best, best_loss = None, float("inf")
    for folder in steps:
        try:
            loss = json.loads((folder / "state.json").read_text()).get("val_loss")
        except (OSError, json.JSONDecodeError):
            continue
        if loss is not None and loss < best_loss:
            best, best_loss = folder, loss
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    if best is not None:
        keep.add(best)
    for folder in steps:
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
