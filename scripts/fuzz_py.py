"""Property-based fuzzing of the Python-facing inputs with `hypothesis` (the `dev` extra):
`sos prepare` inputs, checkpoint folders, belt states, TOML configs and the public API.

    python -m scripts.fuzz_py [--scale S] [--seconds N] [--only TARGET ...]

Each target draws inputs and sorts every run into an outcome: `ok`, `refused:<Type>` (one of the
documented exception types for that entry point) or `CRASH:<Type>` (anything else), and for
checkpoints `SILENT` (damaged bytes loaded without an error, contents changed). Prints one line
per target with its counts and exits 1 when any CRASH or SILENT occurred, listing the first
inputs that did (also written to fuzz-failures.txt). `--scale` multiplies the per-target input
budgets (1.0 = the full run of scripts/fuzz.sh); `--seconds` bounds each target's time.
scripts/fuzz.sh runs this after the cargo-fuzz targets."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

os.environ.setdefault("SOS_QUIET", "1")

import sos_rs  # noqa: E402
from sos_rs import errors  # noqa: E402


@dataclasses.dataclass
class Target:
    name: str
    budget: int  # inputs at --scale 1
    run: Callable[["Recorder", pathlib.Path], str]  # returns an outcome; may raise


TARGETS: List[Target] = []


class Recorder:
    """hypothesis's `data` that also keeps what was drawn, to print a failing input."""

    def __init__(self, data: st.DataObject):
        self.data, self.log = data, []  # type: ignore[var-annotated]

    def draw(self, strategy, label=None):
        v = self.data.draw(strategy, label)
        r = repr(v)
        self.log.append(f"{label or '?'}={r if len(r) < 300 else r[:300] + '...'}")
        return v


def target(name: str, budget: int):
    def deco(fn):
        TARGETS.append(Target(name, budget, fn))
        return fn

    return deco


def classify(e: BaseException, allowed: Tuple[type, ...]) -> str:
    if type(e).__module__.startswith("hypothesis"):
        raise e  # hypothesis's own control flow (rejected draws), not an outcome
    kind = "refused" if isinstance(e, allowed) else "CRASH"
    return f"{kind}:{type(e).__name__}"


# ---- sos prepare ------------------------------------------------------------------------------
EXTS = ["", ".txt", ".md", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".bin"]


def _parquet_bytes(rng_texts: List[str]) -> bytes:
    import io

    import polars as pl

    buf = io.BytesIO()
    pl.DataFrame({"text": rng_texts}).write_parquet(buf)
    return buf.getvalue()


@st.composite
def file_content(draw, ext: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "bad_utf8", "huge_line", "jsonl", "csv", "parquet", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "text":
        return draw(st.text(max_size=600)).encode("utf-8", "surrogatepass")
    if kind == "bad_utf8":
        t = draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
        at = draw(st.integers(0, len(t)))
        return t[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\x00"])) + t[at:]
    if kind == "huge_line":
        return (draw(st.sampled_from(["a", "é", "字 ", "%\n"])) * draw(st.integers(10_000, 300_000))).encode()
    if kind == "jsonl":
        rows = draw(
            st.lists(
                st.one_of(
                    st.builds(lambda t: json.dumps({"text": t}), st.text(max_size=80)),
                    st.builds(lambda t: json.dumps({"other": t}), st.text(max_size=20)),
                    st.builds(lambda v: json.dumps({"text": v}), st.one_of(st.integers(), st.none(), st.floats())),
                    st.text(max_size=40),
                ),
                max_size=8,
            )
        )
        return "\n".join(rows).encode("utf-8", "surrogatepass")
    if kind == "csv":
        rows = draw(st.lists(st.text(max_size=40), max_size=8))
        header = draw(st.sampled_from(["text", "text,n", "other", '"text"']))
        return (header + "\n" + "\n".join(rows)).encode("utf-8", "surrogatepass")
    if kind == "parquet":
        texts = draw(st.lists(st.text(max_size=40), min_size=1, max_size=5))
        raw = _parquet_bytes(texts)
        cut = draw(st.sampled_from(["whole", "truncate", "flip"]))
        if cut == "truncate":
            return raw[: draw(st.integers(0, len(raw)))]
        if cut == "flip":
            i = draw(st.integers(0, len(raw) - 1))
            return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
        return raw
    return b""


@target("prepare", 400)
def fuzz_prepare(data: Recorder, tmp: pathlib.Path) -> str:
    from sos_rs.data import prepare

    src = tmp / "in"
    src.mkdir()
    for i in range(data.draw(st.integers(1, 3), label="files")):
        ext = data.draw(st.sampled_from(EXTS), label="ext")
        (src / f"f{i}{ext}").write_bytes(data.draw(file_content(ext), label="content"))
    opts = dict(
        vocab_size=data.draw(st.integers(257, 320)),
        val_fraction=data.draw(st.sampled_from([0.0, 0.1, 0.5])),
        split_blank_lines=data.draw(st.booleans()),
        decode_errors=data.draw(st.sampled_from(["skip", "replace"])),
        format=data.draw(st.sampled_from(["auto", "txt"])),
        split_on=data.draw(st.sampled_from([None, "^%$", "(", "^$", "a+"])),
        max_chars=data.draw(st.sampled_from([0, 50])),
        progress=False,
    )
    try:
        meta = prepare([src], tmp / "out", **opts)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        return classify(e, (ValueError, FileExistsError, FileNotFoundError))
    # Whatever was kept must read back: the shards open and verify.
    from sos_rs.data import Belt, read_meta

    back = read_meta(tmp / "out")
    if back["shards"]["train"]:
        Belt(back["shards"]["train"], seq_len=4, batch_size=1, prefetch=0).next_batch()
    return "ok" if meta else "CRASH:empty-meta"


# ---- checkpoints ------------------------------------------------------------------------------
def _base_checkpoint(root: pathlib.Path) -> pathlib.Path:
    from sos_rs.train import checkpoint as ckpt
    from tests.train.test_checkpoint import arrays, state

    return ckpt.save(root, 7, arrays(1), {"m.b": np.ones(5, np.float32)}, state())


_CKPT: Dict[str, Dict[str, bytes]] = {}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@target("checkpoint", 3000)
def fuzz_checkpoint(data: Recorder, tmp: pathlib.Path) -> str:
    """Random byte damage (no re-digest) must be refused or leave the loaded contents unchanged;
    structured edits of state.json with a recomputed digest (what a tool could write) must raise
    only CheckpointError."""
    from sos_rs.train import checkpoint as ckpt

    if not _CKPT:
        base = _base_checkpoint(tmp / "base")
        _CKPT["files"] = {p.name: p.read_bytes() for p in base.iterdir()}
        _CKPT["loaded"] = ckpt.load(base)  # type: ignore[assignment]
        shutil.rmtree(tmp / "base")
    folder = tmp / "step-00000007"
    folder.mkdir()
    files = dict(_CKPT["files"])
    name = data.draw(st.sampled_from(sorted(files)), label="file")
    raw = bytearray(files[name])
    mode = data.draw(st.sampled_from(["flip", "truncate", "insert", "splice", "json", "delete"]), label="mode")
    if mode == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif mode == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif mode == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    elif mode == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i : i + data.draw(st.integers(0, 64))] = data.draw(st.binary(max_size=64))
    elif mode == "json":
        state = json.loads(files["state.json"])
        key = data.draw(st.sampled_from(sorted(state)), label="key")
        value = data.draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=20),
                st.sampled_from(["../../etc/passwd", "/dev/zero", "model.safetensors"]),
                st.just({"../x": {"bytes": 0, "sha256": "0" * 64}}),
                st.just({"model.safetensors": {"bytes": 0, "sha256": "0" * 64}}),
                st.lists(st.integers(), max_size=3),
            ),
            label="value",
        )
        if data.draw(st.booleans(), label="delete_key"):
            state.pop(key)
        else:
            state[key] = value
        state.pop("state_sha256", None)
        try:
            state["state_sha256"] = ckpt.state_digest(state)
        except (TypeError, ValueError):
            pass
        raw = bytearray(json.dumps(state).encode())
        name = "state.json"
    for n, b in files.items():
        if not (mode == "delete" and n == name):
            (folder / n).write_bytes(bytes(raw) if n == name else b)
    try:
        model, opt, state = ckpt.load(folder)
    except ckpt.CheckpointError as e:
        return classify(e, (ckpt.CheckpointError,))
    except Exception as e:
        return classify(e, ())
    m0, o0, s0 = _CKPT["loaded"]  # type: ignore[misc]
    if mode == "json":
        return "ok"  # a consistent edit with its digest recomputed is a different, valid checkpoint
    if _same(model, m0) and _same(opt, o0) and state == s0:
        return "ok"  # e.g. whitespace in state.json, which the canonical digest ignores
    return "SILENT"


# ---- belt states ------------------------------------------------------------------------------
_BELT: Dict[str, object] = {}


@target("belt_state", 15000)
def fuzz_belt_state(data: Recorder, tmp: pathlib.Path) -> str:
    from sos_rs.data import Belt, ShardWriter

    if not _BELT:
        d = pathlib.Path(tempfile.mkdtemp(prefix="sos_fuzz_belt_"))
        w = ShardWriter(str(d / "a.sos"), 50, 0)
        lens = [3, 9, 1, 17, 4, 30, 2, 8]
        w.add_documents(np.array([(j % 49) + 1 if j + 1 < n else 0 for n in lens for j in range(n)]), np.array(lens))
        w.close()
        _BELT["belt"] = Belt([str(d / "a.sos")], seq_len=5, batch_size=2, prefetch=0)
        _BELT["state"] = _BELT["belt"].state()  # type: ignore[attr-defined]
    belt, real = _BELT["belt"], dict(_BELT["state"])  # type: ignore[call-overload]
    value = st.one_of(
        st.integers(-(2**70), 2**70),
        st.integers(0, 64),
        st.booleans(),
        st.none(),
        st.floats(),
        st.text(max_size=5),
        st.lists(st.integers(-5, 2**65), max_size=4),
    )
    state = dict(real)
    for key in data.draw(st.lists(st.sampled_from(sorted(real) + ["extra"]), max_size=3), label="keys"):
        if data.draw(st.booleans()):
            state.pop(key, None)
        else:
            state[key] = data.draw(value, label=key)
    if data.draw(st.booleans(), label="not_a_dict"):
        state = data.draw(st.one_of(st.none(), st.lists(st.integers(), max_size=3), st.text(max_size=5)))
    try:
        belt.load_state(state)  # type: ignore[attr-defined]
        for _ in range(2):
            belt.next_batch()  # type: ignore[attr-defined]
        return "ok"
    except (errors.SosError, ValueError, TypeError, KeyError) as e:
        allowed: Tuple[type, ...] = (errors.SosError, ValueError, TypeError)
        return classify(e, allowed)
    finally:
        belt.load_state(_BELT["state"])  # type: ignore[attr-defined]


# ---- TOML configs -----------------------------------------------------------------------------
SECTIONS = {
    "model": ["family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "tie_embeddings", "paths"],
    "data": ["dir", "seq_len", "batch_size", "mix"],
    "optim": ["lr", "min_lr", "weight_decay", "grad_clip", "betas"],
    "schedule": ["kind", "warmup_steps", "horizon"],
    "run": ["out", "steps", "max_minutes", "seed", "log_every", "eval_every", "threads", "keep_last"],
    "rollback": ["enabled", "inject_scale"],
}


def _toml_value(draw) -> str:
    return draw(
        st.one_of(
            st.integers(-(2**70), 2**70).map(str),
            st.floats(allow_nan=True).map(lambda f: "nan" if math.isnan(f) else ("inf" if f > 1e308 else repr(f))),
            st.sampled_from(['"dense"', '"moa"', '"sagi"', '"auto"', '"cosine"', '"time"', "true", "false", '""']),
            st.text(max_size=12).map(json.dumps),
            st.lists(st.integers(-3, 3), max_size=3).map(str),
            st.just("{a = 1}"),
            st.just(".001"),
            st.just("1e-3"),
        )
    )


def _demo_config() -> Dict[str, Dict[str, str]]:
    """configs/demo.toml as {section: {key: TOML literal}} (its sections are flat)."""
    from sos_rs.cli.init import config_dir

    out: Dict[str, Dict[str, str]] = {}
    sec = ""
    for line in (config_dir() / "demo.toml").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            sec = line.strip("[]")
            out[sec] = {}
        elif "=" in line:
            k, v = line.split("=", 1)
            out[sec][k.strip()] = v.strip()
    return out


@target("toml_config", 5000)
def fuzz_toml(data: Recorder, tmp: pathlib.Path) -> str:
    from sos_rs.train.config import ConfigError, load

    mode = data.draw(st.sampled_from(["mutate", "mutate", "structured", "raw"]), label="mode")
    if mode == "raw":
        text = data.draw(st.text(max_size=300), label="text")
    elif mode == "structured":
        lines = []
        for sec in data.draw(st.lists(st.sampled_from(sorted(SECTIONS) + ["bogus"]), max_size=6, unique=True)):
            lines.append(f"[{sec}]")
            for key in data.draw(st.lists(st.sampled_from(SECTIONS.get(sec, ["x"]) + ["nope"]), max_size=6)):
                lines.append(f"{key} = {_toml_value(data.draw)}")
        text = "\n".join(lines)
    else:  # the demo config with a few values replaced, removed or added
        base = _demo_config()
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            sec = data.draw(st.sampled_from(sorted(SECTIONS)), label="section")
            key = data.draw(st.sampled_from(SECTIONS[sec] + ["nope"]), label="key")
            if data.draw(st.integers(0, 4), label="delete") == 0:
                base.get(sec, {}).pop(key, None)
            else:
                base.setdefault(sec, {})[key] = _toml_value(data.draw)
        text = "\n".join(f"[{sec}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) for sec, kv in base.items())
        text = text.replace('dir = "runs/data/shakespeare"', f"dir = {json.dumps(str(tmp))}")
    path = tmp / "c.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    overrides = data.draw(st.lists(st.text(max_size=20), max_size=2), label="overrides")
    try:
        load(str(path), overrides)
        return "ok"
    except ConfigError as e:
        return classify(e, (ConfigError,))
    except Exception as e:
        return classify(e, ())


# ---- public API -------------------------------------------------------------------------------
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]


@st.composite
def array(draw, max_dims: int = 4):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=max_dims)))
    dtype = draw(st.sampled_from([np.float32] * len(DTYPES) + DTYPES))
    n = int(np.prod(shape)) if shape else 1
    if np.issubdtype(dtype, np.floating):
        vals = draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
    else:
        vals = draw(st.lists(st.integers(0 if dtype in (np.uint8, np.bool_) else -3, 70), min_size=n, max_size=n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = np.array(vals, dtype=np.float64).astype(dtype).reshape(shape)
    if draw(st.booleans()) and a.ndim >= 2:
        a = a.T  # non-contiguous
    return a


def _t(a):
    return sos_rs.tensor(a) if isinstance(a, np.ndarray) and a.dtype == np.float32 else sos_rs.tensor(a)


OPS = [
    "tensor",
    "linear",
    "matmul",
    "rmsnorm",
    "layernorm",
    "softmax",
    "silu",
    "gelu",
    "swiglu",
    "add",
    "mul",
    "scale",
    "sigmoid_range",
    "col_scale",
    "embedding",
    "cross_entropy",
    "attn",
]


@target("api_ops", 25000)
def fuzz_api_ops(data: Recorder, tmp: pathlib.Path) -> str:
    from sos_rs import functional as F

    op = data.draw(st.sampled_from(OPS), label="op")
    a, b = data.draw(array(), label="a"), data.draw(array(), label="b")
    allowed: Tuple[type, ...] = (errors.SosError,)
    try:
        if op == "tensor":
            t = _t(a)
            back = t.numpy()
            if back.shape != a.shape or not np.array_equal(back, a.astype(np.float32)):
                return "CRASH:tensor-round-trip"
        elif op == "linear":
            F.linear(_t(a), _t(b))
        elif op == "matmul":
            F.matmul(_t(a), _t(b))
        elif op == "rmsnorm":
            F.rmsnorm(_t(a), _t(b), data.draw(st.floats(allow_nan=True)))
        elif op == "layernorm":
            F.layernorm(_t(a), _t(b), _t(b), data.draw(st.floats(allow_nan=True)))
        elif op in ("softmax", "silu", "gelu"):
            getattr(F, op)(_t(a))
        elif op in ("swiglu", "mul", "col_scale"):
            getattr(F, op)(_t(a), _t(b))
        elif op == "scale":
            F.scale(_t(a), data.draw(st.floats(allow_nan=True)))
        elif op == "sigmoid_range":
            F.sigmoid_range(_t(a), data.draw(st.floats(allow_nan=True)), data.draw(st.floats(allow_nan=True)))
        elif op == "add":
            F.add(_t(a), _t(b))
        elif op == "embedding":
            F.embedding(_t(a), b)
        elif op == "cross_entropy":
            F.cross_entropy(_t(a), b)
        else:
            F.causal_attention(_t(a), _t(b), _t(b))
        return "ok"
    except Exception as e:
        return classify(e, allowed)
    except BaseException as e:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return classify(e, allowed)


_MODELS: Dict[str, object] = {}


@target("api_models", 3000)
def fuzz_api_models(data: Recorder, tmp: pathlib.Path) -> str:
    from sos_rs.models import build_model

    family = data.draw(st.sampled_from(["dense", "moa", "discoverlm", "sagi"]), label="family")
    if family not in _MODELS:
        cfg = {"vocab_size": 50, "d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 8}
        _MODELS[family] = build_model(family, cfg)
    model = _MODELS[family]
    if data.draw(st.booleans(), label="plausible"):
        shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 10)))
        dtype = np.int64
        ids_st = st.one_of(st.integers(0, 49), st.integers(0, 49), st.integers(-2, 60))
    else:
        shape = tuple(data.draw(st.lists(st.integers(0, 10), min_size=0, max_size=3), label="shape"))
        dtype = data.draw(st.sampled_from([np.int64, np.int32, np.uint16, np.float32, np.float64, np.bool_]))
        ids_st = st.one_of(st.integers(-2, 60), st.floats())
    n = int(np.prod(shape)) if shape else 1
    vals = data.draw(st.lists(ids_st, min_size=n, max_size=n), label="ids")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = np.array(vals, dtype=np.float64).astype(dtype).reshape(shape)
    try:
        if data.draw(st.booleans(), label="loss"):
            model.loss(ids, ids)  # type: ignore[attr-defined]
        else:
            model(ids)  # type: ignore[operator]
        return "ok"
    except Exception as e:
        return classify(e, (errors.SosError,))


# ---- the runner -------------------------------------------------------------------------------
BATCH = 100  # inputs per hypothesis run


def run_target(t: Target, n: int, seconds: float, failures: List[str]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    stop = time.monotonic() + seconds
    base = pathlib.Path(tempfile.mkdtemp(prefix=f"sos_fuzz_{t.name}_"))
    i = [0]

    @settings(
        max_examples=min(BATCH, n),  # a small budget (the smoke run) is one short run
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(st.data())
    def body(data):
        i[0] += 1
        tmp = base / f"{i[0]}"
        tmp.mkdir()
        rec = Recorder(data)
        try:
            outcome = t.run(rec, tmp)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # anything a target did not sort is a crash (pyo3 panics included)
            if type(e).__module__.startswith("hypothesis"):
                raise
            outcome = f"CRASH:{type(e).__name__}"
            failures.append(f"{t.name}: {outcome}: {e!r}\n  input: {'; '.join(rec.log)}"[:3000])
        else:
            if outcome.startswith(("CRASH", "SILENT")):
                failures.append(f"{t.name}: {outcome}\n  input: {'; '.join(rec.log)}"[:3000])
        counts[outcome] += 1
        shutil.rmtree(tmp, ignore_errors=True)

    # Runs of BATCH inputs until the budget or the time is spent: hypothesis must not be stopped
    # inside a run (it would replay the last input and find the generation inconsistent).
    while sum(counts.values()) < n and time.monotonic() < stop:
        body()
    shutil.rmtree(base, ignore_errors=True)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every target's input budget")
    p.add_argument("--seconds", type=float, default=600.0, help="time limit per target")
    p.add_argument("--only", nargs="*", help="targets to run (default all)")
    args = p.parse_args(argv)
    failures: List[str] = []
    total = 0
    bad = 0
    for t in TARGETS:
        if args.only and t.name not in args.only:
            continue
        n = max(1, int(t.budget * args.scale))
        t0 = time.monotonic()
        counts = run_target(t, n, args.seconds, failures)
        runs = sum(counts.values())
        total += runs
        bad += sum(v for k, v in counts.items() if k.startswith(("CRASH", "SILENT")))
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"python {t.name}: {runs} inputs in {time.monotonic() - t0:.0f} s: {shown}", flush=True)
    print(f"python total: {total} inputs, {bad} crash/silent")
    if failures:
        pathlib.Path("fuzz-failures.txt").write_text("\n\n".join(failures))
        print("\n".join(failures[:5]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
