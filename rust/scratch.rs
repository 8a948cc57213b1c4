//! Reusable 64-byte aligned scratch buffers for packed GEMM panels and attention tiles, so hot
//! loops neither call the allocator nor fault in fresh pages on every op. A buffer is first
//! written by the thread that uses it (first touch places its pages on that thread's node).
//! Contents of a buffer handed out are unspecified (stale values from an earlier use).

use crate::tensor::AlignedBuf;
use std::cell::RefCell;
use std::sync::Mutex;

/// Thread-local slots: a caller uses a distinct slot for each buffer it holds at once.
pub const SLOTS: usize = 4;

thread_local! {
    static LOCAL: [RefCell<Option<AlignedBuf>>; SLOTS] = Default::default();
}

/// Runs `f` on this thread's buffer `slot`, grown to at least `len` floats. If the slot is
/// already borrowed (re-entry on the same thread), a temporary buffer is used instead.
pub fn with_local<R>(slot: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    LOCAL.with(|slots| match slots[slot].try_borrow_mut() {
        Ok(mut cell) => {
            if cell.as_ref().is_none_or(|b| b.as_slice().len() < len) {
                *cell = Some(AlignedBuf::zeros(len));
            }
            f(&mut cell.as_mut().unwrap().as_mut_slice()[..len])
        }
        Err(_) => f(AlignedBuf::zeros(len).as_mut_slice()),
    })
}

static SHARED: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());
/// Shared buffers kept for reuse; more are allocated (and dropped) when calls overlap.
const SHARED_KEEP: usize = 4;

/// A buffer of exactly `len` floats, from the shared pool when one is large enough.
pub fn take_shared(len: usize) -> SharedBuf {
    let mut pool = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let buf = match pool.iter().position(|b| b.as_slice().len() >= len) {
        Some(i) => pool.swap_remove(i),
        None => AlignedBuf::zeros(len),
    };
    SharedBuf { buf: Some(buf), len }
}

/// A pooled buffer; goes back to the pool when dropped.
pub struct SharedBuf {
    buf: Option<AlignedBuf>,
    len: usize,
}

impl SharedBuf {
    pub fn as_slice(&self) -> &[f32] {
        &self.buf.as_ref().unwrap().as_slice()[..self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf.as_mut().unwrap().as_mut_slice()[..self.len]
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        let mut pool = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let buf = self.buf.take().unwrap();
        if pool.len() < SHARED_KEEP {
            pool.push(buf);
        } else if let Some(i) = pool.iter().position(|b| b.as_slice().len() < buf.as_slice().len()) {
            pool[i] = buf; // keep the larger buffers
        }
    }
}
