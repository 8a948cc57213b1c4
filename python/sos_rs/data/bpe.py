"""The tokenizer: a byte-level BPE trained with HF `tokenizers` (every byte is in the base
alphabet, so any text encodes and decodes back exactly), one end-of-text special token closing
each document, and batched encoding (parallel inside `tokenizers`) straight into numpy."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import EOT, MIN_VOCAB


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
