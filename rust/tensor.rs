//! Contiguous row-major f32 tensors on 64-byte aligned buffers. No strides, no views: every op
//! reads and writes whole buffers, which keeps kernels simple and SIMD loads aligned per row start.

use crate::error::{ensure_shape, Result};
use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

const ALIGN: usize = 64;

/// A 64-byte aligned, zero-initialised `[f32]` buffer.
///
/// Buffers of `MAP_MIN_BYTES` or more come straight from `mmap`: the kernel hands out zero
/// pages lazily, so no serial memset runs on the allocating thread, and each page is first
/// touched (faulted in) by whichever worker writes it first, on that worker's NUMA node.
pub struct AlignedBuf {
    ptr: NonNull<f32>,
    len: usize,
    /// Bytes of the mmap behind it (freed by munmap or pooled), 0 when it comes from the global
    /// allocator. A pooled mapping may be larger than the class of `len`.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    map_bytes: usize,
}

/// Size from which buffers are mapped rather than allocated (and zeroed) on the heap.
#[cfg(target_os = "linux")]
const MAP_MIN_BYTES: usize = 1 << 20;

/// Mappings from this size on are advised to use transparent huge pages (one huge page).
#[cfg(target_os = "linux")]
const HUGE_MIN_BYTES: usize = 2 << 20;

/// Mapped buffers kept after drop for the next tensor of the same size class. Training allocates
/// the same activation and gradient sizes every step; re-zeroing memory already resident costs a
/// fraction of the page faults a fresh mapping takes on first touch (measured: a 2048×4096 output
/// spent most of its GEMM time faulting pages in).
///
/// Mappings are sized in classes (`class`: eight steps per power of two, at most 12.5% slack) so
/// that the routed families' token counts, which vary a little every step, reuse each other's
/// buffers, and a request takes a pooled mapping up to half larger than its class when none of
/// its own is free. A miss evicts (unmaps) the longest-idle pooled buffers while the mapped total
/// would pass its high-water mark, so pooled plus live mappings never exceed the largest demand
/// seen: sizes that stopped being asked for do not pile up step after step. (The MoA medium step
/// mapped 141 fresh buffers a step with exact classes and eviction on every miss, 18 now.)
#[cfg(target_os = "linux")]
mod recycle {
    use std::ptr::NonNull;
    use std::sync::Mutex;

    /// Bytes held for reuse at most; beyond it buffers go back to the kernel.
    const MAX_BYTES: usize = 1 << 30;

    /// A request may take a pooled mapping up to 1/FIT_SLACK larger than its class (four classes;
    /// measured on the MoA medium step: fresh mappings per step 66 at a quarter, 18 at a half).
    const FIT_SLACK: usize = 2;

    /// The mapping size for a request of `bytes` (>= 1 MiB): rounded up to a multiple of an
    /// eighth of its power of two (so a multiple of 128 KiB, hence of the page size).
    pub fn class(bytes: usize) -> usize {
        let p = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
        let step = (p / 8).max(1);
        bytes.div_ceil(step) * step
    }

    struct Pool {
        /// (address, bytes), oldest first.
        free: Vec<(usize, usize)>,
        /// Bytes in `free`.
        bytes: usize,
        /// Bytes of the mappings in use (handed out and not yet given back).
        live: usize,
        /// The most bytes ever mapped at once (live + pooled).
        high: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), bytes: 0, live: 0, high: 0 });

    /// A pooled mapping for a request of `bytes` (a class size) and its own size: one of exactly
    /// `bytes`, most recently freed first, else the smallest one at most `FIT_SLACK` larger
    /// (routed token counts vary a little every step, across class boundaries: without this a
    /// request one class above last step's buffer mapped and faulted in a fresh one). On a miss,
    /// as the caller is about to map `bytes` afresh, unmaps the oldest pooled mappings while the
    /// mapped total would pass its high-water mark (buffers of sizes asked for again soon stay:
    /// evicting regardless made the next step miss on them in turn).
    pub fn take(bytes: usize) -> Option<(NonNull<f32>, usize)> {
        let mut p = POOL.lock().ok()?;
        let exact = p.free.iter().rposition(|&(_, b)| b == bytes);
        let fit = exact.or_else(|| {
            let most = bytes + bytes / FIT_SLACK;
            (0..p.free.len()).filter(|&i| p.free[i].1 > bytes && p.free[i].1 <= most).min_by_key(|&i| p.free[i].1)
        });
        if let Some(i) = fit {
            let (addr, b) = p.free.remove(i);
            p.bytes -= b;
            p.live += b;
            return NonNull::new(addr as *mut f32).map(|ptr| (ptr, b));
        }
        let mut freed = 0;
        let mut n = 0;
        while n < p.free.len() && p.live + p.bytes - freed + bytes > p.high {
            freed += p.free[n].1;
            n += 1;
        }
        let evicted: Vec<(usize, usize)> = p.free.drain(..n).collect();
        p.bytes -= freed;
        drop(p);
        for (addr, b) in evicted {
            // SAFETY: a mapping of `b` bytes made by `AlignedBuf::alloc`, owned by the pool alone.
            unsafe { libc::munmap(addr as *mut libc::c_void, b) };
        }
        None
    }

    /// Counts a fresh mapping of `bytes` as live.
    pub fn mapped(bytes: usize) {
        if let Ok(mut p) = POOL.lock() {
            p.live += bytes;
            p.high = p.high.max(p.live + p.bytes);
        }
    }

    /// Keeps the mapping for reuse; false when the pool is full (the caller unmaps it).
    pub fn give(ptr: NonNull<f32>, bytes: usize) -> bool {
        let Ok(mut p) = POOL.lock() else { return false };
        p.live = p.live.saturating_sub(bytes);
        if p.bytes + bytes > MAX_BYTES {
            return false;
        }
        p.bytes += bytes;
        p.free.push((ptr.as_ptr() as usize, bytes));
        true
    }

    /// Bytes pooled now (tests).
    #[cfg(test)]
    pub fn pooled() -> usize {
        POOL.lock().map(|p| p.bytes).unwrap_or(0)
    }
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<f32>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[f32], like Vec<f32>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeros(len: usize) -> Self {
        Self::alloc(len, true)
    }

    /// A buffer whose every element the caller will write before reading: a recycled buffer is
    /// handed out as it is (stale but initialised f32 values), saving the zeroing pass.
    pub fn for_overwrite(len: usize) -> Self {
        Self::alloc(len, false)
    }

    fn alloc(len: usize, zeroed: bool) -> Self {
        if len == 0 {
            return AlignedBuf { ptr: NonNull::dangling(), len: 0, map_bytes: 0 };
        }
        let layout = Self::layout(len);
        #[cfg(target_os = "linux")]
        if layout.size() >= MAP_MIN_BYTES {
            let bytes = recycle::class(layout.size());
            if let Some((ptr, map_bytes)) = recycle::take(bytes) {
                let mut b = AlignedBuf { ptr, len, map_bytes };
                if zeroed {
                    use rayon::prelude::*;
                    b.as_mut_slice().par_chunks_mut(1 << 16).for_each(|c| c.fill(0.0));
                }
                return b;
            }
            // SAFETY: an anonymous private mapping of `bytes` (>= layout.size()) bytes; the kernel
            // returns zeroed, page-aligned (hence 64-byte aligned) memory or MAP_FAILED.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw != libc::MAP_FAILED {
                recycle::mapped(bytes);
                if bytes >= HUGE_MIN_BYTES {
                    // Transparent huge pages where the kernel grants them (`madvise` mode): a
                    // fresh mapping is faulted in 2 MiB at a time instead of 4 KiB (measured on a
                    // 64 MiB buffer: 0.94 µs instead of 5 µs per 4 KiB touched). Advice only;
                    // a refusal leaves ordinary pages.
                    // SAFETY: [raw, raw + bytes) is the mapping just made; madvise reads no memory.
                    unsafe { libc::madvise(raw, bytes, libc::MADV_HUGEPAGE) };
                }
                return AlignedBuf {
                    ptr: NonNull::new(raw as *mut f32).expect("mmap returned null"),
                    len,
                    map_bytes: bytes,
                };
            }
        }
        // SAFETY: layout has non-zero size; a null return is handled below.
        let raw = unsafe { alloc::alloc_zeroed(layout) } as *mut f32;
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, map_bytes: 0 }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len * size_of::<f32>(), ALIGN).expect("tensor too large")
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: ptr is valid for len initialised f32s (zeroed at allocation) or dangling with len 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        #[cfg(target_os = "linux")]
        if self.map_bytes > 0 {
            let bytes = self.map_bytes;
            if recycle::give(self.ptr, bytes) {
                return;
            }
            // SAFETY: mapped in `alloc` with exactly this size; nothing borrows it any more.
            unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, bytes) };
            return;
        }
        // SAFETY: allocated in `zeros` with this exact layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut b = AlignedBuf::zeros(self.len);
        b.as_mut_slice().copy_from_slice(self.as_slice());
        b
    }
}

/// An f32 tensor: shape plus a contiguous row-major buffer. Clones and reshapes share the buffer;
/// the first write through a shared handle copies it (copy-on-write), so handles never alias.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    buf: Arc<AlignedBuf>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Tensor { shape: shape.to_vec(), buf: Arc::new(AlignedBuf::zeros(n)) }
    }

    /// A tensor the caller overwrites completely (op outputs): skips zeroing where it can.
    pub fn for_overwrite(shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Tensor { shape: shape.to_vec(), buf: Arc::new(AlignedBuf::for_overwrite(n)) }
    }

    pub fn from_slice(shape: &[usize], data: &[f32]) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure_shape!(n == data.len(), "tensor", "shape {:?} needs {} values, got {}", shape, n, data.len());
        let mut t = Tensor::zeros(shape);
        t.data_mut().copy_from_slice(data);
        Ok(t)
    }

    pub fn full(shape: &[usize], value: f32) -> Self {
        let mut t = Tensor::zeros(shape);
        t.data_mut().fill(value);
        t
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.buf.len
    }
    pub fn data(&self) -> &[f32] {
        self.buf.as_slice()
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.buf).as_mut_slice()
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Same buffer, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure_shape!(n == self.numel(), "reshape", "cannot view {:?} as {:?}", self.shape, shape);
        self.shape = shape.to_vec();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        for n in [1usize, 7, 64, 1000] {
            let t = Tensor::zeros(&[n]);
            assert_eq!(t.data().as_ptr() as usize % ALIGN, 0);
            assert!(t.data().iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn recycled_buffers_come_back_zeroed_from_zeros() {
        // 2 MiB: above the mapping threshold, so the buffer goes through the recycling pool.
        let n = 1 << 19;
        for _ in 0..3 {
            let mut t = Tensor::zeros(&[n]);
            assert!(t.data().iter().all(|&x| x == 0.0));
            t.data_mut().fill(7.0);
        }
        let mut t = Tensor::for_overwrite(&[n]);
        t.data_mut().fill(1.0);
        assert!(t.data().iter().all(|&x| x == 1.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn size_classes_are_within_an_eighth() {
        for b in [1usize << 20, (1 << 20) + 1, 3 << 20, 5_000_000, 123_456_789] {
            let c = recycle::class(b);
            assert!(c >= b && (c - b) * 8 <= b, "{b} -> {c}");
            assert_eq!(c % 4096, 0);
            assert_eq!(recycle::class(c), c);
        }
        // Near sizes share a class: a routed path's buffer for 1000 or 1010 rows is the same.
        assert_eq!(recycle::class(1000 * 1024 * 4), recycle::class(1010 * 1024 * 4));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pool_does_not_grow_with_changing_sizes() {
        // Sizes that differ every "step" (as routed token counts do) must not pile up in the
        // pool: pooled bytes stay within a few of the largest buffers, not step after step.
        let mb = 1 << 18; // f32s per MiB
        for step in 0..80usize {
            let n = (3 + (step * 7) % 29) * mb + step * 4096;
            let a = Tensor::zeros(&[n]);
            let b = Tensor::for_overwrite(&[2 * n]);
            drop((a, b));
        }
        // Generous for buffers other tests pool meanwhile; without eviction this reaches ~1 GiB.
        let cap = 300 << 20;
        assert!(recycle::pooled() <= cap, "pool holds {} MiB", recycle::pooled() >> 20);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_slightly_smaller_request_reuses_a_pooled_mapping() {
        // Sizes no other test asks for (other tests share the pool and may evict: a few tries).
        let (big, small) = (6 << 20, 5 << 20); // f32s: 24 and 20 MiB, two classes apart
        assert!(recycle::class(4 * small) < recycle::class(4 * big));
        let reused = (0..5).any(|_| {
            let a = Tensor::for_overwrite(&[big]);
            let at = a.data().as_ptr() as usize;
            drop(a);
            let b = Tensor::for_overwrite(&[small]);
            b.data().as_ptr() as usize == at
        });
        assert!(reused, "a request within the slack must take the larger pooled mapping");
        let t = Tensor::zeros(&[small]); // recycled and zeroed over its own length only
        assert!(t.data().iter().step_by(4097).all(|&x| x == 0.0));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(Tensor::from_slice(&[2, 3], &[0.0; 5]).is_err());
        let t = Tensor::from_slice(&[2, 3], &[1.0; 6]).unwrap();
        assert_eq!(t.clone().reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
        let mut u = t.clone();
        u.data_mut()[0] = 5.0;
        assert_eq!((t.data()[0], u.data()[0]), (1.0, 5.0), "copy-on-write");
        assert!(t.reshape(&[4]).is_err());
    }
}
