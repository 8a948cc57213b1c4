//! Helpers for the belt tests: temporary directories, shards of random documents whose every
//! token is unique (so a token names its document and offset), and re-checksumming a shard
//! after a deliberate corruption so the check under test is the one that fires.

use super::shard::{Header, ShardWriter, HEADER_BYTES};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sos_belt_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn write_shard(path: &Path, docs: &[Vec<u32>], vocab: u32, eot: u32) -> Header {
    let mut w = ShardWriter::create(path, vocab, eot).unwrap();
    let flat: Vec<u32> = docs.concat();
    let lens: Vec<u64> = docs.iter().map(|d| d.len() as u64).collect();
    w.push_documents(&flat, &lens).unwrap();
    w.finish().unwrap()
}

/// Random document lengths: empty, one token, short, and several rows long.
pub fn random_lengths(rng: &mut impl Rng, n: usize, row: usize) -> Vec<usize> {
    (0..n)
        .map(|_| match rng.gen_range(0..10) {
            0 => 0,
            1 => 1,
            2 => rng.gen_range(row..4 * row + 3),
            _ => rng.gen_range(2..row + 2),
        })
        .collect()
}

/// Splits documents of the given lengths over `n_shards` shards in `dir`. Tokens are numbered
/// 1, 2, 3, ... in corpus order (0 is the end-of-text id and never appears), so each token is
/// unique. Returns the paths and the documents in corpus order.
pub fn random_corpus(
    dir: &TempDir,
    seed: u64,
    n_docs: usize,
    n_shards: usize,
    row: usize,
    force_u32: bool,
) -> (Vec<PathBuf>, Vec<Vec<u32>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lens = random_lengths(&mut rng, n_docs, row);
    let mut next = 1u32;
    let docs: Vec<Vec<u32>> = lens
        .iter()
        .map(|&l| {
            let d: Vec<u32> = (next..next + l as u32).collect();
            next += l as u32;
            d
        })
        .collect();
    let vocab = if force_u32 { next.max(70_000) } else { next.max(2) };
    let per = n_docs.div_ceil(n_shards.max(1)).max(1);
    let paths = docs
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| {
            let p = dir.path(&format!("train-{i:05}.sos"));
            write_shard(&p, chunk, vocab, 0);
            p
        })
        .collect();
    (paths, docs)
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Writes `bytes` to `path` with a header checksum recomputed to match.
pub fn write_rechecksummed(path: &Path, mut bytes: Vec<u8>) {
    bytes[40..44].fill(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[HEADER_BYTES..]);
    h.update(&bytes[..HEADER_BYTES]);
    let c = h.finalize();
    bytes[40..44].copy_from_slice(&c.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}
