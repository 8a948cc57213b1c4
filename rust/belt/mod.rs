//! The token belt (SPEC §5): memory-mapped token shards → rows of T+1 tokens packed from whole
//! documents laid end to end (no truncation, no padding), in a deterministic per-epoch order,
//! sliced by (rank, world), prefetched on a background thread, resumable from a saved cursor,
//! and mixable by weight. Tokenizing and writing shards from text is Python's job
//! (`sos_rs.data`); `ShardWriter` here is the one writer both sides use.

#[allow(clippy::module_inception)]
mod belt;
mod corpus;
mod mixture;
mod prefetch;
mod shard;
mod stream;

pub use belt::{Belt, BeltConfig, BeltState};
pub use corpus::Corpus;
pub use mixture::{lock, Mixture, MixtureState, SharedBelt};
pub use shard::{Header, Shard, ShardWriter, HEADER_BYTES, MAX_U16_VOCAB, VERSION};
pub use stream::{Batch, BatchSpec, Cursor};

#[cfg(test)]
mod test_belt;
#[cfg(test)]
mod test_shard;
#[cfg(test)]
mod testutil;
