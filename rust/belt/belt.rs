//! `Belt`: shards in, batches of packed rows out, with a cursor a checkpoint can save. The
//! packing lives in `stream.rs`, prefetching in `prefetch.rs`; this file ties them to a
//! configuration and keeps the state of what the caller has consumed.

use super::corpus::Corpus;
use super::prefetch::Prefetch;
use super::stream::{Batch, BatchSpec, Cursor, Stream};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// How a belt cuts and orders its stream. Defaults: seed 0, one rank, shuffled, two batches
/// prefetched, shards verified.
#[derive(Clone, Debug)]
pub struct BeltConfig {
    /// T: tokens per row seen by the model; rows hold T+1 tokens (inputs and shifted targets).
    pub seq_len: usize,
    /// B: rows per batch on this rank.
    pub batch_size: usize,
    /// Seeds the document order of every epoch.
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    /// Also produce positions and segment ids that restart at document starts.
    pub doc_mask: bool,
    /// Shuffle documents each epoch (off: file order, e.g. for evaluation).
    pub shuffle: bool,
    /// Batches assembled ahead on a background thread; 0 assembles on the caller's thread.
    pub prefetch: usize,
    /// Check checksums and token ranges at open (one pass over the data).
    pub verify: bool,
    /// The vocabulary size the caller expects; shards that differ are refused.
    pub vocab_size: Option<u32>,
}

impl BeltConfig {
    pub fn new(seq_len: usize, batch_size: usize) -> BeltConfig {
        BeltConfig {
            seq_len,
            batch_size,
            seed: 0,
            rank: 0,
            world: 1,
            doc_mask: false,
            shuffle: true,
            prefetch: 2,
            verify: true,
            vocab_size: None,
        }
    }

    fn spec(&self) -> BatchSpec {
        BatchSpec {
            seq_len: self.seq_len,
            batch_size: self.batch_size,
            rank: self.rank,
            world: self.world,
            doc_mask: self.doc_mask,
        }
    }
}

/// Everything needed to resume: the cursor and the order's inputs (seed, shuffle), plus the
/// corpus's identity so a state is never applied to other data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeltState {
    pub seed: u64,
    pub shuffle: bool,
    pub cursor: Cursor,
    pub batches: u64,
    pub n_docs: u64,
    pub n_tokens: u64,
    pub fingerprint: u32,
}

enum Source {
    Inline(Stream),
    Ahead(Prefetch),
}

pub struct Belt {
    corpus: Arc<Corpus>,
    cfg: BeltConfig,
    /// Position after the last batch handed out.
    consumed: Cursor,
    batches: u64,
    source: Source,
}

impl Belt {
    pub fn open(paths: &[PathBuf], cfg: BeltConfig) -> Result<Belt> {
        if cfg.seq_len == 0 || cfg.batch_size == 0 {
            return Err(Error::value(
                "Belt",
                format!("seq_len and batch_size must be positive, got {} and {}", cfg.seq_len, cfg.batch_size),
            ));
        }
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(Error::value("Belt", format!("rank {} is not in 0..world={}", cfg.rank, cfg.world)));
        }
        let corpus = Arc::new(Corpus::open(paths, cfg.verify, cfg.vocab_size)?);
        let source = Self::start(&corpus, &cfg, Cursor::default())?;
        Ok(Belt { corpus, cfg, consumed: Cursor::default(), batches: 0, source })
    }

    fn start(corpus: &Arc<Corpus>, cfg: &BeltConfig, at: Cursor) -> Result<Source> {
        let stream = Stream::new(corpus.clone(), cfg.seed, cfg.shuffle, at);
        Ok(match cfg.prefetch {
            0 => Source::Inline(stream),
            depth => Source::Ahead(Prefetch::start(stream, cfg.spec(), depth)?),
        })
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        let batch = match &mut self.source {
            Source::Inline(s) => s.next_batch(&self.cfg.spec()),
            Source::Ahead(p) => p.recv()?,
        };
        self.consumed = batch.cursor;
        self.batches += 1;
        Ok(batch)
    }

    pub fn config(&self) -> &BeltConfig {
        &self.cfg
    }
    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }
    /// The epoch of the next token to be handed out.
    pub fn epoch(&self) -> u64 {
        self.consumed.epoch
    }
    pub fn batches(&self) -> u64 {
        self.batches
    }

    pub fn state(&self) -> BeltState {
        let c = &self.corpus;
        BeltState {
            seed: self.cfg.seed,
            shuffle: self.cfg.shuffle,
            cursor: self.consumed,
            batches: self.batches,
            n_docs: c.n_docs(),
            n_tokens: c.n_tokens(),
            fingerprint: c.fingerprint(),
        }
    }

    /// Resumes at the state's cursor with its seed and shuffle; the next batch is the one the
    /// saved belt would have produced (for the same seq_len, batch_size, rank and world).
    pub fn load_state(&mut self, st: &BeltState) -> Result<()> {
        let c = &self.corpus;
        if (st.n_docs, st.n_tokens, st.fingerprint) != (c.n_docs(), c.n_tokens(), c.fingerprint()) {
            return Err(Error::value(
                "Belt.load_state",
                format!(
                    "the state is for other data ({} documents, {} tokens, fingerprint {:#010x}); \
                     this belt has {}, {}, {:#010x}",
                    st.n_docs,
                    st.n_tokens,
                    st.fingerprint,
                    c.n_docs(),
                    c.n_tokens(),
                    c.fingerprint()
                ),
            ));
        }
        if st.cursor.index >= c.n_docs() {
            return Err(Error::value(
                "Belt.load_state",
                format!("document index {} is past the {} documents", st.cursor.index, c.n_docs()),
            ));
        }
        let mut cfg = self.cfg.clone();
        (cfg.seed, cfg.shuffle) = (st.seed, st.shuffle);
        let doc = self.corpus.doc(self.corpus.order(cfg.seed, st.cursor.epoch, cfg.shuffle)[st.cursor.index as usize]);
        if st.cursor.offset > doc.len as u64 {
            return Err(Error::value(
                "Belt.load_state",
                format!("offset {} is past the end of a {}-token document", st.cursor.offset, doc.len),
            ));
        }
        // Replacing the source drops (and joins) the old producer; on error nothing changes.
        self.source = Self::start(&self.corpus, &cfg, st.cursor)?;
        (self.cfg, self.consumed, self.batches) = (cfg, st.cursor, st.batches);
        Ok(())
    }
}
