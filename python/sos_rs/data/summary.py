"""What `sos prepare` did, in numbers: meta.json's counts and per-stage table, and the closing
summary printed from it. Token counts include one end-of-text token per document; bytes are
UTF-8 bytes of the cleaned text, so bits per byte on a split is
loss_nats / ln 2 * counts[split].tokens / counts[split].bytes."""

from __future__ import annotations

import datetime as _dt
from collections import defaultdict
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from .. import __version__

SPLITS = ("train", "val")


def _sum(parts, key: str) -> int:
    return int(sum(p.stats.get(key, 0) for p in parts))


def stages(parts, n_skipped: int) -> List[Dict[str, Any]]:
    """Documents and bytes into and out of each stage."""
    docs, empty, kept, unique = (_sum(parts, k) for k in ("docs", "empty", "kept", "unique"))
    clean_bytes, kept_bytes, dup_bytes = (_sum(parts, k) for k in ("clean_bytes", "kept_bytes", "dup_bytes"))
    files = sum(p.files for p in parts)
    return [
        {
            "stage": "read",
            "files_in": files + n_skipped,
            "files_skipped": n_skipped,
            "bytes_in": sum(p.file_bytes for p in parts),
            "docs_out": docs,
            "bytes_out": _sum(parts, "raw_bytes"),
        },
        {
            "stage": "clean",
            "docs_in": docs,
            "bytes_in": _sum(parts, "raw_bytes"),
            "docs_out": docs - empty,
            "bytes_out": clean_bytes,
            "empty_dropped": empty,
        },
        {
            "stage": "length filter",
            "docs_in": docs - empty,
            "bytes_in": clean_bytes,
            "docs_out": kept,
            "bytes_out": kept_bytes,
            "short_dropped": _sum(parts, "short"),
            "short_bytes": _sum(parts, "short_bytes"),
            "long_dropped": _sum(parts, "long"),
            "long_bytes": _sum(parts, "long_bytes"),
        },
        {
            "stage": "dedup",
            "docs_in": kept,
            "bytes_in": kept_bytes,
            "docs_out": unique,
            "bytes_out": kept_bytes - dup_bytes,
            "duplicates": kept - unique,
            "duplicate_rate": (kept - unique) / kept if kept else 0.0,
        },
        {
            "stage": "split",
            "docs_in": unique,
            "bytes_in": kept_bytes - dup_bytes,
            **{f"{s}_docs": _sum(parts, f"{s}_docs") for s in SPLITS},
            **{f"{s}_bytes": _sum(parts, f"{s}_bytes") for s in SPLITS},
        },
    ]


def build_meta(
    parts,
    skipped,
    shards,
    tok,
    cfg,
    seconds: Dict[str, float],
    cpu_seconds: Dict[str, float],
    sample: Optional[Dict[str, int]] = None,
) -> Dict[str, Any]:
    import polars
    import tokenizers

    labels = sorted({p.label for p in parts})
    sources: Dict[str, Any] = {}
    for label in labels:
        mine = [p for p in parts if p.label == label]
        counts = {
            s: {
                "documents": _sum(mine, f"{s}_docs"),
                "tokens": shards.tokens.get((s, label), 0),
                "bytes": _sum(mine, f"{s}_bytes"),
            }
            for s in SPLITS
        }
        sources[label] = {
            "shards": {s: shards.names.get((s, label), []) for s in SPLITS},
            "counts": counts,
            "stages": stages(mine, sum(1 for k in skipped if k.source == label)),
        }
    counts = {
        s: {k: sum(src["counts"][s][k] for src in sources.values()) for k in ("documents", "tokens", "bytes")}
        for s in SPLITS
    }
    all_shards: Dict[str, List[str]] = defaultdict(list)
    for (split, _), names in shards.names.items():
        all_shards[split] += names
    table = stages(parts, len(skipped))
    tokens = sum(c["tokens"] for c in counts.values())
    docs = sum(c["documents"] for c in counts.values())
    table.append(
        {
            "stage": "tokenize",
            "docs_in": docs,
            "bytes_in": sum(c["bytes"] for c in counts.values()),
            "tokens_out": tokens,
            **{f"{s}_tokens": counts[s]["tokens"] for s in SPLITS},
        }
    )
    vocab = tok.get_vocab_size()
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "vocab_size": vocab,
        "eot_id": tok.token_to_id(cfg.eot_token),
        "eot_token": cfg.eot_token,
        "tokenizer": "tokenizer.json",
        "dtype": "uint16" if vocab <= 65535 else "uint32",
        "shards": {s: sorted(all_shards.get(s, [])) for s in SPLITS},
        "counts": counts,
        "sources": sources,
        "stages": table,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "cpu_seconds": {k: round(v, 3) for k, v in cpu_seconds.items()},
        "skipped_files": [asdict(s) for s in skipped],
        "tokenizer_sample": sample or {},
        "options": asdict(cfg),
        "versions": {"sos_rs": __version__, "polars": polars.__version__, "tokenizers": tokenizers.__version__},
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def format_summary(meta: Dict[str, Any]) -> str:
    """The closing summary of `sos prepare`."""
    st = {s["stage"]: s for s in meta["stages"]}
    c, secs = meta["counts"], meta["seconds"]
    docs = sum(c[s]["documents"] for s in SPLITS)
    tokens = sum(c[s]["tokens"] for s in SPLITS)
    text_bytes = sum(c[s]["bytes"] for s in SPLITS)
    read = st["read"]
    total = secs.get("total") or float("nan")

    def split_line(split: str) -> str:
        n = c[split]
        return f"{split}: {n['documents']:,} documents, {n['tokens']:,} tokens, {_mb(n['bytes'])}"

    def row(name: str, docs_in: Any, docs_out: int, bytes_in: float, bytes_out: float, note: str) -> str:
        return f"  {name:<16}{docs_in:>12}{docs_out:>12,}{bytes_in / 1e6:>11.2f}{bytes_out / 1e6:>11.2f}  {note}"

    mb_in, mb_out = read["bytes_in"] / 1e6 / total, read["bytes_out"] / 1e6 / total
    lines = [
        f"prepared {docs:,} documents, {tokens:,} tokens ({_mb(text_bytes)} of text) in {total:.1f} s: "
        f"{mb_in:.2f} MB/s of input files ({mb_out:.2f} MB/s of text read)",
        f"  {split_line('train')}   {split_line('val')}",
        f"  vocabulary {meta['vocab_size']:,} ({meta['dtype']}), "
        f"end-of-text {meta['eot_token']!r} = {meta['eot_id']};  "
        f"{text_bytes / max(1, tokens - docs):.3f} bytes per token (end-of-text excluded)",
        f"  duplicate rate {100 * st['dedup']['duplicate_rate']:.2f}% ({st['dedup']['duplicates']:,} dropped)",
        "",
        f"  {'stage':<16}{'docs in':>12}{'docs out':>12}{'MB in':>11}{'MB out':>11}  notes",
        row(
            "read",
            f"{read['files_in']} files",
            read["docs_out"],
            read["bytes_in"],
            read["bytes_out"],
            f"{read['files_skipped']} files skipped",
        ),
    ]
    notes = {
        "clean": lambda s: f"{s['empty_dropped']:,} empty",
        "length filter": lambda s: f"{s['short_dropped']:,} short, {s['long_dropped']:,} long",
        "dedup": lambda s: f"{s['duplicates']:,} duplicates",
    }
    for name in ("clean", "length filter", "dedup"):
        s = st[name]
        lines.append(row(name, f"{s['docs_in']:,}", s["docs_out"], s["bytes_in"], s["bytes_out"], notes[name](s)))
    sp = st["split"]
    split_note = f"train {sp['train_docs']:,} / val {sp['val_docs']:,}"
    lines.append(
        row(
            "split",
            f"{sp['docs_in']:,}",
            sp["train_docs"] + sp["val_docs"],
            sp["bytes_in"],
            sp["train_bytes"] + sp["val_bytes"],
            split_note,
        )
    )
    lines.append("")
    lines.append("  seconds: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in secs.items()))
    if meta.get("cpu_seconds"):
        lines.append(
            "  CPU seconds (all threads): "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in meta["cpu_seconds"].items())
        )
    if len(meta["sources"]) > 1:
        for label, src in meta["sources"].items():
            sc = src["counts"]
            tr, va = sc["train"], sc["val"]
            lines.append(
                f"  source {label!r}: train {tr['documents']:,} docs / {tr['tokens']:,} tokens, "
                f"val {va['documents']:,} docs / {va['tokens']:,} tokens"
            )
    for s in meta["skipped_files"]:
        lines.append(f"  skipped {s['file']}: {s['reason']}")
    return "\n".join(lines)
