"""`prepare`: text in, `tokenizer.json` + token shards + `meta.json` out, in four stages.

1. read + clean (Polars, streaming): each input file -> cleaned, filtered, hashed documents in a
   parquet part under DIR/work, so memory stays bounded by a batch, not by the corpus.
2. dedup + split: one pass over the parts' 64-bit hashes keeps the first copy of each document
   (input order) and sends a document to validation when its hash is below a threshold.
3. tokenizer: byte-level BPE trained on a bounded sample of the training documents
   (`tokenizer_sample_mb`, drawn by content hash across the whole corpus), or an existing
   tokenizer.json.
4. encode + write: batches of documents -> ids + end-of-text -> one shard series per
   (split, source), through the Rust `ShardWriter`. `workers` threads read and encode batches
   (Polars and `tokenizers` release the GIL; `bpe.PieceEncoder` when the tokenizer allows it)
   while the main thread writes the finished ones in input order, a few batches in flight.

Every document is counted at every stage; unusable files are reported with the reason.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import polars as pl

from .. import _core
from . import bpe
from .clean import EMPTY, KEPT, LONG, SHORT, clean, separator_pattern, val_threshold
from .config import PrepareConfig
from .ingest import Skipped, discover, first_line, kind, parse_input, scan_structured, text_batches
from .meta import META_NAME, write_meta
from .progress import Progress

MB = 1e6


@dataclass
class Part:
    """One parquet file of cleaned documents from one source, with its per-stage counts."""

    label: str
    path: Path
    files: int
    file_bytes: int
    stats: Dict[str, int] = field(default_factory=dict)
    train: Optional[np.ndarray] = None  # per row: kept, and in the training split
    val: Optional[np.ndarray] = None
    hash: Optional[np.ndarray] = None  # per row: the content hash (0 where not kept)
    nbytes: Optional[np.ndarray] = None  # per row: UTF-8 bytes of the cleaned text
    sample: Optional[np.ndarray] = None  # per row: in the tokenizer's training sample


_PART_STATS = {
    "docs": pl.len(),
    "raw_bytes": pl.col("raw_bytes").sum(),
    "empty": (pl.col("status") == EMPTY).sum(),
    "clean_bytes": pl.col("clean_bytes").sum(),
    "short": (pl.col("status") == SHORT).sum(),
    "short_bytes": pl.col("clean_bytes").filter(pl.col("status") == SHORT).sum(),
    "long": (pl.col("status") == LONG).sum(),
    "long_bytes": pl.col("clean_bytes").filter(pl.col("status") == LONG).sum(),
    "kept": (pl.col("status") == KEPT).sum(),
    "kept_bytes": pl.col("clean_bytes").filter(pl.col("status") == KEPT).sum(),
}


def _clear_outputs(out: Path, overwrite: bool) -> None:
    ours = [out / META_NAME, out / "tokenizer.json", *out.glob("*.sos"), *out.glob("*.sos.tmp")]
    present = [p for p in ours if p.exists()]
    if present and not overwrite:
        raise FileExistsError(
            f"{out} already holds a preparation ({present[0].name}, ...); pass --overwrite to replace it"
        )
    for p in present:
        p.unlink()


def _sink(lf: pl.LazyFrame, label: str, path: Path, files: int, file_bytes: int, cfg: PrepareConfig) -> Part:
    clean(
        lf,
        split_blank_lines=cfg.split_blank_lines,
        min_chars=cfg.min_chars,
        max_chars=cfg.max_chars,
        split_on=cfg.split_on,
    ).sink_parquet(path, compression="lz4")  # cheap to write and to read back twice; deleted at the end
    part = Part(label, path, files, file_bytes)
    part.stats = {
        k: int(v or 0) for k, v in pl.scan_parquet(path).select(**_PART_STATS).collect().row(0, named=True).items()
    }
    return part


def read_and_clean(
    inputs: Sequence[str], work: Path, cfg: PrepareConfig, prog: Progress
) -> Tuple[List[Part], List[Skipped]]:
    parts: List[Part] = []
    skipped: List[Skipped] = []
    sources = [parse_input(str(x)) for x in inputs]
    found = [(s, *discover(s, cfg.format)) for s in sources]
    total = sum(f.stat().st_size for _, files, _ in found for f in files)
    prog.stage("read + clean", total / MB)
    done = 0

    def name() -> Path:
        return work / f"part-{len(parts):05d}.parquet"

    for src, files, sk in found:
        first_skip = len(skipped)
        skipped += sk
        txt = [f for f in files if kind(f, cfg.format) == "txt"]
        for used, texts, sk2, size in text_batches(txt, cfg.decode_errors, int(4 * cfg.batch_mb * MB)):
            skipped += sk2
            if used:
                lf = pl.DataFrame({"text": texts}, schema={"text": pl.String}).lazy()
                parts.append(_sink(lf, src.label, name(), len(used), size, cfg))
            done += size + sum(Path(s.file).stat().st_size for s in sk2 if Path(s.file).is_file())
            prog.update(done / MB, f"{src.label}: {len(parts)} parts")
        for f in files:
            if kind(f, cfg.format) == "txt":
                continue
            size = f.stat().st_size
            scanned = scan_structured(f, cfg.text_column, cfg.decode_errors)
            if isinstance(scanned, Skipped):
                skipped.append(scanned)
            else:
                path = name()
                try:
                    part = _sink(scanned, src.label, path, 1, size, cfg)
                except Exception as e:  # a malformed line or bad bytes: report the file, keep going
                    path.unlink(missing_ok=True)
                    skipped.append(Skipped(str(f), f"cannot read as {kind(f)}: {first_line(e)}"))
                else:
                    if part.stats["docs"] == 0:
                        path.unlink()
                        skipped.append(Skipped(str(f), "no documents (0 rows)"))
                    else:
                        parts.append(part)
            done += size
            prog.update(done / MB, f"{src.label}: {len(parts)} parts")
        for s in skipped[first_skip:]:
            s.source = src.label
    return parts, skipped


def dedup_and_split(parts: List[Part], val_fraction: float) -> Dict[str, int]:
    """Marks each part's rows as train / val / dropped. Keeps the first copy of each hash in
    input order; validation = hash below the threshold, and at least one document when the
    fraction is positive and two or more documents remain (the one with the smallest hash)."""
    cols = pl.concat([pl.scan_parquet(p.path).select("hash", "clean_bytes") for p in parts]).collect()
    h = cols["hash"]
    first = (h.is_first_distinct() & h.is_not_null()).to_numpy()
    hv = h.fill_null(0).to_numpy()
    nbytes = cols["clean_bytes"].to_numpy()
    val = first & (hv < np.uint64(val_threshold(val_fraction)))
    if val_fraction > 0 and not val.any() and first.sum() >= 2:
        idx = np.flatnonzero(first)
        val[idx[np.argmin(hv[idx])]] = True
    start = 0
    for p in parts:
        rows = slice(start, start + p.stats["docs"])
        p.train, p.val = first[rows] & ~val[rows], val[rows]
        p.hash, p.nbytes = hv[rows], nbytes[rows]
        kept_bytes = int(nbytes[rows][p.train].sum() + nbytes[rows][p.val].sum())
        p.stats["unique"] = int(first[rows].sum())
        p.stats["duplicates"] = p.stats["kept"] - p.stats["unique"]
        p.stats["dup_bytes"] = p.stats["kept_bytes"] - kept_bytes
        for split, mask in (("train", p.train), ("val", p.val)):
            p.stats[f"{split}_docs"] = int(mask.sum())
            p.stats[f"{split}_bytes"] = int(nbytes[rows][mask].sum())
        start += p.stats["docs"]
    return {"documents": int(first.sum()), "duplicates": int(sum(p.stats["duplicates"] for p in parts))}


def _slices(part: Part, batch_bytes: float) -> List[Tuple[int, int]]:
    n = part.stats["docs"]
    per_doc = max(1.0, part.stats["raw_bytes"] / max(1, n))
    rows = max(1, int(batch_bytes / per_doc))
    return [(o, min(rows, n - o)) for o in range(0, n, rows)]


def _batches(parts: List[Part], batch_bytes: float, splits: Sequence[str]):
    """(part, split, texts) for every batch of kept documents, in input order."""
    for p in parts:
        for off, n in _slices(p, batch_bytes):
            texts = pl.scan_parquet(p.path).slice(off, n).select("text").collect()["text"]
            for split in splits:
                mask = getattr(p, split)[off : off + n]
                if mask.any():
                    yield p, split, texts.filter(pl.Series(mask)).to_list()


SAMPLE_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: hash * SAMPLE_MIX (mod 2^64) is a bijection of the hash


def choose_sample(parts: List[Part], budget_bytes: float) -> Dict[str, int]:
    """Marks `part.sample`: the training documents of the tokenizer. All of them when they fit in
    `budget_bytes`; else those with the smallest key = hash x SAMPLE_MIX (mod 2^64) while their
    cleaned bytes add up to at most the budget (at least one document). The key is a fixed
    function of the content, unrelated to the validation split (which takes the smallest hashes),
    so the sample is spread evenly over the corpus and does not depend on file order, batch
    size or thread count."""
    train = np.concatenate([p.train for p in parts if p.train is not None])
    nbytes = np.concatenate([p.nbytes for p in parts if p.nbytes is not None])
    with np.errstate(over="ignore"):
        keys = np.concatenate([p.hash for p in parts if p.hash is not None]) * SAMPLE_MIX
    chosen = train.copy()
    if int(nbytes[train].sum()) > budget_bytes:
        idx = np.flatnonzero(train)
        order = idx[np.argsort(keys[idx], kind="stable")]
        fits = np.cumsum(nbytes[order]) <= budget_bytes
        fits[0] = True
        chosen[:] = False
        chosen[order[fits]] = True
    start = 0
    for p in parts:
        p.sample = chosen[start : start + p.stats["docs"]]
        start += p.stats["docs"]
    return {
        "documents": int(chosen.sum()),
        "bytes": int(nbytes[chosen].sum()),
        "budget_bytes": int(budget_bytes),
        "train_bytes": int(nbytes[train].sum()),
    }


def make_tokenizer(parts: List[Part], out: Path, cfg: PrepareConfig, prog: Progress):
    if cfg.tokenizer:
        prog.stage("load tokenizer")
        tok = bpe.load(Path(cfg.tokenizer), cfg.eot_token)
        sample: Dict[str, int] = {}
    else:
        sample = choose_sample(parts, cfg.tokenizer_sample_mb * MB)
        prog.stage("train tokenizer", sample["bytes"] / MB)
        used = [0]

        def texts():
            for _, _, batch in _batches(parts, cfg.batch_mb * MB, ["sample"]):
                used[0] += sum(len(t.encode()) for t in batch)
                prog.update(used[0] / MB, "BPE merges run after the last batch")
                yield batch

        tok = bpe.train(texts(), cfg.vocab_size, cfg.eot_token, cfg.min_frequency)
    tok.save(str(out / "tokenizer.json"))
    return tok, sample


class _Shards:
    """One series of shards per (split, source); numbered per split in creation order."""

    def __init__(self, out: Path, vocab: int, eot: int, limit: int):
        self.out, self.vocab, self.eot, self.limit = out, vocab, eot, limit
        self.open: Dict[Tuple[str, str], Any] = {}
        self.names: Dict[Tuple[str, str], List[str]] = {}
        self.tokens: Dict[Tuple[str, str], int] = {}
        self.count = {"train": 0, "val": 0}

    def add(self, split: str, label: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        key = (split, label)
        w = self.open.get(key)
        if w is None:
            name = f"{split}-{self.count[split]:05d}.sos"
            self.count[split] += 1
            w = self.open[key] = _core.ShardWriter(str(self.out / name), self.vocab, self.eot)
            self.names.setdefault(key, []).append(name)
        w.add_documents(tokens, lengths)
        self.tokens[key] = self.tokens.get(key, 0) + len(tokens)
        if w.n_tokens >= self.limit:
            self.open.pop(key).close()

    def close(self) -> None:
        for w in self.open.values():
            w.close()
        self.open.clear()


def _encode_slice(part: Part, off: int, n: int, encode) -> List[Tuple[str, np.ndarray, np.ndarray, int]]:
    """(split, tokens, lengths, text bytes) of one slice of a part, per split holding rows of it."""
    texts = pl.scan_parquet(part.path).slice(off, n).select("text").collect()["text"]
    assert part.nbytes is not None, "dedup_and_split runs first"
    done = []
    for split in ("train", "val"):
        mask = getattr(part, split)[off : off + n]
        if mask.any():
            tokens, lengths = encode(texts.filter(pl.Series(mask)))
            done.append((split, tokens, lengths, int(part.nbytes[off : off + n][mask].sum())))
    return done


def encode_and_write(parts: List[Part], out: Path, tok, cfg: PrepareConfig, prog: Progress) -> _Shards:
    eot = tok.token_to_id(cfg.eot_token)
    shards = _Shards(out, tok.get_vocab_size(), eot, cfg.shard_tokens)
    total = sum(p.stats["train_bytes"] + p.stats["val_bytes"] for p in parts)
    why_not = bpe.piece_encoder_refusal(tok)
    if why_not is None:
        encode = bpe.PieceEncoder(tok, eot).encode
        how = "pieces"
    else:
        prog.warn(f"encoding document by document (slower): {why_not}")

        def encode(texts: pl.Series) -> Tuple[np.ndarray, np.ndarray]:
            return bpe.encode(tok, texts.to_list(), eot)

        how = "tokenizer"
    workers = cfg.workers or os.cpu_count() or 1
    prog.stage("encode + write", total / MB)
    done = 0.0
    jobs = [(p, off, n) for p in parts for off, n in _slices(p, cfg.batch_mb * MB)]
    pending: List[Tuple[Part, Future]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sos-encode")
    try:
        for i in range(len(jobs)):
            while len(pending) < workers + 1 and i + len(pending) < len(jobs):
                p, off, n = jobs[i + len(pending)]
                pending.append((p, pool.submit(_encode_slice, p, off, n, encode)))
            p, fut = pending.pop(0)
            for split, tokens, lengths, nbytes in fut.result():
                shards.add(split, p.label, tokens, lengths)
                done += nbytes
            prog.update(done / MB, f"{sum(shards.tokens.values()):,} tokens ({how}, {workers} threads)")
        shards.close()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shards.open.clear()  # unfinished writers delete their temporary files
    return shards


def prepare(
    inputs: Sequence[Union[str, Path]], out: Union[str, Path], config: Optional[PrepareConfig] = None, **options: Any
) -> Dict[str, Any]:
    """Runs the four stages and writes DIR/meta.json; returns that dict (see `summary.describe`)."""
    from .summary import build_meta

    cfg = config or PrepareConfig(**options)
    cfg.check()
    if cfg.split_on:
        separator_pattern(cfg.split_on)  # a bad regex is reported before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out, cfg.overwrite)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    prog = Progress(cfg.progress, n_stages=4)
    seconds: Dict[str, float] = {}
    cpu: Dict[str, float] = {}
    t0, cpu0 = time.perf_counter(), time.process_time()

    def finish(key: str, done: Optional[float] = None, note: str = "") -> None:
        seconds[key] = prog.end(done, note)
        cpu[key] = prog.last_cpu

    try:
        parts, skipped = read_and_clean([str(x) for x in inputs], work, cfg, prog)
        finish("read_clean", sum(p.file_bytes for p in parts) / MB, f"{len(parts)} parts, {len(skipped)} files skipped")
        for s in skipped:
            prog.warn(f"skipped {s.file}: {s.reason}")
        if skipped and cfg.strict:
            raise ValueError(
                f"{len(skipped)} input file(s) skipped and --strict is set; "
                f"first: {skipped[0].file}: {skipped[0].reason}"
            )
        if not any(p.stats["kept"] for p in parts):
            raise ValueError(
                "no documents left after reading and cleaning" + (f" ({len(skipped)} files skipped)" if skipped else "")
            )
        prog.stage("dedup + split")
        dd = dedup_and_split(parts, cfg.val_fraction)
        finish("dedup_split", note=f"{dd['documents']:,} documents, {dd['duplicates']:,} duplicates dropped")
        tok, sample = make_tokenizer(parts, out, cfg, prog)
        finish("tokenizer", note=f"vocabulary {tok.get_vocab_size():,}")
        shards = encode_and_write(parts, out, tok, cfg, prog)
        finish("encode_write", note=f"{sum(shards.tokens.values()):,} tokens")
        seconds["total"] = time.perf_counter() - t0
        cpu["total"] = time.process_time() - cpu0
        meta = build_meta(parts, skipped, shards, tok, cfg, seconds, cpu, sample)
        write_meta(out, meta)
    except BaseException:
        _clear_outputs(out, overwrite=True)  # a failed run leaves no shards without a meta.json
        raise
    finally:
        if not cfg.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return meta
