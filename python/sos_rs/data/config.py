"""`PrepareConfig`: every option of `sos prepare`, documented. Kept free of Polars and
tokenizers imports so the `sos` command starts quickly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

EOT = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte tokens and the end-of-text token


@dataclass
class PrepareConfig:
    vocab_size: int = 8192  # BPE vocabulary, end-of-text included (a small corpus may end with fewer)
    val_fraction: float = 0.01  # share of documents held out for validation, chosen by content hash
    text_column: str = "text"  # the text column of jsonl / csv / parquet inputs
    format: str = "auto"  # "auto": by extension, extension-less UTF-8 files sniffed as text; "txt": every file is text
    split_on: Optional[str] = None  # regex: a line it matches separates documents (dropped), e.g. "^%$" for fortunes
    split_blank_lines: bool = False  # txt: a blank line separates documents (default: one file, one document)
    min_chars: int = 1  # drop documents shorter than this after cleaning
    max_chars: int = 0  # drop documents longer than this after cleaning (0: no limit)
    decode_errors: str = "skip"  # invalid UTF-8 in txt/csv: "skip" the file (reported) or "replace" bytes with U+FFFD
    tokenizer: Optional[str] = None  # use this tokenizer.json instead of training one
    eot_token: str = EOT  # the end-of-text special token closing every document
    min_frequency: int = 2  # BPE merges need a pair seen at least this often
    # Train the tokenizer on at most this many MB of cleaned training text: all of it when it fits,
    # else the documents with the smallest key = content hash x a fixed odd constant (mod 2^64),
    # spread evenly over the corpus whatever the file order (see pipeline.choose_sample).
    tokenizer_sample_mb: float = 64.0
    shard_tokens: int = 1 << 28  # start a new shard after this many tokens
    batch_mb: float = 16.0  # text per encoding batch; txt files are read in batches of 4x this
    workers: int = 0  # threads reading and encoding batches (0: one per core); the output never depends on it
    overwrite: bool = False  # replace an earlier preparation in the output directory
    keep_work: bool = False  # keep the cleaned documents (DIR/work/*.parquet) afterwards
    strict: bool = False  # fail when any input file is skipped
    progress: bool = True  # progress lines on stderr

    def check(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.format not in ("auto", "txt"):
            raise ValueError(f"format must be 'auto' or 'txt', got {self.format!r}")
        if self.split_on is not None and not self.split_on:
            raise ValueError("split_on must be a non-empty regular expression")
        if self.decode_errors not in ("skip", "replace"):
            raise ValueError(f"decode_errors must be 'skip' or 'replace', got {self.decode_errors!r}")
        if self.tokenizer is None and self.vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB}, got {self.vocab_size}")
        if self.min_chars < 0 or self.max_chars < 0 or (self.max_chars and self.max_chars < self.min_chars):
            raise ValueError(f"bad length filter: min_chars={self.min_chars}, max_chars={self.max_chars}")
        if self.shard_tokens < 1 or self.batch_mb <= 0:
            raise ValueError("shard_tokens and batch_mb must be positive")
        if not self.tokenizer_sample_mb > 0:
            raise ValueError(f"tokenizer_sample_mb must be positive, got {self.tokenizer_sample_mb}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: one per core), got {self.workers}")
