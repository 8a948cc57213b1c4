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
        ({**BASE, "schedule": {"kind": "exp"}}, "schedule.kind 'exp'"),
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
