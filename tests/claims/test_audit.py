"""Cost of a run: `sos train` records CPU-seconds, wall time and cost (metrics, checkpoints,
summary; carried across a resume), and `sos audit` reports them with the measured sparsity."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from sos_rs.train.audit import audit, bpb_at_cpu

SOS = [sys.executable, "-m", "sos_rs"]
WORDS = "the king queen lord lady sword crown night day love death war peace heaven earth sea fire".split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit")
    rng = random.Random(0)
    src = root / "texts"
    src.mkdir()
    for i in range(30):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(8)]
        (src / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "prepared"
    subprocess.run(
        SOS + ["prepare", str(src), "--out", str(data), "--vocab-size", "280"], check=True, capture_output=True
    )
    model = {
        "dense": ["d_model = 32", "n_layers = 1", "n_heads = 4"],
        "discoverlm": [
            'family = "discoverlm"',
            "d_model = 32",
            "n_layers = 1",
            "n_heads = 4",
            "ffn_hidden = 96",
            "ffn_rank = 8",
        ],
    }
    out = {}
    for family, lines in model.items():
        run = root / family
        cfg = root / f"{family}.toml"
        cfg.write_text(
            "\n".join(
                [
                    "[model]",
                    *lines,
                    "[data]",
                    f'dir = "{data}"',
                    "seq_len = 32",
                    "batch_size = 4",
                    "[schedule]",
                    "warmup_steps = 2",
                    "[run]",
                    f'out = "{run}"',
                    "steps = 6",
                    "eval_every = 3",
                    "eval_batches = 1",
                    "log_every = 1",
                    "checkpoint_every = 3",
                    "sample_tokens = 0",
                    "threads = 1",
                    "price_per_hour = 3.6",
                ]
            )
            + "\n"
        )
        res = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        out[family] = (run, cfg, res.stdout)
    return out


def test_train_records_cpu_wall_and_cost(runs):
    run, cfg, stdout = runs["dense"]
    done = json.loads(stdout.split("done: ")[1].splitlines()[0])
    assert done["cpu_s"] > 0 and done["elapsed_s"] > 0 and done["tokens_seen"] == 6 * 4 * 32
    assert done["cost"] == pytest.approx(3.6 * done["elapsed_s"] / 3600)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["family"] == "dense" and summary["cpu_s"] == done["cpu_s"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all({"cpu_s", "cpu_hours", "cost", "tokens_seen"} <= set(r) for r in steps)
    assert [r["cpu_s"] for r in steps] == sorted(r["cpu_s"] for r in steps)
    assert all("cpu_s" in r for r in records if "val_bpb" in r)
    state6 = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state6["step"] == 6 and state6["cpu_s"] > 0 and "cost" in state6
    # a resumed run keeps counting from the checkpoint's CPU-seconds
    res = subprocess.run(SOS + ["train", str(cfg), "--steps", "9"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    state9 = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state9["step"] == 9 and state9["cpu_s"] > state6["cpu_s"] and state9["elapsed_s"] > state6["elapsed_s"]


def test_audit_reports_each_run(runs, tmp_path):
    dense, disco = runs["dense"][0], runs["discoverlm"][0]
    res = audit([str(disco), str(dense)], dense=str(dense))
    d, r = res["runs"][1], res["runs"][0]
    assert d["family"] == "dense" and d["active_param_fraction"] == 1.0 and not d["active_measured"]
    assert r["family"] == "discoverlm" and r["active_measured"] and 0 < r["active_param_fraction"] < 1
    for row in res["runs"]:
        assert row["params"] > 0 and row["tokens_seen"] > 0 and row["cpu_hours"] > 0 and row["val_bpb"] > 0
        assert row["cost"] == pytest.approx(3.6 * row["wall_hours"])
    # the dense run against itself: same compute, same bits per byte
    assert d["bpb_vs_dense"] == pytest.approx(0.0, abs=1e-12)
    out = subprocess.run(
        SOS + ["audit", str(disco), str(dense), "--dense", str(dense), "--json", str(tmp_path / "a.json")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "$1.60" in out.stdout and "discoverlm" in out.stdout and "dense bpb@same CPU" in out.stdout
    assert json.loads((tmp_path / "a.json").read_text())["runs"][0]["family"] == "discoverlm"


def test_audit_errors_name_the_folder(tmp_path):
    out = subprocess.run(SOS + ["audit", str(tmp_path / "nope")], capture_output=True, text=True)
    assert out.returncode == 2 and "nope" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "empty").mkdir()
    out = subprocess.run(SOS + ["audit", str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode == 2 and "metrics.jsonl" in out.stderr


def test_bpb_at_cpu_interpolates_within_the_curve():
    curve = [(10.0, 3.0), (20.0, 2.0), (40.0, 1.0)]
    assert bpb_at_cpu(curve, 15.0) == pytest.approx(2.5)
    assert bpb_at_cpu(curve, 40.0) == pytest.approx(1.0)
    assert bpb_at_cpu(curve, 41.0) is None and bpb_at_cpu(curve, 5.0) is None
