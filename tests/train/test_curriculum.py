"""The curriculum (train/curriculum.py, train/stages.py): stages over labelled sources, the
transitions in metrics.jsonl, growth on entry, refusals before the first step, and SIGKILL /
`--resume auto` across a stage boundary and a growth ending bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess

import pytest

from tests.train.test_trainer import SOS, WORDS, final_weights, run_until_killed

STAGES = [
    {"name": "language", "mixture": {"lang": 1.0}, "steps": 7},
    {"name": "logic", "mixture": {"logic": 1.0}, "steps": 6, "lr_scale": 0.5},
    {"name": "depth", "mixture": {"lang": 0.5, "logic": 0.5}, "steps": 50, "grow_layers": 2, "seq_len": 48},
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cur")
    rng = random.Random(0)
    lang = root / "lang"
    lang.mkdir()
    for i in range(30):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(2, 12))]
        (lang / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    synth = root / "logic.jsonl"
    subprocess.run(SOS + ["synth", "reasoning", "--n", "400", "--seed", "3", "--out", str(synth)], check=True)
    out = root / "prepared"
    subprocess.run(
        SOS + ["prepare", f"lang={lang}", f"logic={synth}", "--out", str(out), "--vocab-size", "300"],
        check=True,
        capture_output=True,
    )
    return out


def toml_value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def write(path: pathlib.Path, data, out, stages=STAGES, family="moa", governor=None, **run) -> pathlib.Path:
    run_cfg = {"steps": 20, "checkpoint_every": 3, "eval_every": 0, "log_every": 1, "sample_tokens": 0, "threads": 1}
    run_cfg.update(run)
    lines = ["[model]", f'family = "{family}"', "d_model = 32", "n_layers = 2", "n_heads = 4"]
    if family == "moa":
        lines += ["ffn_rank = 8"]
    lines += ["", "[data]", f'dir = "{data}"', "seq_len = 32", "batch_size = 4", "", "[optim]", "lr = 3e-3"]
    lines += ["", "[schedule]", "warmup_steps = 2", "", "[run]", f'out = "{out}"']
    lines += [f"{k} = {toml_value(v)}" for k, v in run_cfg.items()]
    lines += ["", "[governor]"] + [f"{k} = {toml_value(v)}" for k, v in (governor or {"every": 4, "warmup": 0}).items()]
    if stages is not None:
        lines += ["", "[curriculum]"]
        for st in stages:
            lines += ["", "[[curriculum.stages]]"] + [f"{k} = {toml_value(v)}" for k, v in st.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def records(run: pathlib.Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_stages_advance_grow_and_are_logged(sources, tmp_path):
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run")
    out = subprocess.run(SOS + ["train", str(cfg)], check=True, capture_output=True, text=True)
    events = [r for r in records(tmp_path / "run") if r.get("event") == "stage"]
    assert [(e["step"], e["name"], e["grew"]) for e in events] == [(7, "logic", 0), (13, "depth", 2)]
    assert events[0]["reason"] == "cap of 7 steps" and events[1]["seq_len"] == 48
    assert "stage 2 'depth' begins at step 13 (cap of 6 steps); +2 layers (now 4)" in out.stdout
    state = json.loads(sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state["curriculum"]["stage"] == 2 and state["curriculum"]["grown"] == 2
    assert [h["step"] for h in state["curriculum"]["history"]] == [0, 7, 13]
    assert state["model_config"]["n_layers"] == 4 and len(state["belt"]["stages"]) == 3
    steps = [r for r in records(tmp_path / "run") if "loss" in r]
    lrs = {r["step"]: r["lr"] for r in steps}
    assert lrs[8] < 0.6 * lrs[7]  # the logic stage halves the learning rate
    # the governor logged readings per layer and router, after growth for all four blocks
    gov = [r for r in records(tmp_path / "run") if "governor" in r]
    assert gov and {"act.layers.3", "router.layers.3.ffn"} <= set(gov[-1]["governor"])
    # eval, sample and plot work on the grown run
    for cmd in (
        ["eval", str(tmp_path / "run"), "--batches", "1"],
        ["eval", str(tmp_path / "run"), "--task", "logic", "--n", "3"],
    ):
        subprocess.run(SOS + cmd, check=True, capture_output=True)


def test_sigkill_across_a_stage_boundary_and_a_growth_is_bit_identical(sources, tmp_path):
    # Dense with the governor on (activation readings, freeze tracking): MoA's regulariser draws
    # its key triples from an RNG that checkpoints do not hold yet, so MoA resumes are not exact.
    kw = dict(family="dense", governor={"enabled": True, "every": 4, "warmup": 0})
    ref = write(tmp_path / "ref.toml", sources, tmp_path / "ref", **kw)
    subprocess.run(SOS + ["train", str(ref)], check=True, capture_output=True)
    want = final_weights(tmp_path / "ref")
    cfg = write(tmp_path / "k.toml", sources, tmp_path / "killed", **kw)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    # the boundaries are after steps 7 and 13 (the growth); kills land before and after each
    for kill_at in (5, 10, 12, 16, 25):
        run_until_killed(SOS + ["train", str(cfg)], metrics, kill_at)
    out = subprocess.run(SOS + ["train", str(cfg)], check=True, capture_output=True, text=True)
    assert "resumed from" in out.stdout
    got = final_weights(tmp_path / "killed")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    a = json.loads(sorted((tmp_path / "ref" / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    b = json.loads(sorted((tmp_path / "killed" / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert a["curriculum"]["history"] == b["curriculum"]["history"] and a["governor"] == b["governor"]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda s: [dict(s[0], mixture={"nosuch": 1.0})], "curriculum.stages[0].mixture.nosuch: unknown source"),
        (lambda s: [dict(s[0], mixture={"lang": -0.5})], "curriculum.stages[0].mixture.lang = -0.5"),
        (lambda s: [], "curriculum.stages: expected a non-empty list"),
        (lambda s: [dict(s[0], steps=0)], "curriculum.stages[0].steps = 0"),
        (lambda s: [dict(s[0], advance="vibes")], "curriculum.stages[0].advance = 'vibes'"),
        (lambda s: [dict(s[0], grow_layerz=1)], "curriculum.stages[0]: unknown keys: grow_layerz"),
    ],
)
def test_bad_curricula_are_refused_naming_the_key(sources, tmp_path, edit, key):
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run", stages=edit(STAGES))
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and key in out.stderr, out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_family_that_cannot_grow_is_refused_before_training(sources, tmp_path):
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run", family="sagi", governor={"enabled": False})
    text = cfg.read_text().replace("n_heads = 4", "n_heads = 4\nmax_agents = 6\nagent_hidden = 16")
    cfg.write_text(text)
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "grow_layers" in out.stderr and "'sagi' family cannot grow" in out.stderr, out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sources_missing_from_the_data_folder_are_refused(sources, tmp_path):
    stages = [dict(STAGES[0], mixture={"lang": 1.0})]
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run", stages=stages)
    cfg.write_text(cfg.read_text().replace("[curriculum]", f'[curriculum]\ndirs = ["{tmp_path / "nowhere"}"]'))
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "curriculum.dirs[0]" in out.stderr, out.stderr


def test_a_resumed_run_whose_curriculum_changed_is_refused(sources, tmp_path):
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run", steps=4)
    subprocess.run(SOS + ["train", str(cfg)], check=True, capture_output=True)
    changed = [dict(STAGES[0], steps=5), *STAGES[1:]]
    cfg = write(tmp_path / "c.toml", sources, tmp_path / "run", stages=changed, steps=8)
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "[curriculum] differs" in out.stderr, out.stderr
