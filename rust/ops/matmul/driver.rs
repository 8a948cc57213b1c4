//! The GEMM loop nest (BLIS order) and its parallel split.
//!
//! ```text
//! for jc in column chunks of NC            B chunk (all of k × NC) packed once per group
//!   parallel over tasks (row block × column block)
//!     for pc in k blocks of KC             KC: a B micro-panel (KC × NR) fills half of L1
//!       A block (MC × KC) packed, or read in place when A is row-major
//!       for jr in NR panels                B micro-panel stays in L1 ...
//!         for ir in MR panels              ... while A micro-panels stream from L2
//!           microkernel MR × NR (+ epilogue after the last k block)
//! ```
//! Determinism: each C element sums its k products in KC blocks in increasing k, whatever the
//! block sizes MC, NC and the task split (which may follow the thread count). KC depends only
//! on the instruction set and the host's L1, so 1 and N threads give the same bits.

use super::pack::{pack_a, pack_b, View};
use super::Epilogue;
use crate::cpu::{self, cache, Isa, Tile};
use crate::{scratch, threads};
use rayon::prelude::*;

/// Below this many multiply-adds the problem stays on the calling thread.
const PARALLEL_MIN_MACS: usize = 96 * 96 * 96;
/// Parallel tasks per thread (more tasks balance better; fewer repack A less often).
const TASKS_PER_THREAD: usize = 3;
/// B panels packed together by one parallel piece of the B pack.
const PACK_PANELS: usize = 8;

/// k block: a packed B micro-panel (KC × NR floats) takes about half of the L1 data cache.
pub fn kc_for(isa: Isa) -> usize {
    let (_, nr) = cpu::gemm_shape(isa);
    let kc = cache::host().l1d / 2 / (nr * 4);
    (kc / 16 * 16).clamp(128, 512)
}

/// Largest row block: the A block (MC × KC) takes about a twelfth of L2 on AVX-512, leaving room
/// for the task's C block and the streamed B panels (larger blocks measured slower there: L2
/// thrashing). AVX2 takes a quarter: its L2 is smaller (512 KiB on Zen 3, where a twelfth is 42
/// rows), and each packed B panel, streamed from L3 once per row block, then serves 21 row
/// panels instead of 7 (the dW products, B = 2048 tokens × 128-704 columns: 1.05-1.15× at one
/// thread on Zen 3, the other shapes unchanged).
fn mc_max(isa: Isa, kc: usize, mr: usize) -> usize {
    let share = if isa == Isa::Avx2 { 4 } else { 12 };
    (cache::host().l2 / share / (kc * 4) / mr * mr).clamp(mr * 4, 1024)
}

/// Column chunk: the packed B chunk (k × NC) takes at most a quarter of L3.
fn nc_max(k: usize, nr: usize) -> usize {
    (cache::host().l3 / 4 / (k.max(1) * 4) / nr * nr).max(nr * 16)
}

/// C as a raw pointer shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks only write disjoint (row range × column range) rectangles of C, and C outlives
// the parallel region that uses the pointer.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

#[derive(Clone, Copy)]
pub(super) struct Problem<'a> {
    pub isa: Isa,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: View<'a>,
    pub b: View<'a>,
    pub accumulate: bool,
    pub epi: Epilogue<'a>,
}

/// C[m×n] (row-major, contiguous) (+)= op(A)·op(B), then the epilogue. k ≥ 1, m, n ≥ 1.
pub(super) fn run(pr: &Problem, c: &mut [f32]) {
    let parallel = pr.m * pr.n * pr.k >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
    let cp = CPtr(c.as_mut_ptr());
    if !parallel {
        return group_run(pr, cp, 0, pr.m, false);
    }
    let (mr, _) = cpu::gemm_shape(pr.isa);
    threads::for_groups(|g, shares| {
        // Rows split across core groups in proportion to their threads, in whole MR panels.
        let total: usize = shares.iter().sum();
        let before: usize = shares[..g].iter().sum();
        let cut = |t: usize| if t == total { pr.m } else { (pr.m * t / total) / mr * mr };
        let (r0, r1) = (cut(before), cut(before + shares[g]));
        if r1 > r0 {
            #[cfg(test)]
            GROUP_SPLITS.fetch_add(usize::from(g > 0), std::sync::atomic::Ordering::Relaxed);
            group_run(pr, cp, r0, r1, true);
        }
    });
}

/// Tests: how many times a core group other than the first ran a share of a GEMM's rows (only
/// the multi-group split does that).
#[cfg(test)]
pub(super) static GROUP_SPLITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Rows [r0, r1) of C, inside one core group (its pool is the current Rayon pool).
fn group_run(pr: &Problem, cp: CPtr, r0: usize, r1: usize, parallel: bool) {
    let (mr, nr) = cpu::gemm_shape(pr.isa);
    let kc = kc_for(pr.isa);
    let kblocks = pr.k.div_ceil(kc);
    let rows = r1 - r0;
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let nc = nc_max(pr.k, nr).min(pr.n.div_ceil(nr) * nr);
    for jc in (0..pr.n).step_by(nc) {
        let ncur = nc.min(pr.n - jc);
        let npan = ncur.div_ceil(nr);
        // Packed B chunk: for each k block, npan panels of (kc × nr), at a fixed stride. Packed
        // in pieces of up to PACK_PANELS panels of one k block (a piece reads runs of up to
        // PACK_PANELS·nr floats from each row of a B stored as [k, n]).
        let mut bpack = scratch::take_shared(kblocks * npan * kc * nr);
        let pieces = npan.div_ceil(PACK_PANELS);
        let fill = |(q, dst): (usize, &mut [f32])| {
            let (pb, g) = (q / pieces, q % pieces);
            let (p0, jp) = (pb * kc, g * PACK_PANELS);
            let cols = (PACK_PANELS * nr).min(ncur - jp * nr);
            pack_b(pr.b, p0, kc.min(pr.k - p0), jc + jp * nr, cols, nr, kc * nr, dst);
        };
        // Chunks of the buffer, one per piece: a k block's npan panels split into `pieces`.
        let chunks =
            bpack.as_mut_slice().chunks_mut(npan * kc * nr).flat_map(|blk| blk.chunks_mut(PACK_PANELS * kc * nr));
        if parallel {
            chunks.collect::<Vec<_>>().into_par_iter().enumerate().for_each(fill);
        } else {
            chunks.enumerate().for_each(fill);
        }
        // Task grid: row blocks × column blocks, sized for this group's threads.
        let want = if parallel { threads * TASKS_PER_THREAD } else { 1 };
        let mb0 = rows.div_ceil(mc_max(pr.isa, kc, mr));
        let mb = if mb0 >= want { mb0 } else { want.min(rows.div_ceil(mr * 4)).max(mb0).max(1) };
        // Row blocks in a multiple of the thread count, so every thread gets the same number of
        // (equal) tasks: 37 blocks on 2 threads left one thread a block behind at the end.
        let mb = if parallel && mb >= threads { mb.div_ceil(threads) * threads } else { mb };
        let nb = want.div_ceil(mb).clamp(1, npan);
        // Row block ib: row panels [ib·P/mb, (ib+1)·P/mb) of the P panels (the last panel maybe
        // short), so blocks differ by at most one panel. Blocks of ⌈rows/mb⌉ rows left the last
        // a fraction of the others (128 rows in 6 blocks: 5 × 24 + 8, and on 2 threads 72 rows
        // against 56): 2 threads, dW products with m = 128: 1.05×, the others 1.00-1.03×.
        let panels = rows.div_ceil(mr);
        let bounds = |ib: usize| (r0 + ib * panels / mb * mr, (r0 + (ib + 1) * panels / mb * mr).min(r1));
        let pan_per_nb = npan.div_ceil(nb);
        let bp = bpack.as_slice();
        let task = |t: usize| {
            let (ib, jb) = (t / nb, t % nb);
            let (i0, i1) = bounds(ib);
            let (p0, p1) = (jb * pan_per_nb, ((jb + 1) * pan_per_nb).min(npan));
            if i0 < i1 && p0 < p1 {
                block(pr, cp, bp, Block { i0, i1, jc, ncur, pan: (p0, p1), npan, kc });
            }
        };
        let ntasks = mb * nb;
        if parallel {
            (0..ntasks).into_par_iter().for_each(task);
        } else {
            (0..ntasks).for_each(task);
        }
    }
}

struct Block {
    i0: usize,
    i1: usize,
    jc: usize,
    ncur: usize,
    pan: (usize, usize),
    npan: usize,
    kc: usize,
}

/// One task: rows [i0, i1) × B panels pan.0..pan.1 of column chunk jc, over all of k. The
/// columns go in sub-blocks whose C part (rows × columns, a sixth of L2) stays in L2 across
/// the k blocks.
fn block(pr: &Problem, cp: CPtr, bpack: &[f32], bl: Block) {
    let (mr, nr) = cpu::gemm_shape(pr.isa);
    let (rows, kc) = (bl.i1 - bl.i0, bl.kc);
    let rows_pad = rows.div_ceil(mr) * mr;
    // A row-major in memory (k contiguous): the microkernel reads it in place, and only a short
    // last panel is packed. Otherwise the whole A block (all k) is packed once per task.
    let direct = pr.a.cs == 1;
    let tail = if direct { rows % mr } else { 0 };
    let kblocks = pr.k.div_ceil(kc);
    let alen = if direct { kblocks * mr * kc } else { kblocks * rows_pad * kc };
    let sub = (cache::host().l2 / 6 / (rows_pad * 4) / nr).max(1);
    scratch::with_local(0, alen, |apack| {
        for (pb, p0) in (0..pr.k).step_by(kc).enumerate() {
            let kcur = kc.min(pr.k - p0);
            if !direct {
                pack_a(pr.a, bl.i0, rows, p0, kcur, mr, &mut apack[pb * rows_pad * kc..]);
            } else if tail != 0 {
                pack_a(pr.a, bl.i1 - tail, tail, p0, kcur, mr, &mut apack[pb * mr * kc..]);
            }
        }
        for s0 in (bl.pan.0..bl.pan.1).step_by(sub) {
            for (pb, p0) in (0..pr.k).step_by(kc).enumerate() {
                let kcur = kc.min(pr.k - p0);
                let last = p0 + kcur == pr.k;
                let acc = pr.accumulate || p0 > 0;
                for jp in s0..(s0 + sub).min(bl.pan.1) {
                    let j0 = bl.jc + jp * nr;
                    let cols = nr.min(bl.ncur - jp * nr);
                    let bptr = bpack[(pb * bl.npan + jp) * kc * nr..].as_ptr();
                    // The next B micro-panel comes from L3 (the packed chunk outgrows L2): fetch
                    // it into L2 a slice at a time while this panel's row loop runs.
                    let next = (jp + 1 < (s0 + sub).min(bl.pan.1))
                        .then(|| &bpack[(pb * bl.npan + jp + 1) * kc * nr..][..kcur * nr]);
                    let (lines, nq) = (kcur * nr / 16, rows.div_ceil(mr));
                    for (q, r0) in (0..rows).step_by(mr).enumerate() {
                        if let Some(nb) = next {
                            for line in q * lines / nq..(q + 1) * lines / nq {
                                cpu::prefetch_l2(nb[line * 16..].as_ptr());
                            }
                        }
                        let rcur = mr.min(rows - r0);
                        let i = bl.i0 + r0;
                        let (a, rsa, csa) = if direct && rcur == mr {
                            (pr.a.data[i * pr.a.rs + p0..].as_ptr(), pr.a.rs, 1)
                        } else if direct {
                            (apack[pb * mr * kc..].as_ptr(), 1, mr)
                        } else {
                            (apack[pb * rows_pad * kc + q * kcur * mr..].as_ptr(), 1, mr)
                        };
                        // SAFETY: C rows [i, i+rcur) × cols [j0, j0+cols) belong to this task
                        // alone; row i starts at i*n in the m×n buffer behind cp.
                        let cdst = unsafe { cp.0.add(i * pr.n + j0) };
                        tile(
                            pr,
                            Tile { a, rsa, csa, b: bptr, ldb: nr, c: cdst, ldc: pr.n },
                            kcur,
                            rcur,
                            cols,
                            acc,
                            last,
                            j0,
                        );
                    }
                }
            }
        }
    });
}

/// One microkernel call; edge tiles go through a stack buffer. Applies the epilogue on `last`.
#[inline(always)]
fn tile(pr: &Problem, t: Tile, kc: usize, rows: usize, cols: usize, acc: bool, last: bool, j0: usize) {
    let (mr, nr) = cpu::gemm_shape(pr.isa);
    if rows == mr && cols == nr {
        // SAFETY: isa is supported (checked by gemm_with); A has MR rows × kc steps at t's
        // strides (a full panel), B a packed kc × NR panel, C a full MR × NR tile of this task.
        unsafe { cpu::gemm_tile(pr.isa, kc, &t, acc) };
    } else {
        let mut tmp = [0.0f32; 8 * 32];
        let tt = Tile { c: tmp.as_mut_ptr(), ldc: nr, ..t };
        // SAFETY: as above, with C the MR × NR stack buffer (MR·NR ≤ 256 on every isa).
        unsafe { cpu::gemm_tile(pr.isa, kc, &tt, false) };
        for r in 0..rows {
            // SAFETY: row r < rows and cols columns lie inside this task's rectangle of C.
            let dst = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), cols) };
            for (d, s) in dst.iter_mut().zip(&tmp[r * nr..r * nr + cols]) {
                *d = if acc { *d + s } else { *s };
            }
        }
    }
    if last && !pr.epi.is_identity() {
        for r in 0..rows {
            // SAFETY: as above.
            let dst = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), cols) };
            pr.epi.apply(dst, j0);
        }
    }
}
