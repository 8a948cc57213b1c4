//! A background thread that assembles the next batches while the training step runs. It owns a
//! `Stream` and sends finished batches through a bounded channel; each batch carries the cursor
//! after it, so the consumer's saved state never runs ahead of what it has consumed.

use super::stream::{Batch, BatchSpec, Stream};
use crate::error::{Error, Result};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

pub struct Prefetch {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts the thread with `depth` >= 1 batches in flight.
    pub fn start(mut stream: Stream, spec: BatchSpec, depth: usize) -> Result<Prefetch> {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("sos-belt-prefetch".into())
            // Exits when the receiver is dropped: `send` then fails, even while blocked on a full channel.
            .spawn(move || while tx.send(stream.next_batch(&spec)).is_ok() {})
            .map_err(|e| Error::value("Belt", format!("cannot start the prefetch thread: {e}")))?;
        Ok(Prefetch { rx: Some(rx), handle: Some(handle) })
    }

    pub fn recv(&self) -> Result<Batch> {
        let rx = self.rx.as_ref().expect("the receiver lives until drop");
        rx.recv().map_err(|_| Error::value("Belt", "the prefetch thread stopped unexpectedly"))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        drop(self.rx.take()); // unblocks the producer's send
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
