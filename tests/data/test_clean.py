"""Cleaning rules, one row each: what goes in, what must come out (None: dropped, with why)."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from sos_rs.data.clean import EMPTY, KEPT, LONG, SHORT, clean, val_threshold

ROWS = [
    ("CRLF and lone CR become LF", "a\r\nb\rc", "a\nb\nc", KEPT),
    ("NFD becomes NFC", "cafe\u0301", "caf\u00e9", KEPT),
    ("BOM, zero-width space and controls removed", "\ufeffhi\x00\x07\u200b there\x7f", "hi there", KEPT),
    ("tab kept, odd spaces become spaces", "a\tb\u00a0c\u3000d", "a\tb c d", KEPT),
    ("trailing spaces on lines removed", "line one   \nline two\t\n", "line one\nline two", KEPT),
    ("runs of blank lines become one", "p1\n\n\n\n\np2", "p1\n\np2", KEPT),
    ("inner runs of spaces kept (code, verse)", "def f():\n    return  1", "def f():\n    return  1", KEPT),
    ("line separators become newlines", "a\u2028b\u2029c\x85d", "a\nb\nc\nd", KEPT),
    ("whitespace-only is empty", " \t\n\u00a0\n", None, EMPTY),
    ("null is empty", None, None, EMPTY),
    ("shorter than min_chars", "abc", None, SHORT),
    ("longer than max_chars", "x" * 41, None, LONG),
    ("exactly max_chars is kept", "x" * 40, "x" * 40, KEPT),
]


@pytest.mark.parametrize("what,raw,want,status", ROWS, ids=[r[0] for r in ROWS])
def test_cleaning_rules(what, raw, want, status):
    out = clean(
        pl.LazyFrame({"text": [raw]}, schema={"text": pl.String}), split_blank_lines=False, min_chars=4, max_chars=40
    ).collect()
    assert out["text"][0] == want
    assert out["status"][0] == status
    assert (out["hash"][0] is None) == (want is None)


def test_blank_line_split_and_stable_hash():
    raw = "first para\nstill first\n\n  \nsecond\r\n\r\nthird"
    out = clean(pl.LazyFrame({"text": [raw]}), split_blank_lines=True, min_chars=1, max_chars=0).collect()
    assert out["text"].to_list() == ["first para\nstill first", "second", "third"]
    # BLAKE2b-64 of the UTF-8 bytes, little-endian: pinned so splits never move between versions.
    assert out["hash"][1] == int.from_bytes(hashlib.blake2b(b"second", digest_size=8).digest(), "little")
    assert val_threshold(0.0) == 0 and val_threshold(0.5) == 2**63


def test_nfc_shortcut_equals_full_normalization():
    """`clean.nfc` skips texts below U+0300; the result equals NFC of every text, also for
    combining marks, singletons (U+0340, U+212B), Hangul jamo and Devanagari nukta forms."""
    import random
    import unicodedata

    from sos_rs.data import clean as C

    rng = random.Random(0)
    extra = (0x300, 0x301, 0x327, 0x340, 0x374, 0x37E, 0x387, 0x212B, 0x2126, 0x1E0A, 0x323, 0xFB01, 0x2000)
    pool = [chr(c) for c in range(0x20, 0x2FF)] + [chr(c) for c in extra + (0xAC00, 0x1100, 0x1161, 0x11A8, 0x958)]
    docs = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    s = pl.Series(docs + [None, "plain ascii"], dtype=pl.String)
    got = C.nfc(s).to_list()
    assert got == s.str.normalize("NFC").to_list()
    assert got[:-2] == [unicodedata.normalize("NFC", d) for d in docs]
    assert C.nfc(pl.Series(["e\u0301"])).item() == "\u00e9"
