"""The tokenizer: a byte-level BPE trained with HF `tokenizers` (every byte is in the base
alphabet, so any text encodes and decodes back exactly), one end-of-text special token closing
each document, and batched encoding (parallel inside `tokenizers`) straight into numpy."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import EOT, MIN_VOCAB

if TYPE_CHECKING:
    import polars as pl


def train(
    texts: Iterable[Sequence[str]], vocab_size: int, eot: str = EOT, min_frequency: int = 2, length: int = 0
) -> Tokenizer:
    """Trains on batches of documents. The end-of-text token gets id 0."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is below {MIN_VOCAB} (256 bytes + end-of-text)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eot],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length or None)
    return prepared(tok, eot)


def load(path: Path, eot: str = EOT) -> Tokenizer:
    return prepared(Tokenizer.from_file(str(path)), eot)


def prepared(tok: Tokenizer, eot: str) -> Tokenizer:
    if tok.token_to_id(eot) is None:
        raise ValueError(f"the tokenizer has no end-of-text token {eot!r} (pass the right one with --eot-token)")
    # The literal text "<|endoftext|>" inside a document is ordinary text, not a boundary.
    tok.encode_special_tokens = True
    return tok


def encode(tok: Tokenizer, texts: List[str], eot_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths): every document's ids followed by `eot_id`, end to end as uint32, and
    each document's length including its end-of-text token."""
    ids = [e.ids for e in tok.encode_batch_fast(texts)]
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.uint32, count=len(ids))
    total = int(lengths.sum(dtype=np.int64))
    flat = np.fromiter(chain.from_iterable(chain(x, (eot_id,)) for x in ids), dtype=np.uint32, count=total)
    return flat, lengths


# --- the piece encoder: the same ids as `encode`, without running the tokenizer per document ---

# The GPT-2 pattern of `ByteLevel(use_regex=True)` is
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Polars' regex engine has no look-ahead. `\s+(?!\S)` only differs from `\s+` on a whitespace run of
# two or more characters followed by a non-space: it stops one character early, and that last
# character starts the next piece (" word", or "\n" alone). _MARK puts a NUL before that character
# (cleaned text holds no NUL), and _PIECES, which never matches NUL, then ends the run there.
_MARK = r"(\s+)(\s\S)"
_MARK_TO = "${1}\x00${2}"
_PIECES = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}\x00]+|\s+"
CACHE_PIECES = 1 << 21  # distinct pieces whose ids are kept (about 100-200 MB at most)


def pieces(texts: "pl.Series") -> "pl.Series":
    """Each text split into the pieces the tokenizer's ByteLevel pre-tokenizer makes (a list per text)."""
    return texts.str.replace_all(_MARK, _MARK_TO).str.extract_all(_PIECES)


def piece_encoder_refusal(tok: Tokenizer) -> Optional[str]:
    """None when `PieceEncoder` gives exactly `encode`'s ids for this tokenizer, else why not. It
    does when a document's ids are the concatenation of its pre-tokenized pieces' ids: no
    normalizer, a ByteLevel pre-tokenizer with the GPT-2 regex and no prefix space, no
    post-processor that adds tokens, no truncation or padding, a BPE model without dropout, and
    added tokens only special ones (which `prepared` makes ordinary text)."""
    import json

    js = json.loads(tok.to_str())
    pre = js.get("pre_tokenizer") or {}
    post = js.get("post_processor")
    model = js.get("model") or {}
    checks = [
        (js.get("normalizer") is None, "it has a normalizer"),
        (
            pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"),
            "its pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True)",
        ),
        (post is None or post.get("type") == "ByteLevel", "it has a post-processor"),
        (js.get("truncation") is None and js.get("padding") is None, "it truncates or pads"),
        (model.get("type") == "BPE" and not model.get("dropout"), "its model is not a BPE without dropout"),
        (all(t.get("special") for t in js.get("added_tokens", [])), "it has non-special added tokens"),
    ]
    return next((why for ok, why in checks if not ok), None)


class PieceEncoder:
    """`encode` for tokenizers `piece_encoder_refusal` accepts, at a fraction of the cost: Polars
    splits the documents into pre-tokenizer pieces (Rust, no per-document Python), each distinct
    piece is encoded once by the tokenizer and its ids kept (up to CACHE_PIECES pieces), and a
    join maps pieces to ids. Same ids, byte for byte, as `encode`: the split is the ByteLevel
    regex rewritten without look-ahead (see _MARK), BPE never merges across pieces, and every
    character is checked once against the tokenizer's own pre-tokenizer (`_probe`): a document
    holding a character the two regex engines classify differently (a Unicode-version edge) is
    encoded by `encode` instead. Safe to call from several threads; the result never depends on
    the call order."""

    def __init__(self, tok: Tokenizer, eot_id: int):
        import threading

        import polars as pl

        why = piece_encoder_refusal(tok)
        if why:
            raise ValueError(f"PieceEncoder cannot reproduce this tokenizer exactly: {why}")
        self.tok, self.eot_id = tok, eot_id
        # The cache: piece -> k (a frame, for Polars joins) and the ids of piece k in
        # ids[offsets[k]:offsets[k + 1]]; replaced whole under the lock, read as a snapshot.
        index = pl.DataFrame(schema={"piece": pl.String, "k": pl.UInt32})
        self.cache: Tuple[pl.DataFrame, np.ndarray, np.ndarray] = (
            index,
            np.zeros(1, np.int64),
            np.zeros(0, np.uint32),
        )
        self.checked: set = set()
        self.odd: set = {"\x00"}  # characters whose documents go through `encode`
        self.lock = threading.Lock()

    def _probe(self, chars: Iterable[str]) -> None:
        """Marks each character odd unless both engines split its probe texts alike."""
        import polars as pl

        chars = sorted(set(chars) - self.checked - self.odd)
        if not chars:
            return
        probes = [[f"a{c}", f"1{c}", f".{c}", f" {c}a", f"{c}{c} x", f"x\n{c}'s", f"{c}  ."] for c in chars]
        flat = [p for ps in probes for p in ps]
        ours = pieces(pl.Series(flat, dtype=pl.String)).to_list()
        pre = self.tok.pre_tokenizer
        theirs = [[p[a:b] for _, (a, b) in pre.pre_tokenize_str(p)] for p in flat]
        for i, c in enumerate(chars):
            same = ours[7 * i : 7 * i + 7] == theirs[7 * i : 7 * i + 7]
            (self.checked if same else self.odd).add(c)

    def encode(self, texts: "pl.Series") -> Tuple[np.ndarray, np.ndarray]:
        """(tokens, lengths) as `encode(tok, texts.to_list(), eot_id)` returns them."""
        import polars as pl

        texts = texts.cast(pl.String).fill_null("").rename("text")
        odd = self._odd_rows(texts)
        if odd is not None:
            return self._mixed(texts, odd)
        split = pieces(texts)
        counts = split.list.len().to_numpy().astype(np.int64)
        flat = split.explode().drop_nulls().rename("piece").to_frame()  # an empty text explodes to a null
        index, offsets, ids = self.cache
        found = flat.join(index, on="piece", how="left", maintain_order="left")["k"]
        miss = found.is_null().to_numpy()
        k = found.fill_null(0).to_numpy().astype(np.int64)
        if miss.any():
            missing = flat.filter(pl.Series(miss))
            new = missing["piece"].unique()
            with self.lock:
                self._probe(set().union(*new.to_list()))
            if self._odd_rows(texts) is not None:
                return self.encode(texts)
            index, offsets, ids = self._add(new, [e.ids for e in self.tok.encode_batch_fast(new.to_list())])
            k[miss] = missing.join(index, on="piece", how="left", maintain_order="left")["k"].to_numpy()
        n = offsets[k + 1] - offsets[k]
        toks = ids[np.repeat(offsets[k] - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))]
        cs = np.zeros(len(n) + 1, np.int64)
        np.cumsum(n, out=cs[1:])
        ends = np.cumsum(counts)
        lengths = (cs[ends] - cs[ends - counts] + 1).astype(np.uint32)
        out = np.full(int(lengths.sum(dtype=np.int64)), self.eot_id, np.uint32)
        body = np.ones(len(out), bool)
        body[np.cumsum(lengths, dtype=np.int64) - 1] = False
        out[body] = toks
        return out, lengths

    def _add(self, new: "pl.Series", new_ids: List[List[int]]) -> Tuple["pl.DataFrame", np.ndarray, np.ndarray]:
        """The cache with `new` pieces added (those another thread has not added meanwhile); kept
        as the cache while it holds fewer than CACHE_PIECES pieces, else used for this batch only."""
        import polars as pl

        with self.lock:
            index, offsets, ids = self.cache
            fresh = (
                pl.DataFrame({"piece": new, "j": np.arange(len(new), dtype=np.int64)})
                .join(index, on="piece", how="anti")
                .sort("j")
            )
            j = fresh["j"].to_numpy()
            add = [new_ids[i] for i in j]
            lens = np.fromiter((len(x) for x in add), np.int64, len(add))
            offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(lens)])
            ids = np.concatenate([ids, np.fromiter(chain.from_iterable(add), np.uint32, int(lens.sum()))])
            k = pl.Series("k", np.arange(len(index), len(index) + len(j)), dtype=pl.UInt32)
            index = pl.concat([index, fresh.select("piece", k)], rechunk=False)
            if index.n_chunks() > 64:
                index = index.rechunk()
            if len(index) <= CACHE_PIECES:
                self.cache = (index, offsets, ids)
            return index, offsets, ids

    def _odd_rows(self, texts: "pl.Series") -> Optional[np.ndarray]:
        pattern = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in sorted(self.odd)) + "]"
        rows = texts.str.contains(pattern).fill_null(False).to_numpy()
        return rows if rows.any() else None

    def _mixed(self, texts: "pl.Series", odd: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Documents with odd characters through `encode`, the rest through the pieces, in order."""
        import polars as pl

        lengths = np.zeros(len(texts), np.uint32)
        parts = []
        for mask, fn in (
            (~odd, lambda t: self.encode(t)),
            (odd, lambda t: encode(self.tok, t.to_list(), self.eot_id)),
        ):
            if mask.any():
                toks, lens = fn(texts.filter(pl.Series(mask)))
                lengths[mask] = lens
                parts.append((mask, toks, lens))
        out = np.empty(int(lengths.sum(dtype=np.int64)), np.uint32)
        starts = np.cumsum(lengths, dtype=np.int64) - lengths
        for mask, toks, lens in parts:
            first = np.repeat(starts[mask] - (np.cumsum(lens, dtype=np.int64) - lens), lens)
            out[first + np.arange(len(toks))] = toks
        return out, lengths
