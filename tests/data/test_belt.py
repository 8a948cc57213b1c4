"""The belt through Python: batch shapes and dtypes, exactly-once per epoch, JSON-safe state that
resumes exactly, rank slices, document masks, mixtures, and one row per kind of bad shard
(ShardFormatError naming the file and the fault). The packing properties themselves are tested
at length in Rust (rust/belt/test_belt.rs); these check the binding keeps them."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from sos_rs import InvalidValueError, ShapeError
from sos_rs.data import Belt, Mixture, ShardWriter, read_meta, shard_info
from sos_rs.errors import DTypeError, ShardFormatError


def write(path, docs, vocab, eot=0):
    with ShardWriter(str(path), vocab, eot) as w:
        w.add_documents(
            np.concatenate([np.asarray(d, np.int64) for d in docs]) if docs else np.zeros(0, np.int64),
            np.array([len(d) for d in docs]),
        )
    return str(path)


def corpus(tmp_path, n_docs=40, seed=0, name="c.sos"):
    """Documents of random lengths (0, 1, short, long) whose tokens are 1, 2, 3, ... in order."""
    rng = np.random.default_rng(seed)
    lens = rng.choice([0, 1, 3, 9, 30], size=n_docs)
    docs, nxt = [], 1
    for n in lens:
        docs.append(list(range(nxt, nxt + n)))
        nxt += n
    return write(tmp_path / name, docs, vocab=nxt), nxt - 1


def rows(ids, targets):
    np.testing.assert_array_equal(ids[:, 1:], targets[:, :-1])
    return np.concatenate([ids, targets[:, -1:]], axis=1)


def test_batches_are_int64_rows_and_each_token_appears_once_per_epoch(tmp_path):
    path, n = corpus(tmp_path)
    belt = Belt([path], seq_len=7, batch_size=3, seed=1)
    assert (belt.vocab_size, belt.tokens_per_epoch, belt.epoch) == (n + 1, n, 0)
    seen = []
    while len(seen) < n:
        ids, targets = belt.next_batch()
        assert ids.dtype == np.int64 and targets.dtype == np.int64 and ids.shape == targets.shape == (3, 7)
        seen.extend(rows(ids, targets).ravel())
    assert sorted(seen[:n]) == list(range(1, n + 1)), "a token is missing, repeated or padding"
    assert belt.epoch == len(seen) // n


def test_state_survives_json_and_resumes_exactly(tmp_path):
    path, _ = corpus(tmp_path)
    straight = Belt(path, seq_len=5, batch_size=2, seed=3)
    want = [rows(*straight.next_batch()) for _ in range(40)]
    first = Belt(path, seq_len=5, batch_size=2, seed=3, prefetch=0)
    got = [rows(*first.next_batch()) for _ in range(13)]
    state = json.loads(json.dumps(first.state()))
    resumed = Belt(path, seq_len=5, batch_size=2, seed=77, prefetch=4)
    resumed.next_batch()
    resumed.load_state(state)
    assert resumed.state() == state
    got += [rows(*resumed.next_batch()) for _ in range(27)]
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def test_rank_slices_join_into_the_global_batch(tmp_path):
    path, _ = corpus(tmp_path, 60)
    world, b, t = 3, 2, 4
    glob = Belt(path, seq_len=t, batch_size=b * world, seed=5)
    ranks = [Belt(path, seq_len=t, batch_size=b, seed=5, rank=r, world=world) for r in range(world)]
    for _ in range(20):
        joined = np.concatenate([rows(*r.next_batch()) for r in ranks])
        np.testing.assert_array_equal(joined, rows(*glob.next_batch()))


def test_doc_mask_positions_restart_at_document_starts(tmp_path):
    path = write(tmp_path / "m.sos", [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]], vocab=12)
    belt = Belt(path, seq_len=5, batch_size=2, shuffle=False, doc_mask=True)
    ids, _ = belt.next_batch()
    # rows of 6: [1 2 3 4 5 6] [7 8 9 10 11 1]; inputs are the first 5 of each
    np.testing.assert_array_equal(ids, [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]])
    np.testing.assert_array_equal(belt.last_positions(), [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(belt.last_segments(), [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    with pytest.raises(InvalidValueError, match="doc_mask=False"):
        Belt(path, seq_len=5, batch_size=2).last_positions()


def test_mixture_draws_by_weight_and_resumes(tmp_path):
    a, _ = corpus(tmp_path, 30, 1, "a.sos")
    b, _ = corpus(tmp_path, 30, 2, "b.sos")
    mix = Mixture([(Belt(a, 4, 2), 0.75), (Belt(b, 4, 2), 0.25)], seed=9)
    picks = []
    for _ in range(2000):
        mix.next_batch()
        picks.append(mix.last_source)
    assert abs(picks.count(0) / len(picks) - 0.75) < 0.04
    state = json.loads(json.dumps(mix.state()))
    want = [mix.next_batch()[0] for _ in range(20)]
    again = Mixture([(Belt(a, 4, 2, prefetch=0), 0.75), (Belt(b, 4, 2, prefetch=3), 0.25)], seed=0)
    again.load_state(state)
    np.testing.assert_array_equal(np.stack([again.next_batch()[0] for _ in range(20)]), np.stack(want))
    with pytest.raises(ShapeError, match="seq_len"):
        Mixture([(Belt(a, 4, 2), 1.0), (Belt(b, 8, 2), 1.0)])
    with pytest.raises(InvalidValueError, match="weight"):
        Mixture([(Belt(a, 4, 2), -1.0)])


def _good(tmp_path, name="s.sos"):
    return write(tmp_path / name, [[3, 4, 5], [6], [7, 8]], vocab=16)


def _patch(at, fmt, value, fix_checksum=False):
    def damage(b: bytearray):
        b[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
        if fix_checksum:
            b[40:44] = b"\0\0\0\0"
            b[40:44] = struct.pack("<I", zlib.crc32(bytes(b[:64]), zlib.crc32(bytes(b[64:]))))

    return damage


def _flip(b: bytearray):
    b[64] ^= 0xFF


def _truncate(b: bytearray):
    del b[-3:]


SHARD_FAULTS = [
    ("bad magic", _patch(0, "8s", b"NOTASHRD"), "bad magic"),
    ("version", _patch(8, "<I", 9), "unsupported version 9"),
    ("dtype", _patch(12, "<I", 8), "bad token dtype code 8"),
    ("checksum", _flip, "checksum mismatch"),
    ("truncated", _truncate, "truncated"),
    ("token outside vocabulary", _patch(64, "<H", 99, fix_checksum=True), "outside vocabulary size 16"),
]


@pytest.mark.parametrize("what,damage,needle", SHARD_FAULTS, ids=[f[0] for f in SHARD_FAULTS])
def test_damaged_shard_raises_shard_format_error(tmp_path, what, damage, needle):
    path = _good(tmp_path)
    data = bytearray(open(path, "rb").read())
    damage(data)
    open(path, "wb").write(bytes(data))
    for call in (lambda: Belt(path, 4, 1), lambda: shard_info(path)):
        with pytest.raises(ShardFormatError) as info:
            call()
        assert needle in str(info.value) and "s.sos" in str(info.value), str(info.value)


def test_checksum_matches_zlib_crc32(tmp_path):
    # Independent of the Rust reader: CRC-32 of the payload, then of the header with checksum 0.
    data = bytearray(open(_good(tmp_path), "rb").read())
    stored = struct.unpack("<I", data[40:44])[0]
    data[40:44] = b"\0\0\0\0"
    assert zlib.crc32(bytes(data[:64]), zlib.crc32(bytes(data[64:]))) == stored
    assert shard_info(_good(tmp_path, "t.sos"))["dtype"] == "uint16"


def test_vocabulary_mismatch_and_missing_files(tmp_path):
    a = _good(tmp_path, "a.sos")
    b = write(tmp_path / "b.sos", [[1, 2]], vocab=70_000)
    assert shard_info(b)["dtype"] == "uint32"
    with pytest.raises(ShardFormatError, match="b.sos.*vocabulary mismatch"):
        Belt([a, b], 4, 1)
    with pytest.raises(ShardFormatError, match="a.sos.*vocabulary size 16, expected 32"):
        Belt(a, 4, 1, vocab_size=32)
    with pytest.raises(FileNotFoundError, match="nope.sos"):
        Belt([a, str(tmp_path / "nope.sos")], 4, 1)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        read_meta(tmp_path)


BAD_BELT = [
    ("zero seq_len", dict(seq_len=0, batch_size=1), "positive"),
    ("rank outside world", dict(seq_len=4, batch_size=1, rank=3, world=2), "rank 3"),
]


@pytest.mark.parametrize("what,kwargs,needle", BAD_BELT, ids=[b[0] for b in BAD_BELT])
def test_bad_belt_arguments(tmp_path, what, kwargs, needle):
    with pytest.raises(InvalidValueError, match=needle):
        Belt(_good(tmp_path), **kwargs)


def test_foreign_state_is_refused(tmp_path):
    a = Belt(_good(tmp_path, "a.sos"), 4, 1)
    other = Belt(write(tmp_path / "o.sos", [[1, 2, 3, 4, 5]], vocab=16), 4, 1)
    with pytest.raises(InvalidValueError, match="other data"):
        a.load_state(other.state())
    with pytest.raises(InvalidValueError, match='has no "doc_index"'):
        a.load_state({k: v for k, v in a.state().items() if k != "doc_index"})


def test_writer_refuses_bad_tokens_and_cleans_up(tmp_path):
    p = tmp_path / "w.sos"
    with pytest.raises(InvalidValueError, match="out of range"):
        with ShardWriter(str(p), 10, 0) as w:
            w.add_documents(np.array([1, 10]), np.array([2]))
    assert not p.exists() and not (tmp_path / "w.sos.tmp").exists()
    w = ShardWriter(str(p), 10, 0)
    with pytest.raises(DTypeError):
        w.add_documents(np.array([1.0]), np.array([1]))
    with pytest.raises(InvalidValueError, match="add up"):
        w.add_documents(np.array([1, 2]), np.array([1]))
