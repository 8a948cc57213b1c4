"""`sos init`: the example configs ship inside the package (so a wheel carries them) and are
copied out on request; existing files are kept unless --force. The wheel itself is checked by
scripts/wheel_check.sh (run from scripts/test.sh)."""

from __future__ import annotations

from sos_rs.cli import main
from sos_rs.cli.init import config_dir, example_configs
from sos_rs.train.config import load


def test_package_carries_the_example_configs():
    names = [p.name for p in example_configs()]
    assert {"demo.toml", "sagi_demo.toml"} <= set(names)
    assert config_dir().parent.name == "sos_rs"
    for p in example_configs():
        load(str(p))  # each one is a valid training config


def test_init_copies_and_keeps(tmp_path, capsys):
    out = tmp_path / "cfg"
    assert main(["init", str(out)]) == 0
    for src in example_configs():
        assert (out / src.name).read_bytes() == src.read_bytes()
    (out / "demo.toml").write_text("# mine\n")
    assert main(["init", str(out)]) == 0
    assert (out / "demo.toml").read_text() == "# mine\n"
    kept = capsys.readouterr().out.split("kept existing ", 1)[1].split(" (--force", 1)[0].split(", ")
    assert "demo.toml" in kept
    assert main(["init", str(out), "--force"]) == 0
    assert (out / "demo.toml").read_bytes() == (config_dir() / "demo.toml").read_bytes()


def test_init_into_a_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["init", str(f)]) == 1
    assert "cannot create" in capsys.readouterr().err
