"""A time-budgeted schedule (`schedule.horizon = "time"`): with a fake clock, the decay follows
the elapsed fraction of run.max_minutes and reaches min_lr when the budget runs out, the run
stops there, and the log says which schedule is in force."""

from __future__ import annotations

import json
import math

import pytest

from sos_rs.train.config import ConfigError, from_dict
from sos_rs.train.schedule import lr_at
from sos_rs.train.trainer import Trainer
from tests.train.test_trainer import corpus  # noqa: F401 (a fixture)

SECONDS_PER_STEP = 6.0


def train_with_fake_clock(data, out, horizon: str, lines: list) -> list:
    cfg = from_dict(
        {
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 4},
            "data": {"dir": str(data), "seq_len": 16, "batch_size": 2},
            "optim": {"lr": 1e-3, "min_lr": 1e-4},
            "schedule": {"kind": "cosine", "warmup_steps": 0, "horizon": horizon},
            "run": {
                "out": str(out),
                "steps": 1000,
                "max_minutes": 1.0,
                "log_every": 1,
                "eval_every": 0,
                "checkpoint_every": 0,
                "sample_tokens": 0,
                "threads": 1,
            },
        }
    )
    now = [0.0]
    trainer = Trainer(cfg, log=lines.append)
    trainer.clock = lambda: now[0]
    step = trainer.opt.step

    def timed_step(lr):  # every optimizer step takes SECONDS_PER_STEP on the fake clock
        step(lr)
        now[0] += SECONDS_PER_STEP

    trainer.opt.step = timed_step
    trainer.train()
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]


def test_time_horizon_decays_over_the_budget(corpus, tmp_path, capsys):  # noqa: F811
    lines: list = []
    records = train_with_fake_clock(corpus, tmp_path / "run", "time", lines)
    out = capsys.readouterr().out
    assert "decay planned over the time budget of 1 min" in out
    # 60 s at 6 s a step: the budget is used up after step 10, checked after step 11
    assert [r["step"] for r in records] == list(range(1, 12))
    for r in records:
        elapsed = SECONDS_PER_STEP * (r["step"] - 1)  # the clock when the step's lr was chosen
        want = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * min(1.0, elapsed / 60)))
        assert r["lr"] == pytest.approx(want, rel=1e-9)
    assert records[-1]["lr"] == pytest.approx(1e-4)  # ended its decay
    assert "time limit of 1.0 min reached at step 11" in out


def test_step_horizon_says_the_time_limit_may_cut_the_decay(corpus, tmp_path, capsys):  # noqa: F811
    records = train_with_fake_clock(corpus, tmp_path / "run", "steps", [])
    out = capsys.readouterr().out
    assert "decay planned over 1000 steps" in out and "may stop the run before the decay ends" in out
    assert records[-1]["lr"] > 0.99e-3  # planned over 1000 steps, so barely decayed when time ran out


def test_time_horizon_needs_a_budget_and_wsd_decays_at_the_end():
    with pytest.raises(ConfigError, match="needs a time budget"):
        from_dict({"data": {"dir": "d"}, "run": {"out": "o"}, "schedule": {"horizon": "time"}})
    with pytest.raises(ConfigError, match="schedule.horizon = 'days': expected steps | time"):
        from_dict({"data": {"dir": "d"}, "run": {"out": "o"}, "schedule": {"horizon": "days"}})
    # wsd: stable until 80% of the budget, then linear to min_lr; the larger fraction wins
    assert lr_at(5, 1000, 1.0, 0.1, "wsd", 0, 0.2, time_fraction=0.5) == 1.0
    assert lr_at(5, 1000, 1.0, 0.1, "wsd", 0, 0.2, time_fraction=0.9) == pytest.approx(0.55)
    assert lr_at(900, 1000, 1.0, 0.1, "wsd", 0, 0.2, time_fraction=0.1) == pytest.approx(0.55)
    assert lr_at(5, 1000, 1.0, 0.1, "cosine", 0, time_fraction=2.0) == pytest.approx(0.1)
