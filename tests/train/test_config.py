"""Config parsing, overrides and schedules; sampling filters."""

from __future__ import annotations

import numpy as np
import pytest

from sos_rs.sample import filter_logits
from sos_rs.train.config import ConfigError, apply_overrides, from_dict, load
from sos_rs.train.schedule import lr_at

BASE = {"data": {"dir": "d"}, "run": {"out": "o"}}


def test_defaults_and_overrides():
    cfg = from_dict(
        apply_overrides({**BASE, "model": {"d_model": 64}}, ["optim.lr=1e-3", "run.steps=7", "schedule.kind=wsd"])
    )
    assert cfg.optim.lr == 1e-3 and cfg.run.steps == 7 and cfg.schedule.kind == "wsd" and cfg.model["d_model"] == 64


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({**BASE, "optim": {"lrr": 1}}, "[optim] unknown keys: lrr"),
        ({"data": {"dir": "d"}}, "[run] missing required keys: out"),
        ({"run": {"out": "o"}}, "[data] missing required keys: dir"),
        ({**BASE, "model": {"widht": 3}}, "[model] unknown keys for family 'dense': widht"),
        ({**BASE, "model": {"family": "nope"}}, "unknown model family 'nope'"),
        ({**BASE, "extra": {}}, "unknown sections: extra"),
        ({**BASE, "schedule": {"kind": "exp"}}, "schedule.kind = 'exp': expected one of cosine"),
    ],
)
def test_bad_configs_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert needle in str(e.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nout=1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load(str(bad))


def test_schedules():
    # warmup 10 of 110 steps to lr 1.0, min 0.1
    assert lr_at(0, 110, 1.0, 0.1, "cosine", 10) == pytest.approx(0.1)
    assert lr_at(9, 110, 1.0, 0.1, "cosine", 10) == pytest.approx(1.0)
    assert lr_at(60, 110, 1.0, 0.1, "cosine", 10) == pytest.approx(0.55)  # half-way: (1 + 0.1) / 2
    assert lr_at(110, 110, 1.0, 0.1, "linear", 10) == pytest.approx(0.1)
    assert lr_at(60, 110, 1.0, 0.1, "linear", 10) == pytest.approx(0.55)
    assert lr_at(80, 110, 1.0, 0.1, "wsd", 10, 0.2) == pytest.approx(1.0)  # stable phase
    assert lr_at(100, 110, 1.0, 0.1, "wsd", 10, 0.2) == pytest.approx(0.55)  # half-way through the decay
    assert lr_at(50, 110, 1.0, 0.1, "constant", 10) == 1.0


def test_sampling_filters():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    np.testing.assert_allclose(filter_logits(logits, 1.0, 0, 1.0), [0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(filter_logits(logits, 1.0, 2, 1.0), [0.625, 0.375, 0, 0])
    np.testing.assert_allclose(filter_logits(logits, 1.0, 0, 0.7), [0.625, 0.375, 0, 0])  # 0.5 < 0.7 <= 0.8
    assert filter_logits(logits, 0.0, 0, 1.0).tolist() == [1.0, 0, 0, 0]


def test_decode_shows_end_of_text_as_paragraph_breaks():
    from sos_rs.sample import decode

    class Tok:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    assert decode(Tok(), [1, 2, 0, 3, 0], eot_id=0) == "bc\n\nd\n\n"
    assert decode(Tok(), [1, 2], eot_id=None) == "bc"


@pytest.mark.parametrize(
    "override,check",
    [
        ("optim.lr=.001", lambda c: c.optim.lr == 0.001 and isinstance(c.optim.lr, float)),
        ("optim.lr=1e-3", lambda c: c.optim.lr == 0.001),
        ('optim.lr="2e-3"', lambda c: c.optim.lr == 0.002),
        ("optim.min_lr=0", lambda c: c.optim.min_lr == 0.0 and isinstance(c.optim.min_lr, float)),
        ("data.seq_len=64", lambda c: c.data.seq_len == 64),
        ('data.seq_len="64"', lambda c: c.data.seq_len == 64 and isinstance(c.data.seq_len, int)),
        ("run.steps=1e3", lambda c: c.run.steps == 1000 and isinstance(c.run.steps, int)),
        ("run.sample_prompt=123", lambda c: c.run.sample_prompt == "123"),
        ("optim.betas=[0.8, 0.9]", lambda c: c.optim.betas == [0.8, 0.9]),
        ("model.tie_embeddings=true", lambda c: c.model["tie_embeddings"] is True),
        ("model.tie_embeddings=False", lambda c: c.model["tie_embeddings"] is False),
        ("model.n_kv_heads=none", lambda c: c.model["n_kv_heads"] is None),
        ("model.vocab_size=auto", lambda c: c.model["vocab_size"] == "auto"),
        ("model.rope_theta=500000", lambda c: c.model["rope_theta"] == 500000.0),
    ],
)
def test_values_are_coerced_to_their_annotation(override, check):
    assert check(from_dict(apply_overrides({"data": {"dir": "d"}, "run": {"out": "o"}}, [override])))


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.seq_len=abc", "data.seq_len = 'abc': expected an integer"),
        ("data.seq_len=1.5", "data.seq_len = 1.5: expected an integer"),
        ("data.seq_len=true", "data.seq_len = True: expected an integer"),
        ("optim.lr=abc", "optim.lr = 'abc': expected a number"),
        ("optim.lr=nan", "optim.lr = nan: expected a finite number"),
        ("optim.lr=0", "optim.lr = 0: expected a positive number"),
        ("optim.grad_accum=0", "optim.grad_accum = 0: expected a positive integer"),
        ("run.log_every=0", "run.log_every = 0: expected a positive integer"),
        ("run.steps=-3", "run.steps = -3: expected a positive integer"),
        ("run.seed=-1", "run.seed = -1: expected an integer >= 0"),
        ("run.out=[1]", "run.out = [1]: expected a string"),
        ("optim.betas=0.9", "optim.betas = 0.9: expected a list of numbers"),
        ("optim.betas=[1, 0]", "optim.betas = [1, 0]: expected [beta1, beta2], each in [0, 1)"),
        ('optim.betas=[0.9, "x"]', "optim.betas[1] = 'x': expected a number"),
        ("schedule.decay_fraction=0", "schedule.decay_fraction = 0: expected a number in (0, 1]"),
        ("model.tie_embeddings=maybe", "model.tie_embeddings = 'maybe': expected true or false"),
        ("model.tie_embeddings=1", "model.tie_embeddings = 1: expected true or false"),
        ("model.d_model=abc", "model.d_model = 'abc': expected an integer"),
        ("model.n_heads=0", "n_heads must be positive"),
        ("model.n_kv_heads=3", "n_heads=4 is not a multiple of n_kv_heads=3"),
        ("model.n_kv_heads=x", "model.n_kv_heads = 'x': expected an integer or none"),
        ("model.family=7", "model.family = 7: expected a string"),
    ],
)
def test_bad_values_name_key_value_and_expectation(override, needle):
    with pytest.raises(ConfigError) as e:
        from_dict(apply_overrides({"data": {"dir": "d"}, "run": {"out": "o"}, "model": {"n_heads": 4}}, [override]))
    assert needle in str(e.value)


@pytest.mark.parametrize(
    "model,needle",
    [
        ({"family": "moa", "paths": "mha"}, "model.paths = 'mha': expected a list of strings"),
        ({"family": "moa", "paths": ["mha", "zzz"]}, "must be a non-empty ordered subset"),
        ({"family": "moa", "router_top_k": 9}, "router_top_k=9 must be in 1..4"),
        ({"family": "moa", "head_dim": 3}, "head_dim 3 must be even"),
        ({"family": "discoverlm", "ti_lambda": 0}, "keeps the triangle-inequality regulariser on"),
        ({"family": "discoverlm", "ball_pruning": "yes"}, "model.ball_pruning = 'yes': expected true or false"),
    ],
)
def test_model_section_uses_the_family_config_class(model, needle):
    with pytest.raises(ConfigError) as e:
        from_dict({**BASE, "model": model})
    assert needle in str(e.value)


def test_mixture_entries_are_checked():
    ok = from_dict({"data": {"dir": "d", "mixture": [{"dir": "e", "weight": "0.25"}]}, "run": {"out": "o"}})
    assert ok.data.mixture == [{"dir": "e", "weight": 0.25}]
    for entry, needle in (({"dir": "e"}, "exactly `dir` and `weight`"), ({"dir": "e", "weight": 2}, "in (0, 1)")):
        with pytest.raises(ConfigError, match=r"data\.mixture\[0\]"):
            from_dict({"data": {"dir": "d", "mixture": [entry]}, "run": {"out": "o"}})
        with pytest.raises(ConfigError) as e:
            from_dict({"data": {"dir": "d", "mixture": [entry]}, "run": {"out": "o"}})
        assert needle in str(e.value)


def test_saved_config_round_trips():
    """The JSON a run saves (state.json, config.json) loads back to the same config."""
    import json

    cfg = from_dict({**BASE, "model": {"family": "moa", "paths": ["mha", "mix"], "head_dim": None}})
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("override", ["optim.lr=abc", "data.seq_len=abc", "run.log_every=0", "model.n_heads=0"])
def test_sos_train_reports_bad_values_without_a_traceback(tmp_path, override):
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ndir = "{tmp_path}/none"\n[run]\nout = "{tmp_path}/run"\n')
    r = subprocess.run(
        [sys.executable, "-m", "sos_rs", "train", str(cfg), "--set", override], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("sos train: ") and override.split("=")[0].split(".")[1] in r.stderr
    assert "Traceback" not in r.stderr
