"""`sos prepare` end to end on a small mixed corpus: every readable document comes back
(decoded from the shards by an independent numpy reader), duplicates and bad files are counted
and reported without losing the rest, the split is deterministic, labelled sources get their own
shards, and the CLI prints the summary."""

from __future__ import annotations

import json
import struct

import numpy as np
import polars as pl
import pytest
from tokenizers import Tokenizer

from sos_rs.cli import main
from sos_rs.data import Belt, prepare, read_meta

SMALL = dict(vocab_size=300, val_fraction=0.25, progress=False)


def read_shard(path):
    """Documents of a shard, read with numpy from the documented layout (not the Rust reader)."""
    raw = open(path, "rb").read()
    assert raw[:8] == b"SOSTOKEN"
    _, width, _, eot, n_tok, n_doc = struct.unpack("<IIIIQQ", raw[8:40])
    toks = np.frombuffer(raw, {2: "<u2", 4: "<u4"}[width], n_tok, 64)
    area = (n_tok * width + 7) // 8 * 8
    ends = np.frombuffer(raw, "<u8", n_doc, 64 + area)
    docs = np.split(toks, ends[:-1].astype(np.int64)) if n_doc else []
    assert all(len(d) and d[-1] == eot and eot not in d[:-1] for d in docs), (
        "each document ends with its only end-of-text"
    )
    return [d[:-1] for d in docs]


def decoded(meta, split, shards=None):
    tok = Tokenizer.from_file(meta["tokenizer"])
    return [
        tok.decode(d.tolist()) for p in (meta["shards"][split] if shards is None else shards) for d in read_shard(p)
    ]


PARAS = [
    f"Paragraph {i}: the {w} fox jumps over {i * 7} lazy dogs."
    for i, w in enumerate(["quick", "slow", "red", "blue", "odd", "even", "tall", "short"])
]


@pytest.fixture
def mixed(tmp_path):
    """txt (one doc per file and blank-line separated), jsonl, csv, parquet, plus bad files."""
    src = tmp_path / "in"
    (src / "txt").mkdir(parents=True)
    (src / "txt" / "one.txt").write_text("  A whole file is one document.\r\nSecond line.  \n")
    (src / "txt" / "paras.md").write_text(f"{PARAS[0]}\n\n{PARAS[1]}\n \n\n{PARAS[2]}\n")
    (src / "bad.txt").write_bytes(b"valid start \xff\xfe then invalid")
    (src / "empty.txt").write_bytes(b"")
    (src / "blank.txt").write_text("  \n\t\n")
    (src / "notes.pdf").write_bytes(b"%PDF")
    (src / "rows.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate([PARAS[3], PARAS[0], "", None])) + "\n"
    )
    (src / "nocol.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (src / "broken.jsonl").write_text(json.dumps({"text": PARAS[4]}) + "\n{not json\n")
    (src / "latin1.csv").write_bytes(b'text\n"caf\xe9 au lait"\n')
    (src / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    pl.DataFrame({"text": [PARAS[5], PARAS[6]], "n": [1, 2]}).write_csv(src / "table.csv")
    pl.DataFrame({"text": [PARAS[7]]}).write_parquet(src / "data.parquet")
    return src


EXPECTED_DOCS = {"A whole file is one document.\nSecond line.", *PARAS[:4], *PARAS[5:]}
EXPECTED_SKIPS = {
    "bad.txt": "not UTF-8: byte 0xff at offset 12",
    "empty.txt": "empty file",
    "blank.txt": "only whitespace",
    "notes.pdf": "unsupported extension",
    "nocol.jsonl": "no column 'text'",
    "broken.jsonl": "cannot read as jsonl",
    "latin1.csv": "cannot read as csv",
    "latin1.jsonl": "cannot read as jsonl",
}


def test_every_readable_document_comes_back_once(mixed, tmp_path):
    meta = prepare([mixed], tmp_path / "out", split_blank_lines=True, **SMALL)
    back = read_meta(tmp_path / "out")
    assert back["counts"] == meta["counts"] and all(
        p.startswith("/") for p in back["shards"]["train"] + [back["tokenizer"]]
    )
    got = decoded(back, "train") + decoded(back, "val")
    assert sorted(got) == sorted(EXPECTED_DOCS), "documents lost, duplicated or altered"
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in meta["skipped_files"]}
    assert set(skipped) == set(EXPECTED_SKIPS)
    for name, needle in EXPECTED_SKIPS.items():
        assert needle in skipped[name], (name, skipped[name])
    st = {s["stage"]: s for s in meta["stages"]}
    assert st["dedup"]["duplicates"] == 1  # PARAS[0] appears in paras.md and rows.jsonl
    assert st["clean"]["empty_dropped"] == 2  # "" and null in rows.jsonl
    assert st["split"]["train_docs"] + st["split"]["val_docs"] == len(EXPECTED_DOCS)
    assert meta["counts"]["val"]["documents"] >= 1
    for split in ("train", "val"):
        c = meta["counts"][split]
        assert c["bytes"] == sum(len(t.encode()) for t in decoded(read_meta(tmp_path / "out"), split))
        assert c["tokens"] == sum(
            len(d) + 1 for p in read_meta(tmp_path / "out")["shards"][split] for d in read_shard(p)
        )


def test_replace_keeps_invalid_utf8_and_strict_refuses(mixed, tmp_path):
    meta = prepare([mixed / "bad.txt", mixed / "txt"], tmp_path / "o1", decode_errors="replace", **SMALL)
    assert any(
        "\ufffd" in t for t in decoded(read_meta(tmp_path / "o1"), "train") + decoded(read_meta(tmp_path / "o1"), "val")
    )
    assert meta["skipped_files"] == []
    with pytest.raises(ValueError, match="--strict"):
        prepare([mixed], tmp_path / "o2", strict=True, **SMALL)
    with pytest.raises(ValueError, match="no documents left"):
        prepare([mixed / "empty.txt", mixed / "blank.txt"], tmp_path / "o3", **SMALL)


def test_output_is_deterministic_and_not_silently_overwritten(mixed, tmp_path):
    a = prepare([mixed], tmp_path / "a", **SMALL)
    b = prepare([mixed], tmp_path / "b", **SMALL)
    for split in ("train", "val"):
        for x, y in zip(read_meta(tmp_path / "a")["shards"][split], read_meta(tmp_path / "b")["shards"][split]):
            assert open(x, "rb").read() == open(y, "rb").read()
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    assert a["counts"] == b["counts"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare([mixed], tmp_path / "a", **SMALL)
    prepare([mixed / "txt"], tmp_path / "a", overwrite=True, **SMALL)
    assert not (tmp_path / "a" / "work").exists()


def test_labelled_sources_get_their_own_shards_and_feed_a_belt(mixed, tmp_path):
    prepare(
        [f"prose={mixed / 'txt'}", f"tables={mixed / 'table.csv'}"], tmp_path / "out", split_blank_lines=True, **SMALL
    )
    meta = read_meta(tmp_path / "out")
    assert set(meta["sources"]) == {"prose", "tables"}
    prose = meta["sources"]["prose"]["shards"]
    tables = decoded(meta, "train", meta["sources"]["tables"]["shards"]["train"]) + decoded(
        meta, "val", meta["sources"]["tables"]["shards"]["val"]
    )
    assert sorted(tables) == sorted(PARAS[5:7])
    assert all(t not in PARAS[5:7] for t in decoded(meta, "train", prose["train"]))
    belt = Belt(meta["shards"]["train"], seq_len=8, batch_size=2, vocab_size=meta["vocab_size"])
    ids, _ = belt.next_batch()
    assert ids.max() < meta["vocab_size"] and belt.eot_id == meta["eot_id"]


def test_a_reused_tokenizer_keeps_the_vocabulary(mixed, tmp_path):
    prepare([mixed / "txt"], tmp_path / "first", **SMALL)
    meta = prepare(
        [mixed / "table.csv"], tmp_path / "second", tokenizer=str(tmp_path / "first" / "tokenizer.json"), **SMALL
    )
    assert meta["vocab_size"] == read_meta(tmp_path / "first")["vocab_size"]
    assert (tmp_path / "second" / "tokenizer.json").read_text() == (tmp_path / "first" / "tokenizer.json").read_text()
    assert sorted(
        decoded(read_meta(tmp_path / "second"), "train") + decoded(read_meta(tmp_path / "second"), "val")
    ) == sorted(PARAS[5:7])


def test_literal_end_of_text_inside_a_document_is_text(tmp_path):
    (tmp_path / "a.txt").write_text("before <|endoftext|> after")
    (tmp_path / "b.txt").write_text("another document entirely")
    prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", **SMALL)
    meta = read_meta(tmp_path / "out")
    docs = decoded(meta, "train") + decoded(meta, "val")  # read_shard asserts one end-of-text per doc
    assert "before <|endoftext|> after" in docs


def test_cli_prints_the_summary(mixed, tmp_path, capsys):
    rc = main(
        ["prepare", str(mixed), "--out", str(tmp_path / "cli"), "--vocab-size", "300", "--split-blank-lines", "--quiet"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for needle in ("documents", "tokens", "duplicate rate", "bytes per token", "MB/s", "dedup", "skipped"):
        assert needle in out, needle
    assert main(["prepare", str(mixed), "--out", str(tmp_path / "cli"), "--quiet"]) == 1  # exists, no --overwrite


def test_a_failed_run_leaves_no_shards_behind(mixed, tmp_path, monkeypatch):
    from sos_rs.data import pipeline

    real, calls = pipeline._encode_slice, []

    def fail_on_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(pipeline, "_encode_slice", fail_on_third_batch)
    with pytest.raises(RuntimeError, match="disk full"):
        # tiny batches and shards: finished shards exist on disk when the failure hits
        prepare([mixed], tmp_path / "out", batch_mb=1e-6, shard_tokens=1, workers=1, **SMALL)
    assert len(calls) in (3, 4)  # the pool may have started the next batch already
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != "work")
    assert left == [], f"a failed run left {left}"
    monkeypatch.undo()
    prepare([mixed], tmp_path / "out", **SMALL)  # and needs no --overwrite afterwards


TRICKY = list("aaabbcst'' \n\n\t  ..,!?12é漢字ßΩ\u0301\u00a0\u2028🙂\u0660\u00b2\u180e\u200b\x85\u3000-_") + [
    "'s",
    "'ll",
    "'re",
    " 's",
    "\n \n",
    "   ",
    "<|endoftext|>",
]


def tricky_docs(n=1500, seed=0):
    import random

    rng = random.Random(seed)
    docs = ["".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 60))) for _ in range(n)]
    return docs + ["", " ", "\n", "a  b", "a \n b", "x\n\n  y", "it's  's", "  'sup", "end  ", "end\n\n", "\x00a b"]


def test_piece_encoder_gives_the_tokenizers_ids(monkeypatch):
    """PieceEncoder == tokenizers' own per-document encoding, byte for byte, on raw text full of
    whitespace runs, contractions, combining marks and odd spaces; and characters the two regex
    engines would split differently go through the tokenizer (the probe), never silently."""
    from sos_rs.data import bpe

    docs = tricky_docs()
    tok = bpe.train([docs], 400)
    eot = tok.token_to_id(bpe.EOT)
    ref = bpe.encode(tok, docs, eot)
    enc = bpe.PieceEncoder(tok, eot)
    for chunk in (docs[:500], docs[500:], docs):
        got, want = enc.encode(pl.Series(chunk)), bpe.encode(tok, chunk, eot)
        assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    assert enc.odd == {"\x00"} and len(enc.cache[0]) > 100, "the pieces, not the fallback, did the work"
    # an engine that disagrees on one class (digits '9' and Arabic-Indic digits not \p{N}): caught
    monkeypatch.setattr(bpe, "_PIECES", bpe._PIECES.replace(r"\p{N}", r"[0-8]"))
    docs9 = [d + " 19x" for d in docs]
    ref9 = bpe.encode(tok, docs9, eot)
    enc = bpe.PieceEncoder(tok, eot)
    got = enc.encode(pl.Series(docs9))
    assert "9" in enc.odd and np.array_equal(got[0], ref9[0]) and np.array_equal(got[1], ref9[1])
    # without the probe the difference would reach the shards
    monkeypatch.setattr(bpe.PieceEncoder, "_probe", lambda self, chars: None)
    got = bpe.PieceEncoder(tok, eot).encode(pl.Series(docs9))
    assert not np.array_equal(got[0], ref9[0])
    assert ref[0].size  # (the reference itself is not empty)


def test_piece_encoder_refuses_tokenizers_it_cannot_reproduce():
    from tokenizers import normalizers

    from sos_rs.data import bpe

    tok = bpe.train([["some text to learn from", "and more text"]], 300)
    assert bpe.piece_encoder_refusal(tok) is None
    tok.normalizer = normalizers.Lowercase()
    assert "normalizer" in bpe.piece_encoder_refusal(tok)
    with pytest.raises(ValueError, match="normalizer"):
        bpe.PieceEncoder(tok, 0)


def shard_bytes(out):
    meta = read_meta(out)
    return [open(p, "rb").read() for s in ("train", "val") for p in meta["shards"][s]]


def test_shards_are_those_of_the_per_document_path_for_any_thread_count(tmp_path, monkeypatch):
    """Same tokenizer -> the same shards, byte for byte, from the piece encoder with 1 or 3
    threads and tiny batches as from tokenizers' per-document encoding (the path before it)."""
    from sos_rs.data import bpe

    src = tmp_path / "in"
    src.mkdir()
    docs = tricky_docs(600, seed=1)
    for i in range(0, len(docs), 50):
        (src / f"d{i:04d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[i : i + 50]))
    opts = dict(SMALL, batch_mb=2e-3, shard_tokens=3000)
    prepare([src], tmp_path / "a", workers=1, **opts)
    tok = str(tmp_path / "a" / "tokenizer.json")
    prepare([src], tmp_path / "b", workers=3, tokenizer=tok, **opts)
    monkeypatch.setattr(bpe, "piece_encoder_refusal", lambda tok: "forced: the per-document path")
    prepare([src], tmp_path / "c", workers=2, tokenizer=tok, **opts)
    a, b, c = (shard_bytes(tmp_path / x) for x in "abc")
    assert len(a) > 2 and a == b == c


def test_the_tokenizer_sample_is_bounded_and_independent_of_file_order(tmp_path):
    """With a budget below the corpus the tokenizer sees at most that many bytes (at least one
    document), and the same documents whatever the files' names and order."""
    docs = [f"document {i}: " + " ".join(f"w{(i * j) % 97}" for j in range(40)) for i in range(200)]
    for name, order in (("x", docs), ("y", docs[::-1])):
        (tmp_path / name).mkdir()
        for k, chunk in enumerate(np.array_split(np.arange(len(order)), 7)):
            (tmp_path / name / f"{k}.jsonl").write_text("".join(json.dumps({"text": order[i]}) + "\n" for i in chunk))
    budget_mb = 2e-3
    mx = prepare([tmp_path / "x"], tmp_path / "ox", tokenizer_sample_mb=budget_mb, **SMALL)
    my = prepare([tmp_path / "y"], tmp_path / "oy", tokenizer_sample_mb=budget_mb, workers=1, **SMALL)
    sx = mx["tokenizer_sample"]
    assert 1 <= sx["documents"] < len(docs) and sx["bytes"] <= budget_mb * 1e6 < sx["train_bytes"]
    assert sx == my["tokenizer_sample"]
    assert (tmp_path / "ox" / "tokenizer.json").read_text() == (tmp_path / "oy" / "tokenizer.json").read_text()
    full = prepare([tmp_path / "x"], tmp_path / "of", **SMALL)["tokenizer_sample"]
    assert full["bytes"] == full["train_bytes"] > sx["bytes"]
    with pytest.raises(ValueError, match="tokenizer_sample_mb"):
        prepare([tmp_path / "x"], tmp_path / "oz", tokenizer_sample_mb=0, **SMALL)
