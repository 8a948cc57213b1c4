//! Contiguous row-major f32 tensors on 64-byte aligned buffers. No strides, no views: every op
//! reads and writes whole buffers, which keeps kernels simple and SIMD loads aligned per row start.

use crate::error::{ensure_shape, Result};
use rayon::prelude::*;
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
    /// Bytes of the mmap mapping holding the buffer (its size class, or a pooled mapping up to
    /// a quarter larger), freed by munmap or pooled; 0 when the global allocator holds it.
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
/// buffers. A miss evicts (unmaps) the longest-idle pooled buffers only as far as needed to keep
/// pooled plus live mappings within the peak live demand plus a headroom (`headroom`): sizes
/// that stopped being asked for do not pile up step after step, and a step whose forward and
/// backward want different size mixes does not unmap and re-fault the same buffers every step.
#[cfg(target_os = "linux")]
mod recycle {
    use std::ptr::NonNull;
    use std::sync::Mutex;

    /// Bytes held for reuse at most; beyond it buffers go back to the kernel.
    const MAX_BYTES: usize = 1 << 30;

    /// Headroom over the peak live demand that pooled buffers may fill: a quarter, at most
    /// 256 MiB. Evicting on every miss (no headroom) kept the peak tight but made every small
    /// dense step unmap and map again 22 buffers (49 MB) and SAGI's 30-40 MB; a quarter lets
    /// the size mixes of forward and backward coexist (no mapping in a steady dense step, 0-3
    /// MB per routed step) for a few MiB to tens of MiB more peak RSS at the test sizes.
    fn headroom(peak: usize) -> usize {
        (peak / 4).min(256 << 20)
    }

    /// The mapping size for a request of `bytes` (>= 1 MiB): rounded up to a multiple of an
    /// eighth of its power of two (so a multiple of 128 KiB, hence of the page size).
    pub fn class(bytes: usize) -> usize {
        let p = 1usize << (usize::BITS - 1 - bytes.leading_zeros());
        let step = (p / 8).max(1);
        bytes.div_ceil(step) * step
    }

    /// The pool's bookkeeping, apart from the mappings themselves (so the policy is testable
    /// with made-up addresses).
    #[derive(Default)]
    pub(super) struct Pool {
        /// (address, bytes), oldest first.
        free: Vec<(usize, usize)>,
        /// Bytes pooled (the sum over `free`).
        pub(super) bytes: usize,
        /// Bytes of mapped buffers handed out and not yet dropped.
        pub(super) live: usize,
        /// The most bytes ever live at once, counting a request being served.
        pub(super) peak: usize,
    }

    impl Pool {
        const fn new() -> Self {
            Pool { free: Vec::new(), bytes: 0, live: 0, peak: 0 }
        }

        /// A pooled (address, mapping bytes), now live: one of exactly `bytes` (most recently
        /// freed first), else the smallest of at most a quarter more (its pages are resident
        /// already, so RSS does not grow, and routed token counts that move by a class or two
        /// from step to step still hit). On a miss, the pooled mappings to unmap (longest idle
        /// first) so that pooled plus live plus the `bytes` the caller maps next stay within the
        /// peak plus `headroom`.
        pub(super) fn take(&mut self, bytes: usize) -> Result<(usize, usize), Vec<(usize, usize)>> {
            let exact = self.free.iter().rposition(|&(_, b)| b == bytes);
            let near = || {
                let fits = self.free.iter().enumerate().filter(|&(_, &(_, b))| b > bytes && b - bytes <= bytes / 4);
                fits.min_by_key(|&(_, &(_, b))| b).map(|(i, _)| i)
            };
            if let Some(i) = exact.or_else(near) {
                let (addr, b) = self.free.remove(i);
                self.bytes -= b;
                self.mapped(b);
                return Ok((addr, b));
            }
            let peak = self.peak.max(self.live + bytes);
            let cap = peak + headroom(peak);
            let mut n = 0;
            while n < self.free.len() && self.live + bytes + self.bytes > cap {
                self.bytes -= self.free[n].1;
                n += 1;
            }
            Err(self.free.drain(..n).collect())
        }

        /// Counts a mapping of `bytes` as live.
        pub(super) fn mapped(&mut self, bytes: usize) {
            self.live += bytes;
            self.peak = self.peak.max(self.live);
        }

        /// A live mapping was dropped: pools it, or returns false when the pool is full (the
        /// caller unmaps it).
        pub(super) fn give(&mut self, addr: usize, bytes: usize) -> bool {
            self.live = self.live.saturating_sub(bytes);
            if self.bytes + bytes > MAX_BYTES {
                return false;
            }
            self.bytes += bytes;
            self.free.push((addr, bytes));
            true
        }
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool::new());

    /// A pooled mapping of at least `bytes` (a class size) and its size, or None: the caller
    /// maps it afresh and reports it with `mapped`. Evicted mappings are unmapped outside the lock.
    pub fn take(bytes: usize) -> Option<(NonNull<f32>, usize)> {
        let evicted = match POOL.lock().ok()?.take(bytes) {
            Ok((addr, b)) => return NonNull::new(addr as *mut f32).map(|p| (p, b)),
            Err(evicted) => evicted,
        };
        for (addr, b) in evicted {
            // SAFETY: a mapping of `b` bytes made by `AlignedBuf::alloc`, owned by the pool alone.
            unsafe { libc::munmap(addr as *mut libc::c_void, b) };
        }
        None
    }

    /// Counts a fresh mapping of `bytes` as live.
    pub fn mapped(bytes: usize) {
        if let Ok(mut p) = POOL.lock() {
            p.mapped(bytes);
        }
    }

    /// Keeps the dropped mapping for reuse; false when the pool is full (the caller unmaps it).
    pub fn give(ptr: NonNull<f32>, bytes: usize) -> bool {
        POOL.lock().is_ok_and(|mut p| p.give(ptr.as_ptr() as usize, bytes))
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
            // SAFETY: a mapping of exactly `map_bytes` bytes (made in `alloc`, or pooled and
            // handed out by `recycle::take`); nothing borrows it any more.
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
        // Every element is written by the copy: no zeroing pass first.
        let mut t = Tensor::for_overwrite(shape);
        copy_par(data, t.data_mut());
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

/// Copies `src` into `dst` (same length), cut into blocks over the Rayon pool when it is large
/// enough for the split to pay: one core's copy bandwidth is well below the socket's.
pub fn copy_par(src: &[f32], dst: &mut [f32]) {
    const BLOCK: usize = 1 << 16; // 256 KiB per task
    if src.len() < 2 * BLOCK {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(d, s)| d.copy_from_slice(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_par_copies_every_element_at_any_length() {
        for n in [0, 1, 1000, (1 << 17) - 1, (1 << 17) + 1, 5 << 16] {
            let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![f32::NAN; n];
            copy_par(&src, &mut dst);
            assert!(src.iter().zip(&dst).all(|(a, b)| a.to_bits() == b.to_bits()), "length {n}");
            let t = Tensor::from_slice(&[n], &src).unwrap();
            assert!(t.data().iter().zip(&src).all(|(a, b)| a.to_bits() == b.to_bits()), "from_slice {n}");
        }
    }

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
    fn pool_keeps_a_steady_step_without_remapping() {
        // A step's forward keeps six 1 MiB activations alive while it asks for a 6 MiB logits
        // chunk; its backward wants two 1.5 MiB gradients while they are still alive instead. Evicting on every
        // miss unmapped the other phase's buffers each step; with the headroom, after the first
        // step every request is a hit, and the pool stays within the peak plus a quarter.
        let mib = 1usize << 20;
        let mut pool = recycle::Pool::default();
        let mut next = 0usize;
        let mut maps = 0;
        let mut get = |pool: &mut recycle::Pool, bytes: usize, maps: &mut usize| -> (usize, usize) {
            match pool.take(bytes) {
                Ok(hit) => hit,
                Err(_) => {
                    *maps += 1;
                    pool.mapped(bytes);
                    next += 1;
                    (next, bytes)
                }
            }
        };
        let mut per_step = Vec::new();
        for _ in 0..6 {
            let before = maps;
            let acts: Vec<(usize, usize)> = (0..6).map(|_| get(&mut pool, mib, &mut maps)).collect();
            let (logits, b) = get(&mut pool, 6 * mib, &mut maps);
            assert!(pool.give(logits, b));
            let grads: Vec<(usize, usize)> = (0..2).map(|_| get(&mut pool, 3 * mib / 2, &mut maps)).collect();
            for (a, b) in acts.into_iter().chain(grads) {
                assert!(pool.give(a, b));
            }
            assert!(pool.live == 0 && pool.bytes <= pool.peak + pool.peak / 4, "pooled {}", pool.bytes);
            per_step.push(maps - before);
        }
        assert_eq!(per_step[0], 9);
        assert!(per_step[1..].iter().all(|&m| m == 0), "maps per step {per_step:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pool_serves_a_near_size_from_a_larger_mapping() {
        // A routed path's buffer one class larger than last step's is served from the pooled
        // one (no fresh mapping); two classes past a quarter are not (a new mapping is cheaper
        // than holding that much unused).
        let mib = 1usize << 20;
        let mut pool = recycle::Pool::default();
        pool.mapped(4 * mib);
        assert!(pool.give(0x1000, 4 * mib));
        let smaller = recycle::class(4 * mib - 300 * 1024);
        assert_eq!(pool.take(smaller), Ok((0x1000, 4 * mib)));
        assert!(pool.give(0x1000, 4 * mib));
        // Half the size misses; mapping 2 MiB next to the pooled 4 would pass the peak (4 MiB)
        // plus its quarter, so the pooled mapping is evicted.
        assert_eq!(pool.take(2 * mib), Err(vec![(0x1000, 4 * mib)]));
        assert_eq!(pool.bytes, 0);
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
