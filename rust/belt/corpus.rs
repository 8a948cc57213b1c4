//! The shards a belt reads, seen as one list of documents, and the document order of each epoch.
//! Opening checks that the shards agree (vocabulary, end-of-text id) so a belt never mixes
//! tokenizers. The order is a pure function of (seed, epoch): nothing about it needs saving
//! beyond those two numbers.

use super::shard::Shard;
use crate::error::{Error, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// One document: `len` tokens from `start` in shard `shard`.
#[derive(Clone, Copy, Debug)]
pub struct DocRef {
    pub start: u64,
    pub len: u32,
    pub shard: u32,
}

pub struct Corpus {
    shards: Vec<Shard>,
    docs: Vec<DocRef>,
    n_tokens: u64,
    vocab_size: u32,
    eot_id: u32,
    fingerprint: u32,
}

impl Corpus {
    /// Opens every shard (see `Shard::open` for `verify`). `vocab_size`, when given, is the
    /// vocabulary the caller expects (from meta.json or the model); every shard must match it.
    pub fn open(paths: &[PathBuf], verify: bool, vocab_size: Option<u32>) -> Result<Corpus> {
        if paths.is_empty() {
            return Err(Error::value("Belt", "no shard paths given"));
        }
        let mut shards = Vec::with_capacity(paths.len());
        let mut docs = Vec::new();
        let mut fp = crc32fast::Hasher::new();
        for (s, path) in paths.iter().enumerate() {
            let shard = Shard::open(path, verify)?;
            let h = *shard.header();
            if let Some(v) = vocab_size {
                if h.vocab_size != v {
                    return Err(Error::shard(
                        path,
                        format!("vocabulary mismatch: the shard has vocabulary size {}, expected {v}", h.vocab_size),
                    ));
                }
            }
            if let Some(first) = shards.first() {
                let f: &Shard = first;
                let fh = f.header();
                if (h.vocab_size, h.eot_id) != (fh.vocab_size, fh.eot_id) {
                    return Err(Error::shard(
                        path,
                        format!(
                            "vocabulary mismatch: vocabulary size {} / end-of-text {} differ from {} / {} of {}",
                            h.vocab_size,
                            h.eot_id,
                            fh.vocab_size,
                            fh.eot_id,
                            f.path().display()
                        ),
                    ));
                }
            }
            let mut start = 0u64;
            for end in shard.doc_ends() {
                let len = u32::try_from(end - start).map_err(|_| {
                    Error::shard(
                        path,
                        format!("a document of {} tokens is longer than a belt handles (2^32 - 1)", end - start),
                    )
                })?;
                docs.push(DocRef { start, len, shard: s as u32 });
                start = end;
            }
            fp.update(&h.encode());
            shards.push(shard);
        }
        if docs.len() > u32::MAX as usize {
            return Err(Error::value(
                "Belt",
                format!("{} documents is more than a belt orders (2^32 - 1)", docs.len()),
            ));
        }
        let n_tokens: u64 = shards.iter().map(|s| s.header().n_tokens).sum();
        if n_tokens == 0 {
            return Err(Error::value("Belt", format!("the {} shard(s) hold no tokens", shards.len())));
        }
        let h = *shards[0].header();
        Ok(Corpus { shards, docs, n_tokens, vocab_size: h.vocab_size, eot_id: h.eot_id, fingerprint: fp.finalize() })
    }

    pub fn n_docs(&self) -> u64 {
        self.docs.len() as u64
    }
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }
    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }
    /// CRC-32 of every shard header in order: names this exact data (headers hold each
    /// payload's checksum), so a saved cursor is never applied to other data.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }
    pub fn doc(&self, i: u32) -> DocRef {
        self.docs[i as usize]
    }

    /// dst = tokens [offset, offset + dst.len()) of `doc`.
    pub fn copy(&self, doc: DocRef, offset: u64, dst: &mut [u32]) {
        self.shards[doc.shard as usize].copy_tokens(doc.start + offset, dst);
    }

    /// Document order of `epoch`: a Fisher–Yates shuffle driven by ChaCha8 keyed by `seed` on
    /// stream `epoch`, or file order when `shuffle` is off.
    pub fn order(&self, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.docs.len() as u32).collect();
        if shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch);
            for i in (1..order.len()).rev() {
                let j = below(&mut rng, i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }
}

/// Uniform integer in [0, n) without modulo bias (Lemire's multiply-and-reject). Written out
/// rather than taken from `rand` so the shuffle, and so every saved cursor, cannot change with
/// a dependency's version.
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let mut m = rng.next_u64() as u128 * n as u128;
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = rng.next_u64() as u128 * n as u128;
        }
    }
    (m >> 64) as u64
}
