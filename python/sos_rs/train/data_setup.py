"""Connects a TrainConfig to prepared data: the train belt (or a mixture), fresh validation
belts, the tokenizer, and the checks that refuse a run before it starts (missing or empty data,
sources with different tokenizers)."""

from __future__ import annotations

import pathlib

from .config import TrainConfig


class DataError(ValueError):
    """The prepared data cannot be used for this run; the message names the folder and problem."""


class DataSetup:
    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1):
        from ..data import read_meta

        self.cfg = cfg
        self.rank, self.world = rank, world
        """Data-parallel rank: training belts hand out this rank's slice of each global batch of
        world × batch_size rows; validation belts always read whole batches (rank 0 validates)."""
        self.dir = pathlib.Path(cfg.data.dir)
        if not (self.dir / "meta.json").exists():
            raise DataError(
                f"{self.dir} holds no prepared corpus (meta.json missing); "
                f"run `sos prepare INPUTS --out {self.dir}` first"
            )
        self.meta = read_meta(self.dir)
        self.vocab_size = int(self.meta["vocab_size"])
        self.eot_id = int(self.meta["eot_id"])
        self.tokenizer_path = pathlib.Path(self.meta["tokenizer"])
        self.train_paths = [str(self.dir / p) for p in self.meta["shards"]["train"]]
        self.val_paths = [str(self.dir / p) for p in self.meta["shards"].get("val", [])]
        if not self.train_paths or self.meta.get("splits", {}).get("train", {}).get("tokens", 1) == 0:
            raise DataError(f"{self.dir}: the training split is empty; nothing to train on")
        self.has_val = bool(self.val_paths)
        """False when the corpus has no validation split (too few documents to hold one out):
        validation passes then score the training split, and the trainer says so."""
        if not self.val_paths:
            self.val_paths = self.train_paths
        self.mixture = []
        for src in cfg.data.mixture:
            d = pathlib.Path(src["dir"])
            m = read_meta(d)
            if (
                int(m["vocab_size"]) != self.vocab_size
                or pathlib.Path(m["tokenizer"]).read_bytes() != self.tokenizer_path.read_bytes()
            ):
                raise DataError(f"mixture source {d} uses a different tokenizer than {self.dir}")
            self.mixture.append(([str(d / p) for p in m["shards"]["train"]], float(src["weight"])))
        self._tok = None

    def val_note(self) -> str:
        """What validation scores, for the log: empty with a validation split."""
        if self.has_val:
            return ""
        return (
            f"note: {self.dir} has no validation split (too few documents to hold one out); validation "
            "passes score batches of the training split and are logged as 'train-split loss', not val loss"
        )

    @property
    def val_bytes_per_token(self) -> float:
        split = self.meta.get("splits", {}).get("val") or self.meta.get("splits", {}).get("train") or {}
        tokens, nbytes = split.get("tokens"), split.get("bytes")
        return nbytes / tokens if tokens and nbytes else 1.0

    def _belt(self, paths, seed: int, sliced: bool = False):
        from ..data import Belt

        d = self.cfg.data
        rank, world = (self.rank, self.world) if sliced else (0, 1)
        return Belt(
            paths, seq_len=d.seq_len, batch_size=d.batch_size, seed=seed, rank=rank, world=world, doc_mask=d.doc_mask
        )

    def train_belt(self):
        belt = self._belt(self.train_paths, self.cfg.run.seed, sliced=True)
        if not self.mixture:
            return belt
        from ..data import Mixture

        rest = 1.0 - sum(w for _, w in self.mixture)
        if rest <= 0:
            raise DataError("data.mixture weights must sum to less than 1 (data.dir takes the remainder)")
        parts = [(belt, rest)] + [
            (self._belt(p, self.cfg.run.seed + i + 1, sliced=True), w) for i, (p, w) in enumerate(self.mixture)
        ]
        return Mixture(parts, seed=self.cfg.run.seed)

    def val_belt(self):
        """A fresh validation belt: every pass sees the same batches."""
        return self._belt(self.val_paths, 0)

    @property
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(self.tokenizer_path))
        return self._tok

    def encode(self, text: str) -> list:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list) -> str:
        return self.tokenizer.decode(ids)

    def describe(self) -> str:
        return f"data {self.dir} ({len(self.train_paths)} train shard(s), vocab {self.vocab_size})"
