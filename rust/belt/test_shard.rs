//! Shard format: round trips in both dtypes, and one row per kind of damage, each of which must
//! fail with a ShardFormat error that names the file and the fault.

use super::corpus::Corpus;
use super::shard::{Shard, ShardWriter, HEADER_BYTES};
use super::testutil::*;
use crate::error::Error;

#[test]
fn round_trip_uint16_and_uint32() {
    let dir = TempDir::new("roundtrip");
    let docs = vec![vec![5, 6, 7], vec![], vec![1], vec![9, 9, 9, 9, 2]];
    for (vocab, dtype) in [(10u32, 2u32), (65_535, 2), (65_536, 4), (1 << 20, 4)] {
        let p = dir.path(&format!("v{vocab}.sos"));
        let h = write_shard(&p, &docs, vocab, 1);
        let s = Shard::open(&p, true).unwrap();
        assert_eq!(*s.header(), h);
        assert_eq!((h.dtype_bytes, h.n_tokens, h.n_docs, h.vocab_size, h.eot_id), (dtype, 9, 4, vocab, 1));
        assert_eq!(s.doc_ends().collect::<Vec<_>>(), vec![3, 3, 4, 9]);
        let mut all = vec![0u32; 9];
        s.copy_tokens(0, &mut all);
        assert_eq!(all, docs.concat());
        // 64 header + 9 tokens padded to 8 bytes + 4 document ends
        let tok_area = (9 * dtype as usize).div_ceil(8) * 8;
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, HEADER_BYTES + tok_area + 32);
    }
}

#[test]
fn checksum_is_crc32_of_payload_then_zeroed_header() {
    // Pins the definition that other writers (and readers in other languages) must follow.
    let dir = TempDir::new("crc");
    let p = dir.path("a.sos");
    let h = write_shard(&p, &[vec![1, 2, 3]], 8, 0);
    let mut b = read(&p);
    b[40..44].fill(0);
    let mut c = crc32fast::Hasher::new();
    c.update(&b[HEADER_BYTES..]);
    c.update(&b[..HEADER_BYTES]);
    assert_eq!(c.finalize(), h.checksum);
}

/// Applies `damage` to a good shard's bytes; `recheck` recomputes the checksum afterwards so
/// the structural check is reached.
fn damaged(name: &str, damage: impl Fn(&mut Vec<u8>), recheck: bool) -> String {
    let dir = TempDir::new("damage");
    let p = dir.path(&format!("{name}.sos"));
    write_shard(&p, &[vec![3, 4, 5], vec![6], vec![7, 8]], 16, 0);
    let mut b = read(&p);
    damage(&mut b);
    if recheck {
        write_rechecksummed(&p, b);
    } else {
        std::fs::write(&p, b).unwrap();
    }
    match Shard::open(&p, true) {
        Err(e @ Error::ShardFormat { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("{name}.sos")), "{name}: the message must name the file: {msg}");
            msg
        }
        Err(e) => panic!("{name}: wrong error kind {e:?}"),
        Ok(_) => panic!("{name}: a damaged shard was accepted"),
    }
}

#[test]
fn each_kind_of_damage_fails_clearly() {
    let put32 = |at: usize, v: u32| move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |at: usize, v: u64| move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    #[allow(clippy::type_complexity)]
    let rows: Vec<(&str, Box<dyn Fn(&mut Vec<u8>)>, bool, &str)> = vec![
        ("magic", Box::new(|b: &mut Vec<u8>| b[0..8].copy_from_slice(b"GGUF\0\0\0\0")), false, "bad magic"),
        ("version", Box::new(put32(8, 2)), false, "unsupported version 2"),
        ("dtype", Box::new(put32(12, 3)), false, "bad token dtype code 3"),
        ("u16vocab", Box::new(put32(16, 70_000)), false, "uint16 cannot hold vocabulary size 70000"),
        ("eot", Box::new(put32(20, 16)), false, "end-of-text id 16 is outside vocabulary size 16"),
        ("flipped_token", Box::new(|b: &mut Vec<u8>| b[HEADER_BYTES] ^= 1), false, "checksum mismatch"),
        ("flipped_count", Box::new(put64(32, 4)), true, "truncated"),
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 5)), false, "truncated: the header promises"),
        ("trailing", Box::new(|b: &mut Vec<u8>| b.extend([0u8; 8])), false, "trailing bytes"),
        ("short", Box::new(|b: &mut Vec<u8>| b.truncate(10)), false, "shorter than the 64-byte header"),
        ("empty", Box::new(|b: &mut Vec<u8>| b.clear()), false, "truncated: 0 bytes"),
        ("huge_count", Box::new(put64(24, u64::MAX / 2)), false, "overflow"),
        // Found by fuzzing: the checksum skips the reserved bytes, so they are checked as zero.
        ("reserved", Box::new(|b: &mut Vec<u8>| b[50] = 7), false, "reserved byte 50 is not zero"),
        (
            "doc_table",
            Box::new(|b: &mut Vec<u8>| {
                let n = b.len();
                b[n - 16..n - 8].copy_from_slice(&1u64.to_le_bytes())
            }),
            true,
            "document table corrupt",
        ),
        (
            "doc_cover",
            Box::new(|b: &mut Vec<u8>| {
                let n = b.len();
                b[n - 8..].copy_from_slice(&5u64.to_le_bytes())
            }),
            true,
            "cover 5 of 6 tokens",
        ),
        (
            "token_range",
            Box::new(|b: &mut Vec<u8>| b[HEADER_BYTES + 2..HEADER_BYTES + 4].copy_from_slice(&40u16.to_le_bytes())),
            true,
            "token 40 at index 1 is outside vocabulary size 16",
        ),
    ];
    for (name, damage, recheck, needle) in rows {
        let msg = damaged(name, damage, recheck);
        assert!(msg.contains(needle), "{name}: expected {needle:?} in {msg:?}");
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let dir = TempDir::new("missing");
    let err = Shard::open(&dir.path("nope.sos"), true).err().unwrap().to_string();
    assert!(err.contains("nope.sos") && err.contains("cannot open"), "{err}");
}

#[test]
fn vocabulary_mismatch_between_shards_or_with_the_caller() {
    let dir = TempDir::new("vocab");
    let (a, b) = (dir.path("a.sos"), dir.path("b.sos"));
    write_shard(&a, &[vec![1, 2]], 100, 0);
    write_shard(&b, &[vec![1, 2]], 200, 0);
    let err = Corpus::open(&[a.clone(), b.clone()], true, None).err().unwrap().to_string();
    assert!(err.contains("b.sos") && err.contains("vocabulary mismatch") && err.contains("a.sos"), "{err}");
    let err = Corpus::open(std::slice::from_ref(&a), true, Some(300)).err().unwrap().to_string();
    assert!(err.contains("a.sos") && err.contains("vocabulary size 100, expected 300"), "{err}");
    assert!(Corpus::open(&[a], true, Some(100)).is_ok());
}

#[test]
fn writer_refuses_bad_input_and_leaves_no_partial_file() {
    let dir = TempDir::new("writer");
    let p = dir.path("w.sos");
    let mut w = ShardWriter::create(&p, 10, 0).unwrap();
    assert!(w.push_documents(&[1, 10], &[2]).unwrap_err().to_string().contains("out of range for vocabulary size 10"));
    assert!(w.push_documents(&[1, 2], &[1]).unwrap_err().to_string().contains("add up to 1"));
    w.push_documents(&[1, 2], &[2]).unwrap();
    drop(w);
    assert!(!p.exists() && !dir.path("w.sos.tmp").exists(), "an unfinished shard must leave nothing behind");
    assert!(ShardWriter::create(&p, 10, 10).is_err(), "eot outside the vocabulary");
}

#[test]
fn an_empty_shard_is_valid_but_a_corpus_of_nothing_is_refused() {
    let dir = TempDir::new("emptycorpus");
    let p = dir.path("e.sos");
    write_shard(&p, &[], 10, 0);
    assert_eq!(Shard::open(&p, true).unwrap().header().n_tokens, 0);
    let q = dir.path("only_empty_docs.sos");
    write_shard(&q, &[vec![], vec![]], 10, 0);
    let err = Corpus::open(&[p, q], true, None).err().unwrap().to_string();
    assert!(err.contains("hold no tokens"), "{err}");
    assert!(Corpus::open(&[], true, None).err().unwrap().to_string().contains("no shard paths"));
}
