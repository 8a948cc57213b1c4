"""Cleaning as Polars expressions, so it runs inside Polars' streaming engine: Unicode NFC,
newline and control-character clean-up, whitespace tidying, length filters, a content hash
that is stable across machines and Polars versions, and the hash-based train/validation split.
Deliberately conservative: runs of spaces inside a line are kept (code and verse use them).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import polars as pl

# Why each document was kept or dropped (the `status` column).
KEPT, EMPTY, SHORT, LONG = 0, 1, 2, 3

# Line and paragraph separators (U+2028/2029, NEL) become newlines.
_NEWLINES = r"\r\n?|[\x{85}\x{2028}\x{2029}]"
# C0/C1 control characters except tab and newline, DEL, BOM / zero-width no-break space, zero-width space.
_CONTROLS = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{84}\x{86}-\x{9F}\x{FEFF}\x{200B}]"
# Unicode space separators (no-break, en/em, ideographic, ...) become a plain space.
_SPACES = r"[\x{A0}\x{1680}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]"
# A blank line (possibly holding spaces) separates documents with --split-blank-lines.
_BLANK_LINE = r"\n[ \t]*\n\s*"
_SEP = "\x00"  # safe as a split marker: controls are removed before it is inserted


def normalize_lines(text: pl.Expr) -> pl.Expr:
    """Newlines to \\n, control characters removed; done before any splitting."""
    return text.str.replace_all(_NEWLINES, "\n").str.replace_all(_CONTROLS, "")


# A text made only of characters below U+0300 is already NFC: none of them decomposes or
# composes with another (the combining marks start at U+0300, the singletons above it).
_BEYOND_NFC_SAFE = r"[^\x{0}-\x{2FF}]"


def nfc(s: pl.Series) -> pl.Series:
    """Unicode NFC, run only on the texts holding a character at or above U+0300 (the rest are
    NFC already), which spares most of its cost on mostly-Latin text; same result as
    `s.str.normalize("NFC")`."""
    rows = s.str.contains(_BEYOND_NFC_SAFE).fill_null(False)
    if not rows.any():
        return s
    idx = rows.arg_true()
    return s.scatter(idx, s.gather(idx).str.normalize("NFC"))


def tidy(text: pl.Expr) -> pl.Expr:
    """NFC, odd spaces to ' ', no trailing spaces on lines, at most one blank line in a row,
    no leading or trailing whitespace."""
    return (
        text.map_batches(nfc, return_dtype=pl.String, is_elementwise=True)
        .str.replace_all(_SPACES, " ")
        .str.replace_all(r"[ \t]+\n", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def stable_hash(s: pl.Series) -> pl.Series:
    """64-bit BLAKE2b of each document's UTF-8 bytes. Polars' own `hash` may change between
    versions, which would move documents between train and validation; this never does.
    Two different documents collide with probability about n²/2^65 for n documents."""
    out = [
        None if t is None else int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
        for t in s.to_list()
    ]
    return pl.Series(s.name, out, dtype=pl.UInt64)


def separator_pattern(split_on: str) -> str:
    """The Polars (Rust regex) pattern that removes a whole separator line: a line in which
    `split_on` matches (anchor it with ^...$ to match the whole line, e.g. `^%$` for fortune
    files), with its newline. Raises ValueError naming the problem when `split_on` is not a valid
    regular expression."""
    pattern = rf"(?m)^[^\n]*?(?:{split_on})[^\n]*(?:\n|$)"
    try:
        pl.Series([""]).str.contains(pattern)
    except Exception as e:  # Polars raises ComputeError for a bad regex
        raise ValueError(f"--split-on {split_on!r} is not a valid regular expression: {str(e).strip()[:200]}") from e
    if pl.Series([""]).str.contains(rf"^(?:{split_on})$").item():
        raise ValueError(f"--split-on {split_on!r} matches an empty line; give a pattern for the separator line")
    return pattern


def clean(
    lf: pl.LazyFrame, *, split_blank_lines: bool, min_chars: int, max_chars: int, split_on: Optional[str] = None
) -> pl.LazyFrame:
    """text (raw, may be null) -> text (clean; null unless kept), raw_bytes, status, hash.
    Every input row stays a row (or several, when splitting) so that each stage can be
    counted afterwards from the status column. `split_on` (a regex) makes each line it matches
    a document separator (the line itself is dropped); applied before `split_blank_lines`."""
    lf = lf.select(normalize_lines(pl.col("text").fill_null("")))
    if split_on:
        sep = separator_pattern(split_on)
        lf = lf.select(pl.col("text").str.replace_all(sep, _SEP).str.split(_SEP)).explode("text")
    if split_blank_lines:
        lf = lf.select(pl.col("text").str.replace_all(_BLANK_LINE, _SEP).str.split(_SEP)).explode("text")
    lf = lf.with_columns(
        pl.col("text").str.len_bytes().cast(pl.UInt64).alias("raw_bytes"), tidy(pl.col("text")).alias("text")
    )
    chars = pl.col("text").str.len_chars()
    status = (
        pl.when(chars == 0)
        .then(pl.lit(EMPTY))
        .when(chars < min_chars)
        .then(pl.lit(SHORT))
        .when(pl.lit(max_chars > 0) & (chars > max_chars))
        .then(pl.lit(LONG))
        .otherwise(pl.lit(KEPT))
        .cast(pl.UInt8)
    )
    lf = lf.with_columns(status.alias("status"))
    kept_text = pl.when(pl.col("status") == KEPT).then(pl.col("text"))
    return lf.with_columns(
        kept_text.alias("text"),
        pl.col("text").str.len_bytes().cast(pl.UInt64).alias("clean_bytes"),
        kept_text.map_batches(stable_hash, return_dtype=pl.UInt64, is_elementwise=True).alias("hash"),
    )


def val_threshold(val_fraction: float) -> int:
    """Documents whose hash is below this go to validation."""
    return min(int(val_fraction * 2**64), 2**64 - 1)
