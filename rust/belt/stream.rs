//! Packing: the token stream of a corpus (epoch after epoch, documents in each epoch's order,
//! each laid end to end) cut into rows of T+1 tokens. Nothing is truncated or padded: a document
//! longer than what is left of a row continues in the next row, and the last rows of an epoch
//! continue into the next epoch. Every rank walks the same global stream and copies only its own
//! rows, so (rank, world) slices are disjoint, cover the stream, and equal one process with the
//! global batch.

use super::corpus::Corpus;
use std::sync::Arc;

/// Where the stream stands: the next token is token `offset` of document `order[index]` of
/// epoch `epoch`. After a document ends the cursor moves to (index + 1, 0), so each position has
/// one spelling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub index: u64,
    pub offset: u64,
}

/// Shape of the batches: each rank gets `batch_size` rows of `seq_len + 1` tokens per step.
#[derive(Clone, Copy, Debug)]
pub struct BatchSpec {
    pub seq_len: usize,
    pub batch_size: usize,
    pub rank: usize,
    pub world: usize,
    pub doc_mask: bool,
}

impl BatchSpec {
    fn row(&self) -> usize {
        self.seq_len + 1
    }
}

/// One step's rows for one rank. ids/targets: [B, T] row-major, targets[b, t] = ids[b, t + 1]
/// within the row of T+1 tokens. positions/segments ([B, T], with `doc_mask`): positions count
/// from 0 at the row start and at each document start; segment ids number the documents of a
/// row from 0, so attention may be restricted to equal segment ids.
#[derive(Debug)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub targets: Vec<i64>,
    pub positions: Option<Vec<i64>>,
    pub segments: Option<Vec<i64>>,
    /// The cursor after the whole global batch (the same on every rank).
    pub cursor: Cursor,
}

pub struct Stream {
    corpus: Arc<Corpus>,
    seed: u64,
    shuffle: bool,
    cursor: Cursor,
    order: Vec<u32>,
    order_epoch: u64,
    block: Vec<u32>,
    starts: Vec<usize>,
}

impl Stream {
    pub fn new(corpus: Arc<Corpus>, seed: u64, shuffle: bool, cursor: Cursor) -> Stream {
        let order = corpus.order(seed, cursor.epoch, shuffle);
        Stream {
            corpus,
            seed,
            shuffle,
            cursor,
            order,
            order_epoch: cursor.epoch,
            block: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Walks the next `n` tokens, calling `sink(starts_doc, at, doc, offset, len)` for each run of
    /// `len` tokens from `offset` in `doc`, landing at `at` within the walk.
    fn walk(&mut self, n: usize, mut sink: impl FnMut(bool, usize, super::corpus::DocRef, u64, usize)) {
        let n_docs = self.corpus.n_docs();
        let mut done = 0;
        while done < n {
            if self.order_epoch != self.cursor.epoch {
                self.order = self.corpus.order(self.seed, self.cursor.epoch, self.shuffle);
                self.order_epoch = self.cursor.epoch;
            }
            let doc = self.corpus.doc(self.order[self.cursor.index as usize]);
            let avail = (doc.len as u64).saturating_sub(self.cursor.offset);
            let take = avail.min((n - done) as u64) as usize;
            if take > 0 {
                sink(self.cursor.offset == 0, done, doc, self.cursor.offset, take);
            }
            done += take;
            self.cursor.offset += take as u64;
            if self.cursor.offset >= doc.len as u64 {
                self.cursor.offset = 0;
                self.cursor.index += 1;
                if self.cursor.index == n_docs {
                    self.cursor.index = 0;
                    self.cursor.epoch += 1;
                }
            }
        }
    }

    /// Moves past `n` tokens without reading them (the other ranks' rows).
    pub fn skip(&mut self, n: usize) {
        self.walk(n, |_, _, _, _, _| {});
    }

    /// dst = the next dst.len() tokens; `starts` receives the index in dst of each document start.
    pub fn take(&mut self, dst: &mut [u32], starts: &mut Vec<usize>) {
        starts.clear();
        let corpus = self.corpus.clone();
        self.walk(dst.len(), |first, at, doc, offset, len| {
            if first {
                starts.push(at);
            }
            corpus.copy(doc, offset, &mut dst[at..at + len]);
        });
    }

    /// The next batch of this rank: skip the rows of lower ranks, read ours, skip the rest.
    pub fn next_batch(&mut self, spec: &BatchSpec) -> Batch {
        let (t, row, b) = (spec.seq_len, spec.row(), spec.batch_size);
        let block_len = b * row;
        self.skip(spec.rank * block_len);
        let (mut block, mut starts) = (std::mem::take(&mut self.block), std::mem::take(&mut self.starts));
        block.resize(block_len, 0);
        self.take(&mut block, &mut starts);
        self.skip((spec.world - 1 - spec.rank) * block_len);
        let mut ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for r in block.chunks_exact(row) {
            ids.extend(r[..t].iter().map(|&x| x as i64));
            targets.extend(r[1..].iter().map(|&x| x as i64));
        }
        let (positions, segments) = spec.doc_mask.then(|| doc_positions(&starts, b, t)).unzip();
        self.block = block;
        self.starts = starts;
        Batch { ids, targets, positions, segments, cursor: self.cursor }
    }
}

/// Positions and segment ids [B, T] of a block of B rows of T+1 tokens whose document starts
/// (indices into the block, increasing) are `starts`.
fn doc_positions(starts: &[usize], b: usize, t: usize) -> (Vec<i64>, Vec<i64>) {
    let mut pos = Vec::with_capacity(b * t);
    let mut seg = Vec::with_capacity(b * t);
    let mut next = starts.iter().copied().peekable();
    for r in 0..b {
        let base = r * (t + 1);
        let (mut p, mut s) = (0i64, 0i64);
        for i in 0..t + 1 {
            let is_start = next.peek() == Some(&(base + i));
            if is_start {
                next.next();
            }
            if i == t {
                break; // the last token of a row is only a target
            }
            if i > 0 {
                if is_start {
                    p = 0;
                    s += 1;
                } else {
                    p += 1;
                }
            }
            pos.push(p);
            seg.push(s);
        }
    }
    (pos, seg)
}
