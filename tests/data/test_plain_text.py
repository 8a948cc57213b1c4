"""Plain text without a known extension (issue 15, item 9): extension-less UTF-8 files are sniffed
as text, `--format txt` reads every file as text, and `--split-on REGEX` splits documents on a
separator line, as Debian's fortune files (`%` lines) need. Documents are read back from the
shards with the independent numpy reader of test_prepare."""

from __future__ import annotations

import pytest

from sos_rs.cli import main
from sos_rs.data import prepare, read_meta
from sos_rs.data.clean import separator_pattern
from tests.data.test_prepare import decoded

FORTUNES = [
    "A day for firm decisions!\nOr is it?",
    "Beware of a dark-haired man with a loud tie.",
    "You will be awarded some great honor.\n\t-- and a 100% chance of rain",
    "Q: Why did the tachyon cross the road?\nA: Because it was on the other side.",
]
OPTS = dict(vocab_size=300, val_fraction=0.0, progress=False)


def run(src, out, **opts):
    """prepare, then the meta as read back (absolute paths)."""
    skipped = prepare([src], out, **OPTS, **opts)["skipped_files"]
    return read_meta(out), skipped


def fortune_file(path, docs=FORTUNES):
    path.write_text("\n%\n".join(docs) + "\n%\n")
    return path


def test_extensionless_text_is_sniffed_and_binary_skipped(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    fortune_file(src / "fortunes")
    (src / "COPYING").write_text("Permission is hereby granted, free of charge.\n")
    (src / "blob").write_bytes(b"\x00\x01\x02binary\xff")
    (src / "image.png").write_bytes(b"\x89PNG\r\n")
    meta, skipped = run(src, tmp_path / "out")
    docs = sorted(decoded(meta, "train"))
    # Without --split-on a file is one document, separator lines included.
    assert docs == sorted(["Permission is hereby granted, free of charge.", "\n%\n".join(FORTUNES) + "\n%"])
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert set(reasons) == {"blob", "image.png"}
    assert "not UTF-8 text" in reasons["blob"]
    assert "--format txt" in reasons["image.png"]


def test_split_on_separator_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    fortune_file(src / "fortunes")
    meta, _ = run(src, tmp_path / "out", split_on="^%$")
    # Exactly the fortunes: the "%" lines are gone, and a "%" inside a line does not split.
    assert sorted(decoded(meta, "train")) == sorted(FORTUNES)


def test_format_txt_reads_any_extension_as_text(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "data.jsonl").write_text("not json at all\n")
    (src / "song.lyrics").write_text("la la la\n")
    (src / "ok.txt").write_text("plain\n")
    _, skipped = run(src, tmp_path / "auto")
    assert {s["file"].rsplit("/", 1)[-1] for s in skipped} == {"data.jsonl", "song.lyrics"}
    meta, skipped = run(src, tmp_path / "txt", format="txt")
    assert sorted(decoded(meta, "train")) == ["la la la", "not json at all", "plain"]
    assert skipped == []


def test_split_on_checks_the_regex():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        separator_pattern("(unclosed")
    with pytest.raises(ValueError, match="matches an empty line"):
        separator_pattern("^$")


def test_cli_fortunes(tmp_path, capsys):
    src = tmp_path / "fortunes"
    src.mkdir()
    fortune_file(src / "art", FORTUNES * 3)
    fortune_file(src / "science", [f"Fortune number {i}: {w}" for i, w in enumerate("abcdefghij")])
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--out", str(out), "--split-on", "^%$", "--vocab-size", "300", "--quiet"]) == 0
    capsys.readouterr()
    assert len(decoded(read_meta(out), "train") + decoded(read_meta(out), "val")) == len(set(FORTUNES)) + 10
    assert main(["prepare", str(src), "--out", str(tmp_path / "o2"), "--split-on", "(", "--quiet"]) == 1
    assert "not a valid regular expression" in capsys.readouterr().err
