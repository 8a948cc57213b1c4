"""A run folder as a user handles it: damaged checkpoints skipped by every command, runs that
move, sampling that stops at end-of-text, exports that never overwrite or half-write, one
trainer per folder, and corpora too small for a validation split."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from sos_rs.train import checkpoint as ckpt
from sos_rs.train.run_lock import RunLock, RunLockedError
from tests.train.test_trainer import SOS, WORDS, corpus, write_config  # noqa: F401 (corpus is a fixture)


def sos(*args, cwd=None, check=False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(SOS + list(args), capture_output=True, text=True, cwd=cwd, check=check, env=env)


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory) -> pathlib.Path:  # noqa: F811
    """A project folder `base` with data/ and runs/r, trained from inside base with relative paths."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(corpus, root / "data")
    write_config(root / "c.toml", "data", "runs/r", steps=6, checkpoint_every=3, eval_every=3, eval_batches=1)
    sos("train", "c.toml", cwd=root, check=True)
    return root


@pytest.fixture
def run(base, tmp_path) -> pathlib.Path:
    """A private copy of the trained run (data stays where it was)."""
    dst = tmp_path / "r"
    shutil.copytree(base / "runs" / "r", dst)
    return dst


def newest(run: pathlib.Path) -> pathlib.Path:
    return ckpt.list_steps(run / "checkpoints")[-1]


# ---- item 6: runs can move -----------------------------------------------------------------------
def test_state_records_portable_paths(base):
    st = json.loads((newest(base / "runs" / "r") / "state.json").read_text())
    assert st["tokenizer"] == "tokenizer.json"
    assert st["data_dirs"]["data"] == [os.path.join("..", "..", "data"), str((base / "data").resolve())]


def test_moved_run_evaluates_from_another_directory(base, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the run alone moves: the absolute data path still holds
    shutil.copytree(base / "runs" / "r", tmp_path / "moved")
    for cmd in (("eval", str(tmp_path / "moved"), "--batches", "1"), ("sample", str(tmp_path / "moved"))):
        r = sos(*cmd, cwd=elsewhere)
        assert r.returncode == 0, r.stderr
    # the whole project moves (data and run together): the run-relative data path holds
    shutil.copytree(base, tmp_path / "project2")
    shutil.move(str(tmp_path / "project2"), str(tmp_path / "project3"))
    os.rename(base / "data", base / "data.away")  # the recorded absolute path no longer exists
    try:
        r = sos("eval", str(tmp_path / "project3" / "runs" / "r"), "--batches", "1", cwd=elsewhere)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["val_tokens"] > 0
    finally:
        os.rename(base / "data.away", base / "data")


# ---- item 2: damaged checkpoints are reported and skipped by every command -----------------------
def _edit(folder: pathlib.Path, edit, redigest: bool) -> None:
    st = json.loads((folder / "state.json").read_text())
    edit(st)
    if redigest:
        st["state_sha256"] = ckpt.state_digest(st)
    (folder / "state.json").write_text(json.dumps(st))


DAMAGE = {
    "step edited": (lambda st: st.update(step=st["step"] - 1), False),
    "files bytes missing": (lambda st: st["files"]["model.safetensors"].pop("bytes"), True),
    "listed /dev/zero": (lambda st: st["files"].update({"/dev/zero": st["files"].pop("model.safetensors")}), True),
    "model_config wrong type": (lambda st: st["model_config"].update(n_layers="2"), True),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_skips_a_damaged_newest_checkpoint(base, run, tmp_path, damage):
    bad = newest(run)
    edit, redigest = DAMAGE[damage]
    _edit(bad, edit, redigest)
    older = ckpt.list_steps(run / "checkpoints")[-2]
    for cmd in (
        ["eval", str(run), "--batches", "1"],
        ["sample", str(run), "--max-new-tokens", "3"],
        ["export", str(run), "--hf", str(tmp_path / "hf")],
    ):
        r = sos(*cmd)
        assert r.returncode == 0 and "skipping checkpoint" in r.stderr and bad.name in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert json.loads(sos("eval", str(run), "--batches", "1").stdout)["checkpoint"] == str(older)
    # the damaged folder named directly is refused with the cause, exit 2
    for cmd in (["eval", str(bad)], ["sample", str(bad)], ["export", str(bad), "--hf", str(tmp_path / "hf2")]):
        r = sos(*cmd)
        assert r.returncode == 2 and r.stderr.startswith(f"sos {cmd[0]}: ") and "Traceback" not in r.stderr
    # --resume auto skips it too and resumes from the older one
    write_config(tmp_path / "c.toml", base / "data", run, steps=7, checkpoint_every=3, eval_every=0)
    r = sos("train", str(tmp_path / "c.toml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipping checkpoint" in r.stdout + r.stderr and f"resumed from {older}" in r.stdout


# ---- item 4: sampling stops at end-of-text ---------------------------------------------------------
def test_sample_stops_at_end_of_text_unless_told(run):
    """A model whose head is all zeros gives uniform logits, so greedy sampling picks token 0,
    which is end-of-text in these corpora: the default stops there, --ignore-eot goes on."""
    folder = newest(run)
    model, opt, st = ckpt.load(folder)
    assert st["eot_id"] == 0
    model["lm_head.weight"] = np.zeros_like(model["lm_head.weight"])
    shutil.rmtree(folder)
    ckpt.save(run / "checkpoints", st["step"], model, opt, st)
    stop = sos("sample", str(run), "--prompt", "the king", "--temperature", "0", "--max-new-tokens", "8")
    assert stop.returncode == 0 and stop.stdout == "the king\n", stop.stdout
    go_on = sos(
        "sample", str(run), "--prompt", "the king", "--temperature", "0", "--max-new-tokens", "8", "--ignore-eot"
    )
    assert go_on.stdout == "the king" + "\n\n" * 8 + "\n", repr(go_on.stdout)


def test_eval_text_scores_a_routed_family_in_inference_mode():
    """`sos eval --text` on MoA with ball pruning (a soft penalty in training mode, a hard mask in
    inference mode) equals the inference-mode cross-entropy over its windows, not the training one."""
    from sos_rs.cli.eval import eval_text
    from sos_rs.models import MoAConfig, MoALM

    model = MoALM(MoAConfig.tiny(ball_radius_init=0.2, ball_beta=5.0))

    class Tok:
        def encode(self, text):
            return type("Encoding", (), {"ids": [ord(c) % 256 for c in text]})()

    text = "the king and the queen walked by the sea " * 4  # 164 tokens: 3 windows of 64
    got = eval_text(model, Tok(), text)["loss"]
    assert model.training  # eval_text leaves the mode as it was
    ids, t = Tok().encode(text).ids, model.config.max_seq_len
    windows = [np.asarray([ids[s : s + t + 1]]) for s in range(0, len(ids) - 1, t)]
    count = sum(w.shape[1] - 1 for w in windows)
    inference = sum(model.eval_loss(w[:, :-1], w[:, 1:]) * (w.shape[1] - 1) for w in windows) / count
    training = sum(model.loss(w[:, :-1], w[:, 1:]).item() * (w.shape[1] - 1) for w in windows) / count
    assert got == pytest.approx(inference, rel=1e-6)
    assert abs(training - inference) > 1e-3  # the modes differ, so scoring in training mode would show


# ---- item 5: export never overwrites, never half-writes -----------------------------------------------
def test_export_refuses_a_non_empty_folder_and_writes_atomically(run, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = sos("export", str(run), "--hf", str(out))
    assert r.returncode == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    r = sos("export", str(run), "--hf", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sos("export", str(run), "--hf", str(empty)).returncode == 0


def test_a_failing_export_leaves_the_folder_untouched(tmp_path):
    from sos_rs.cli.export import write_atomically

    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def fails(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(out, True, fails)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and [p.name for p in out.iterdir()] == ["keep.txt"]
    paths = write_atomically(tmp_path / "new", False, lambda tmp: [tmp / "a"] if (tmp / "a").write_text("x") else [])
    assert paths == [tmp_path / "new" / "a"] and (tmp_path / "new" / "a").read_text() == "x"


# ---- item 10: one trainer per run folder ------------------------------------------------------------
HOLD = (
    "import sys, time; from sos_rs.train.run_lock import RunLock; lock = RunLock(sys.argv[1]); lock.acquire(); "
    "print('held', flush=True); time.sleep(60)"
)


def test_a_second_trainer_is_refused_naming_the_holder(base, run, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        write_config(tmp_path / "c.toml", base / "data", run, steps=9)
        r = sos("train", str(tmp_path / "c.toml"))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"pid {holder.pid} on {socket.gethostname()}" in r.stderr and "in use" in r.stderr
        before = sorted(p.name for p in (run / "checkpoints").iterdir())
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing was touched
    r = sos("train", str(tmp_path / "c.toml"))  # the holder died: its lock is taken over
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock of {run} from pid {holder.pid}" in r.stdout and "no longer running" in r.stdout


def test_run_lock_in_process(tmp_path):
    first = RunLock(tmp_path)
    first.acquire(log=lambda m: None)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire(log=lambda m: None)
    first.release()
    notes = []
    RunLock(tmp_path).acquire(log=notes.append)  # released cleanly: no note
    assert notes == []


# ---- item 8: a corpus too small for a validation split ------------------------------------------------
def test_single_file_corpus_says_there_is_no_validation_split(tmp_path):
    import random

    rng = random.Random(1)
    (tmp_path / "texts").mkdir()
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(400)]
    (tmp_path / "texts" / "only.txt").write_text("\n".join(lines) + "\n")
    prep = sos("prepare", str(tmp_path / "texts"), "--out", str(tmp_path / "data"), "--vocab-size", "300", "--quiet")
    assert prep.returncode == 0 and "note: no validation split: 1 document(s)" in prep.stderr
    write_config(tmp_path / "c.toml", tmp_path / "data", tmp_path / "run", steps=4, eval_every=2, eval_batches=1)
    r = sos("train", str(tmp_path / "c.toml"))
    assert r.returncode == 0, r.stderr
    assert "has no validation split" in r.stdout and "step 2: train-split loss" in r.stdout
    assert "step 2: val loss" not in r.stdout and '"val_split": "train"' in r.stdout
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_bpb" in x]
    assert evals and all(e["val_split"] == "train" for e in evals)


def test_corpus_with_a_validation_split_reports_val_loss(base):
    evals = [json.loads(x) for x in (base / "runs" / "r" / "metrics.jsonl").read_text().splitlines() if "val_bpb" in x]
    assert evals and all(e["val_split"] == "val" for e in evals)
