"""Crash-proof, self-verifying checkpoints: one folder per step with model.safetensors,
optimizer.safetensors and state.json. A folder is written under a temporary name beside its
target, every file and the folder are fsynced, then it is renamed into place, so a checkpoint
either exists whole or not at all.

A checkpoint is untrusted input. state.json records each weight file's size and SHA-256 and
carries `state_sha256`, the SHA-256 of its own canonical JSON (sorted keys, no spaces) without
that key, so an edit that leaves valid JSON (step 1500 -> 1499) is caught. Every field is checked
against `SCHEMA` before anything else is read; only `state.json`, `model.safetensors`,
`optimizer.safetensors` inside the folder are ever opened, each only if it is a regular file (not
a link, device or pipe) of the recorded size. Weights are hashed and parsed from the same bytes.
Any failure raises CheckpointError; `latest_valid` reports it and moves on to an older one.

Format 1 (sos_rs before state digests) is still loaded: its fields are checked, and a note says
that edits to its state.json cannot be detected. No pickle anywhere."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import stat
import sys
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
from safetensors.numpy import load as load_bytes

FORMAT_VERSION = 2
LEGACY_FORMATS = (1,)
STEP_DIR = re.compile(r"^step-(\d{8})$")
WEIGHT_FILES = ("model.safetensors", "optimizer.safetensors")
# Files a checkpoint may add (the trainer's rollback snapshot); listed and verified like the weights.
OPTIONAL_FILES = ("rollback.safetensors",)
MAX_STATE_BYTES = 16 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def state_digest(state: dict) -> str:
    """SHA-256 of the canonical JSON of `state` without its `state_sha256` key."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- the schema of state.json ------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _files_ok(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(WEIGHT_FILES) <= set(v) <= set(WEIGHT_FILES + OPTIONAL_FILES)
        and all(
            isinstance(m, dict)
            and set(m) == {"bytes", "sha256"}
            and _is_int(m["bytes"])
            and m["bytes"] >= 0
            and isinstance(m["sha256"], str)
            and SHA256.match(m["sha256"]) is not None
            for m in v.values()
        )
    )


def _model_config_ok(state: dict) -> Optional[str]:
    """None when model_config builds the family's config, else why not."""
    from ..models import get_family

    try:
        get_family(state["model_family"]).config_class(**state["model_config"])
    except (TypeError, ValueError, ArithmeticError) as e:
        return f"model_config does not build a {state['model_family']!r} config ({e})"
    return None


def _train_config_ok(state: dict) -> Optional[str]:
    from .config import ConfigError, from_dict

    try:
        from_dict(state["train_config"])
    except ConfigError as e:
        return f"train_config is invalid ({e})"
    return None


def _curriculum_ok(v: Any) -> bool:
    from .curriculum import curriculum_state_ok

    return curriculum_state_ok(v)


def _governor_ok(v: Any) -> bool:
    from .governor import governor_state_ok

    return governor_state_ok(v)


# key -> (required, check, what is expected)
SCHEMA: Dict[str, Tuple[bool, Callable[[Any], bool], str]] = {
    "format_version": (True, lambda v: _is_int(v) and v in (FORMAT_VERSION, *LEGACY_FORMATS), "a known format"),
    "state_sha256": (False, lambda v: isinstance(v, str) and SHA256.match(v) is not None, "64 hex digits"),
    "step": (True, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "files": (True, _files_ok, f"{' and '.join(WEIGHT_FILES)} (optionally {OPTIONAL_FILES[0]}), with bytes and sha256"),
    "model_family": (True, lambda v: isinstance(v, str), "a model family name"),
    "model_config": (True, lambda v: isinstance(v, dict), "a table"),
    "train_config": (True, lambda v: isinstance(v, dict), "a table"),
    "optimizer_step": (True, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "belt": (True, lambda v: isinstance(v, dict), "a table (the data cursor)"),
    "rng": (True, lambda v: isinstance(v, dict), "a table"),
    "curriculum": (
        False,
        lambda v: _curriculum_ok(v),
        "null or the curriculum state (stage, history, plateau, grown, config)",
    ),
    "governor": (False, lambda v: _governor_ok(v), "null or the governor state (ema, last, tau, ..., readings)"),
    "val_loss": (True, lambda v: v is None or _is_num(v), "null or a number"),
    "best_val_loss": (True, lambda v: v is None or _is_num(v), "null or a number"),
    "elapsed_s": (True, lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "a number >= 0"),
    "versions": (True, lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "a table"),
    "tokenizer": (True, lambda v: isinstance(v, str), "a path"),
    "eot_id": (True, lambda v: v is None or (_is_int(v) and v >= 0), "null or an integer >= 0"),
    "data_dirs": (False, lambda v: isinstance(v, dict), "a table"),
}


def validate_state(state: Any, where: str = "state.json") -> None:
    """Raises CheckpointError unless `state` has every required field of SCHEMA with the right
    type and range, and its model and training configs build. Unknown extra keys are ignored."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(state).__name__}")
    missing = sorted(k for k, (required, _, _) in SCHEMA.items() if required and k not in state)
    if missing:
        raise CheckpointError(f"{where}: missing keys: {', '.join(missing)}")
    for key, (_, check, what) in SCHEMA.items():
        if key in state and not check(state[key]):
            raise CheckpointError(f"{where}: {key} = {_short(state[key])} is not {what}")
    for problem in (_model_config_ok(state), _train_config_ok(state)):
        if problem:
            raise CheckpointError(f"{where}: {problem}")


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


# ---- reading only the expected files -----------------------------------------------------------
def _read_member(folder: pathlib.Path, name: str, limit: int, exact: Optional[int] = None) -> bytes:
    """The bytes of `folder/name`, which must be a regular file (not a link, device or pipe) of at
    most `limit` bytes (exactly `exact` when given). Nothing else is opened."""
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: {name} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot read {name}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{folder}: {name} is not a regular file")
    if exact is not None and st.st_size != exact:
        raise CheckpointError(f"{folder}: {name} has {st.st_size} bytes, expected {exact} (truncated?)")
    if st.st_size > limit:
        raise CheckpointError(f"{folder}: {name} has {st.st_size} bytes, more than the {limit} allowed")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot open {name}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between lstat and open
            raise CheckpointError(f"{folder}: {name} is not a regular file")
        chunks, left = [], (exact if exact is not None else st.st_size) + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 20))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if exact is not None and len(data) != exact:
        raise CheckpointError(f"{folder}: {name} changed size while being read")
    return data


def read_state(folder: pathlib.Path, log: Optional[Callable[[str], None]] = None) -> dict:
    """state.json of `folder`, checked against its digest and SCHEMA (files are not read)."""
    raw = _read_member(folder, "state.json", MAX_STATE_BYTES)
    try:
        state = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{folder}: state.json is corrupt ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder}: state.json is not a JSON object")
    version = state.get("format_version")
    if version not in (FORMAT_VERSION, *LEGACY_FORMATS) or not _is_int(version):
        raise CheckpointError(
            f"{folder}: unsupported checkpoint format {_short(version)} (this sos_rs reads "
            f"{', '.join(str(v) for v in (*LEGACY_FORMATS, FORMAT_VERSION))})"
        )
    if version == FORMAT_VERSION:
        recorded = state.get("state_sha256")
        if recorded is None:
            raise CheckpointError(f"{folder}: state.json lacks its digest (state_sha256)")
        if recorded != state_digest(state):
            raise CheckpointError(f"{folder}: state.json does not match its recorded digest (edited or corrupt)")
    validate_state(state, f"{folder}/state.json")
    if version != FORMAT_VERSION:
        (log or _stderr)(
            f"note: {folder} is a format-{version} checkpoint (before state digests): its fields are "
            "checked but an edit to its state.json cannot be detected; new checkpoints carry a digest"
        )
    return state


def _read_weights(folder: pathlib.Path, state: dict) -> Dict[str, bytes]:
    out = {}
    for name in state["files"]:  # WEIGHT_FILES and any listed OPTIONAL_FILES (the schema checked)
        meta = state["files"][name]
        data = _read_member(folder, name, meta["bytes"], exact=meta["bytes"])
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise CheckpointError(f"{folder}: {name} does not match its recorded SHA-256 (corrupt)")
        out[name] = data
    return out


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class LazyArrays(Mapping[str, np.ndarray]):
    """Arrays by name whose shapes are known up front and whose values are made only when read:
    a checkpoint then holds one extra tensor in memory while it is written, not a copy of the
    whole model (`Module.lazy_state_dict`)."""

    def __init__(self, shapes: Dict[str, Tuple[int, ...]], fetch: Callable[[str], np.ndarray]):
        self.shapes, self._fetch = dict(shapes), fetch

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        return self._fetch(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


_ST_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64", "int32": "I32", "uint8": "U8"}


def write_safetensors(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """`arrays` as a safetensors file, streamed one tensor at a time (the `safetensors` package
    serialises the whole file in memory first). Lazy arrays are float32; a plain dict keeps each
    array's dtype. The header follows the format: 8-byte little-endian length, JSON padded with
    spaces to a multiple of 8, then the data in header order; `safetensors.numpy.load` reads it."""
    if isinstance(arrays, LazyArrays):
        specs = {k: (tuple(shape), np.dtype(np.float32)) for k, shape in arrays.shapes.items()}
    else:
        specs = {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in arrays.items()}
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in specs.items():
        if dtype.name not in _ST_DTYPES:
            raise CheckpointError(f"{path.name}: {name} has dtype {dtype}, which this writer does not store")
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": _ST_DTYPES[dtype.name], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, (shape, dtype) in specs.items():
            arr = np.require(arrays[name], dtype=dtype.newbyteorder("<"), requirements="C")
            if tuple(arr.shape) != shape:
                raise CheckpointError(f"{path.name}: {name} has shape {arr.shape}, its header says {shape}")
            f.write(arr.data)  # the contiguous buffer itself, no bytes copy
            del arr


def save(
    root: pathlib.Path,
    step: int,
    model: Mapping[str, np.ndarray],
    optimizer: Mapping[str, np.ndarray],
    state: dict,
    extra: Optional[Dict[str, Dict[str, np.ndarray]]] = None,
) -> pathlib.Path:
    """Writes root/step-XXXXXXXX atomically and returns its path. `extra` adds safetensors files
    named in OPTIONAL_FILES (the trainer's rollback snapshot), listed and verified like the
    weights. On any failure (a full disk, say) the temporary folder is removed, earlier
    checkpoints are untouched, and CheckpointError says what happened."""
    unknown = sorted(set(extra or {}) - set(OPTIONAL_FILES))
    if unknown:
        raise CheckpointError(f"checkpoint extra files must be among {OPTIONAL_FILES}, got {unknown}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_safetensors(tmp / "model.safetensors", model)
        write_safetensors(tmp / "optimizer.safetensors", optimizer)
        for name, arrays in (extra or {}).items():
            write_safetensors(tmp / name, arrays)
        files = {}
        for name in (*WEIGHT_FILES, *(extra or {})):
            _fsync_file(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        state = dict(state, step=step, format_version=FORMAT_VERSION, files=files)
        state.pop("state_sha256", None)
        validate_state(state, f"checkpoint {final}")
        state["state_sha256"] = state_digest(state)
        with open(tmp / "state.json", "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step after resuming: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final}: {e.strerror or e} — earlier checkpoints are intact"
        ) from e
    return final


def verify(folder: pathlib.Path, log: Optional[Callable[[str], None]] = None) -> dict:
    """The checkpoint's state if state.json matches its digest and schema and both weight files
    have the recorded size and SHA-256; CheckpointError otherwise."""
    state = read_state(folder, log)
    _read_weights(folder, state)
    return state


def load(
    folder: pathlib.Path, log: Optional[Callable[[str], None]] = None
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], dict]:
    """(model arrays, optimizer arrays, state) of a checkpoint that verifies; the arrays are
    parsed from the very bytes that were hashed. Raises only CheckpointError."""
    state = read_state(folder, log)
    blobs = _read_weights(folder, state)
    out = []
    for name in WEIGHT_FILES:
        try:
            arrays = load_bytes(blobs[name])
        except Exception as e:  # safetensors raises its own error types on malformed files
            raise CheckpointError(f"{folder}: cannot read {name}: {e}") from None
        bad = sorted(k for k, a in arrays.items() if a.dtype != np.float32)
        if bad:
            raise CheckpointError(f"{folder}: {name} holds non-float32 tensors: {', '.join(bad[:5])}")
        out.append(arrays)
    return out[0], out[1], state


def load_extra(folder: pathlib.Path, name: str) -> Optional[Dict[str, np.ndarray]]:
    """An optional file of a checkpoint (see `save`), verified against state.json, or None when
    the checkpoint has none. Raises only CheckpointError."""
    if name not in OPTIONAL_FILES:
        raise CheckpointError(f"{name} is not an optional checkpoint file ({', '.join(OPTIONAL_FILES)})")
    state = read_state(folder)
    meta = state["files"].get(name)
    if meta is None:
        return None
    data = _read_member(folder, name, meta["bytes"], exact=meta["bytes"])
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{folder}: {name} does not match its recorded SHA-256 (corrupt)")
    try:
        arrays = load_bytes(data)
    except Exception as e:  # safetensors raises its own error types on malformed files
        raise CheckpointError(f"{folder}: cannot read {name}: {e}") from None
    return arrays


def list_steps(root: pathlib.Path) -> list:
    """Checkpoint folders under root, oldest first (temporary folders are not listed)."""
    if not root.exists():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()
    ]
    return [p for _, p in sorted(found)]


def latest_valid(root: pathlib.Path, log=None) -> Optional[pathlib.Path]:
    """The newest checkpoint that verifies; broken ones are reported through `log` and skipped."""
    log = log or _stderr
    for folder in reversed(list_steps(root)):
        try:
            verify(folder, log)
            return folder
        except CheckpointError as e:
            log(f"skipping checkpoint: {e}")
    return None


def check_arrays(folder: pathlib.Path, name: str, arrays: Dict[str, np.ndarray], expected: Dict[str, tuple]) -> None:
    """CheckpointError unless `arrays` holds exactly the `expected` names with their shapes:
    checked before anything is copied, so a bad checkpoint never half-loads."""
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{folder}: {name} lacks {missing[:5]} and has unexpected {extra[:5]}")
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != tuple(shape):
            raise CheckpointError(f"{folder}: {name} {key} has shape {arrays[key].shape}, expected {tuple(shape)}")


def load_latest(root: pathlib.Path, use: Callable[..., Any], log: Optional[Callable[[str], None]] = None) -> Any:
    """`use(folder, model_arrays, optimizer_arrays, state)` for the newest checkpoint under `root`
    that loads and that `use` accepts (it raises CheckpointError to refuse one); broken ones are
    reported through `log` and skipped. None when no checkpoint is usable."""
    log = log or _stderr
    for folder in reversed(list_steps(root)):
        try:
            return use(folder, *load(folder, log))
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
            loss = read_state(folder, log=lambda _: None).get("val_loss")
        except CheckpointError:
            continue
        if loss is not None and loss < best_loss:
            best, best_loss = folder, loss
    keep = set(steps[-keep_last:]) if keep_last > 0 else set()
    if best is not None:
        keep.add(best)
    for folder in steps:
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
