"""`sos prepare INPUTS... --out DIR`: clean, deduplicate, split, tokenize and shard a corpus
(python/sos_rs/data/pipeline.py), then print the summary."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    from ..data.config import PrepareConfig

    d = PrepareConfig()
    p = sub.add_parser(
        "prepare",
        help="turn text files into a tokenizer and token shards",
        description="Inputs are files or directories (.txt/.md, .jsonl/.ndjson, .csv/.tsv, .parquet; "
        "extension-less UTF-8 files are read as text, and --format txt reads every file as text); "
        "LABEL=PATH names a source, kept in its own shards for curriculum mixing. Writes DIR/tokenizer.json, "
        "DIR/train-NNNNN.sos, DIR/val-NNNNN.sos and DIR/meta.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file or directory, optionally LABEL=PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=d.vocab_size,
        help=f"BPE vocabulary incl. end-of-text (default {d.vocab_size})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help=f"share of documents for validation, by content hash (default {d.val_fraction})",
    )
    p.add_argument(
        "--text-column", default=d.text_column, help="text column of jsonl/csv/parquet inputs (default 'text')"
    )
    p.add_argument(
        "--format",
        choices=["auto", "txt"],
        default=d.format,
        help="auto (default): by extension, extension-less UTF-8 files read as text; txt: read every file as "
        "plain text whatever its extension",
    )
    p.add_argument(
        "--split-on",
        metavar="REGEX",
        default=d.split_on,
        help="a line matching REGEX separates documents and is dropped (e.g. '^%%$' for fortune files)",
    )
    p.add_argument(
        "--split-blank-lines",
        action="store_true",
        help="txt: a blank line separates documents (default: one file, one document)",
    )
    p.add_argument(
        "--min-chars", type=int, default=d.min_chars, help="drop shorter documents after cleaning (default 1)"
    )
    p.add_argument(
        "--max-chars", type=int, default=d.max_chars, help="drop longer documents after cleaning (default 0: no limit)"
    )
    p.add_argument(
        "--decode-errors",
        choices=["skip", "replace"],
        default=d.decode_errors,
        help="invalid UTF-8: skip the file (default) or replace bad bytes",
    )
    p.add_argument("--tokenizer", metavar="JSON", help="use this tokenizer.json instead of training one")
    p.add_argument("--eot-token", default=d.eot_token, help=f"end-of-text token (default {d.eot_token!r})")
    p.add_argument(
        "--min-frequency", type=int, default=d.min_frequency, help="BPE: minimum pair count to merge (default 2)"
    )
    p.add_argument(
        "--tokenizer-sample-mb",
        type=float,
        default=d.tokenizer_sample_mb,
        help=f"train the tokenizer on at most this many MB of training text, drawn by content hash across the "
        f"corpus (default {d.tokenizer_sample_mb:g})",
    )
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=d.shard_tokens,
        help=f"tokens per shard before starting another (default {d.shard_tokens})",
    )
    p.add_argument("--batch-mb", type=float, default=d.batch_mb, help="text per encoding batch (default 16)")
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="threads encoding batches (default 0: one per core); the output is the same for any number",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier preparation in DIR")
    p.add_argument("--keep-work", action="store_true", help="keep the cleaned documents in DIR/work")
    p.add_argument("--strict", action="store_true", help="fail if any input file is skipped")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.config import PrepareConfig
    from ..data.pipeline import prepare
    from ..data.summary import format_summary

    cfg = PrepareConfig(
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        text_column=args.text_column,
        split_blank_lines=args.split_blank_lines,
        format=args.format,
        split_on=args.split_on,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        decode_errors=args.decode_errors,
        tokenizer=args.tokenizer,
        eot_token=args.eot_token,
        min_frequency=args.min_frequency,
        tokenizer_sample_mb=args.tokenizer_sample_mb,
        shard_tokens=args.shard_tokens,
        batch_mb=args.batch_mb,
        workers=args.workers,
        overwrite=args.overwrite,
        keep_work=args.keep_work,
        strict=args.strict,
        progress=not args.quiet,
    )
    try:
        meta = prepare(args.inputs, args.out, cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"sos prepare: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(meta))
    if not meta.get("shards", {}).get("val"):
        docs = meta.get("counts", {}).get("train", {}).get("documents", "?")
        print(
            f"note: no validation split: {docs} document(s) kept, too few to hold one out (one file is one "
            "document; --split-blank-lines splits it into paragraphs). `sos train` will then score its "
            "validation passes on the training split and label them so.",
            file=sys.stderr,
        )
    return 0
