"""Finding and opening inputs. Each INPUT is a file or a directory (searched recursively),
optionally labelled `LABEL=PATH` to name its source for curriculum mixing. Every file becomes a
Polars LazyFrame with one raw `text` column: .txt/.md are read here (one document per file, or
split on blank lines later), .jsonl/.ndjson, .csv/.tsv and .parquet are scanned lazily by
Polars. Extension-less files (`README`, Debian's fortune files) are read as text when their
start is UTF-8 without NUL bytes (sniffed); with `--format txt` every file is read as text,
whatever its extension. A file that cannot be used is returned as a `Skipped` record with the reason, never
raised, so one bad file never stops the rest of a corpus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Literal, Tuple, Union

import polars as pl

TEXT = {".txt", ".text", ".md"}
JSONL = {".jsonl", ".ndjson"}
CSV = {".csv", ".tsv"}
PARQUET = {".parquet"}
KNOWN = TEXT | JSONL | CSV | PARQUET
DEFAULT_LABEL = "main"
_LABEL = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class Source:
    """One INPUT argument: a label and a file or directory."""

    label: str
    path: Path


@dataclass
class Skipped:
    file: str
    reason: str
    source: str = ""


def parse_input(arg: str) -> Source:
    """`LABEL=PATH` names a source; a plain PATH (or one that exists as written, even with an
    '=' in it) belongs to the default source."""
    label, eq, rest = arg.partition("=")
    if eq and _LABEL.fullmatch(label) and not Path(arg).exists():
        return Source(label, Path(rest))
    return Source(DEFAULT_LABEL, Path(arg))


SNIFF_BYTES = 8192


def looks_like_text(path: Path) -> bool:
    """True when the file's first 8 KiB are UTF-8 (a multi-byte character cut at the end is
    allowed) without NUL bytes: how an extension-less file is recognised as plain text."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return len(head) == SNIFF_BYTES and e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def discover(source: Source, fmt: str = "auto") -> Tuple[List[Path], List[Skipped]]:
    """Files of a source in sorted order (so output never depends on directory listing order).
    Hidden files are ignored. With fmt "auto", files with a known extension are kept, and
    extension-less files when they look like UTF-8 text; other files are reported as skipped.
    With fmt "txt" every file is kept (and read as text). A single file named explicitly is read
    as text whatever its extension."""
    p = source.path
    if p.is_file():
        return [p], []
    if not p.is_dir():
        return [], [Skipped(str(p), "no such file or directory")]
    files, skipped = [], []
    for f in sorted(p.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
            continue
        if fmt == "txt" or f.suffix.lower() in KNOWN or (not f.suffix and looks_like_text(f)):
            files.append(f)
        elif not f.suffix:
            skipped.append(Skipped(str(f), "no extension and not UTF-8 text (binary?)"))
        else:
            skipped.append(
                Skipped(
                    str(f),
                    f"unsupported extension {f.suffix!r} (txt, md, jsonl, ndjson, csv, tsv, parquet; "
                    "--format txt reads every file as text)",
                )
            )
    if not files and not skipped:
        skipped.append(Skipped(str(p), "empty directory"))
    return files, skipped


def kind(path: Path, fmt: str = "auto") -> str:
    """How a file is read: "txt", "jsonl", "csv" or "parquet" (always "txt" with fmt "txt")."""
    if fmt == "txt":
        return "txt"
    s = path.suffix.lower()
    for name, exts in (("jsonl", JSONL), ("csv", CSV), ("parquet", PARQUET)):
        if s in exts:
            return name
    return "txt"


def read_text_file(path: Path, decode_errors: str) -> Union[str, Skipped]:
    """The file's text, or why it is skipped. With decode_errors='replace', invalid UTF-8
    becomes U+FFFD instead of skipping the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return Skipped(str(path), f"cannot read: {e.strerror or e}")
    if not data:
        return Skipped(str(path), "empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if decode_errors != "replace":
            return Skipped(
                str(path),
                f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (use --decode-errors replace to keep it)",
            )
        text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return Skipped(str(path), "empty file (only whitespace)")
    return text


def text_batches(
    files: List[Path], decode_errors: str, max_bytes: int
) -> Iterator[Tuple[List[Path], List[str], List[Skipped], int]]:
    """Plain-text files grouped into batches of about `max_bytes`, so memory stays bounded:
    (files used, their texts, files skipped, bytes on disk of the files used)."""
    used: List[Path] = []
    texts: List[str] = []
    skipped: List[Skipped] = []
    size = 0
    for f in files:
        got = read_text_file(f, decode_errors)
        if isinstance(got, Skipped):
            skipped.append(got)
            continue
        used.append(f)
        texts.append(got)
        size += f.stat().st_size
        if size >= max_bytes:
            yield used, texts, skipped, size
            used, texts, skipped, size = [], [], [], 0
    if used or skipped:
        yield used, texts, skipped, size


def scan_structured(path: Path, text_column: str, decode_errors: str) -> Union[pl.LazyFrame, Skipped]:
    """A lazy scan of one jsonl/csv/parquet file reduced to its text column (as String), or why
    it is skipped. Only the schema is read here; parse errors surface when the scan runs."""
    k = kind(path)
    try:
        if path.stat().st_size == 0:
            return Skipped(str(path), "empty file")
        if k == "jsonl":
            lf = pl.scan_ndjson(path, infer_schema_length=1000)
        elif k == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            enc: Literal["utf8", "utf8-lossy"] = "utf8-lossy" if decode_errors == "replace" else "utf8"
            lf = pl.scan_csv(path, separator=sep, infer_schema=False, encoding=enc)
        else:
            lf = pl.scan_parquet(path)
        names = lf.collect_schema().names()
    except Exception as e:  # Polars raises several error types for unreadable input
        return Skipped(str(path), f"cannot read as {k}: {first_line(e)}")
    if text_column not in names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return Skipped(str(path), f"no column {text_column!r} (columns: {shown}; choose one with --text-column)")
    return lf.select(pl.col(text_column).cast(pl.String).alias("text"))


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
