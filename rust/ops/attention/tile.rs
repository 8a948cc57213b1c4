//! Shared pieces of the tiled attention kernels: the tile plan per instruction set, row views
//! of one head, packing into microkernel panels, and the raw output pointer tasks share.
//!
//! Panel formats (see `cpu::Tile`): an "A panel" holds MR lanes per step (lanes = rows of the
//! left operand), a "B panel" NR lanes per step (lanes = columns of the right operand).

use crate::cpu::{self, Isa, Tile};
use crate::scratch;

/// Tile sizes for one instruction set and head shape.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    /// Key block (and backward query tile): a multiple of both MR and NR, about 64.
    pub tb: usize,
    pub t: usize,
    /// T padded to a multiple of `tb`.
    pub tp: usize,
    pub hd: usize,
    /// hd padded to a multiple of MR / of NR.
    pub hdm: usize,
    pub hdn: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Plan {
    pub fn new(isa: Isa, t: usize, hd: usize) -> Plan {
        let (mr, nr) = cpu::gemm_shape(isa);
        let l = mr / gcd(mr, nr) * nr;
        let tb = l * (64 / l).max(1);
        Plan { isa, mr, nr, tb, t, tp: t.div_ceil(tb) * tb, hd, hdm: hd.div_ceil(mr) * mr, hdn: hd.div_ceil(nr) * nr }
    }

    /// One microkernel call: C (+)= A·B over `kc` steps.
    #[inline(always)]
    pub fn tile(&self, kc: usize, t: Tile, accumulate: bool) {
        // SAFETY: `isa` comes from cpu::isa(), which only reports supported sets; every caller
        // builds `t` from buffers sized by this plan (see each call site).
        unsafe { cpu::gemm_tile(self.isa, kc, &t, accumulate) }
    }

    /// One online-softmax step over a block of scores (NR columns, see `cpu::softmax_step`).
    #[inline(always)]
    pub fn softmax_step(&self, st: &mut [f32], m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
        // SAFETY: `isa` comes from a supported-isa check (cpu::isa / supports).
        unsafe { cpu::softmax_step(self.isa, st, self.nr, m, l, corr) }
    }

    /// One backward row, P and dS in place (see `cpu::attn_ds_row`).
    #[inline(always)]
    pub fn ds_row(&self, s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
        // SAFETY: as above.
        unsafe { cpu::attn_ds_row(self.isa, s, dp, lse, delta, scale) }
    }
}

/// Rows of one head: row i (i < n) is data[base + i*stride ..][..hd].
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub data: &'a [f32],
    pub base: usize,
    pub stride: usize,
    pub n: usize,
    pub hd: usize,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[self.base + i * self.stride..][..self.hd]
    }
}

/// One value per row of a head: row i at data[base + i·stride] (a score bias column).
#[derive(Clone, Copy)]
pub(super) struct Col<'a> {
    pub data: &'a [f32],
    pub base: usize,
    pub stride: usize,
}

impl Col<'_> {
    /// The first `n` values into dst[..n], zero past them.
    #[inline(always)]
    pub fn gather(&self, n: usize, dst: &mut [f32]) {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = if i < n { self.data[self.base + i * self.stride] } else { 0.0 };
        }
    }
}

/// Splits this thread's scratch buffer (64-byte aligned, reused across calls so no page is
/// faulted in per head) into pieces of the given lengths, each rounded up to 16 floats so
/// every piece stays 64-byte aligned, and runs `f` on them. Contents are unspecified.
pub(super) fn with_bufs<R, const N: usize>(lens: [usize; N], f: impl FnOnce([&mut [f32]; N]) -> R) -> R {
    let total: usize = lens.iter().map(|l| l.div_ceil(16) * 16).sum();
    scratch::with_local(1, total, |mut rest: &mut [f32]| {
        let parts: [&mut [f32]; N] = std::array::from_fn(|i| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(lens[i].div_ceil(16) * 16);
            rest = tail;
            &mut head[..lens[i]]
        });
        f(parts)
    })
}

/// Runs `$body` (an expression) compiled for the plan's instruction set, so the elementwise
/// loops around the microkernel calls are vectorised for it too.
macro_rules! for_isa {
    ($isa:expr, fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512($($arg: $ty),*) $body
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) $body
        fn generic($($arg: $ty),*) $body
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the plan's isa comes from a supported-isa check (cpu::isa / supports).
            crate::cpu::Isa::Avx512 => unsafe { avx512($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            crate::cpu::Isa::Avx2 => unsafe { avx2($($arg),*) },
            _ => generic($($arg),*),
        }
    }};
}
pub(super) use for_isa;

/// Rows as lanes, hd as steps: dst[(i/w)·hd·w + c·w + i%w] = scale·row_i[c], for i < `rows`
/// (a multiple of w; rows past `src.n` are zero). A panels with w = MR, B panels with w = NR.
/// Inlined so it is compiled for the caller's instruction set (see `for_isa`).
#[inline(always)]
pub(super) fn pack_lanes(src: Rows, first: usize, rows: usize, w: usize, scale: f32, dst: &mut [f32]) {
    let hd = src.hd;
    let dst = &mut dst[..rows * hd];
    let c8 = hd / 8 * 8;
    for (pi, panel) in dst.chunks_exact_mut(hd * w).enumerate() {
        // Whole groups of 8 real rows: 8×8 register transposes, then the columns past c8.
        let full = if w.is_multiple_of(8) { w.min(src.n.saturating_sub(first + pi * w)) / 8 * 8 } else { 0 };
        for l0 in (0..full).step_by(8) {
            let i = first + pi * w + l0;
            // The rows two groups ahead (see `prefetch_rows`).
            prefetch_rows(src, i + 16, 8);
            for c0 in (0..c8).step_by(8) {
                cpu::transpose8x8(
                    &src.data[src.base + i * src.stride + c0..],
                    src.stride,
                    &mut panel[c0 * w + l0..],
                    w,
                    scale,
                );
            }
            for l in l0..l0 + 8 {
                for c in c8..hd {
                    panel[c * w + l] = scale * src.row(i + l - l0)[c];
                }
            }
        }
        for l in full..w {
            let i = first + pi * w + l;
            let lane = panel[l..].iter_mut().step_by(w);
            if i < src.n {
                lane.zip(src.row(i)).for_each(|(d, v)| *d = scale * v);
            } else {
                lane.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// hd as lanes, rows as steps: dst[(c/w)·tp·w + i·w + c%w] = row_i[c] for c < hd_pad, i < tp
/// (zero past hd and past `src.n`).
#[inline(always)]
pub(super) fn pack_steps(src: Rows, tp: usize, hd_pad: usize, w: usize, dst: &mut [f32]) {
    let dst = &mut dst[..hd_pad * tp];
    dst.fill(0.0);
    for i in 0..src.n {
        let row = src.row(i);
        for (cp, chunk) in row.chunks(w).enumerate() {
            dst[cp * tp * w + i * w..][..chunk.len()].iter_mut().zip(chunk).for_each(|(d, v)| *d = *v);
        }
    }
}

/// Asks for rows `first..first + n` of `src` (those below `src.n`) to be brought into the cache
/// ahead of their use. A head's rows are H·hd apart; a row read for the first time (a strip of
/// MR rows about to be an A operand, rows a pack is about to reach) otherwise stalls its
/// reader on a miss to L3 or memory that the hardware prefetcher does not hide at this stride.
/// A hint: it changes no value.
#[inline(always)]
pub(super) fn prefetch_rows(src: Rows, first: usize, n: usize) {
    for i in first..(first + n).min(src.n) {
        let row = src.row(i);
        for c in (0..src.hd).step_by(16) {
            cpu::prefetch_l2(row[c..].as_ptr());
        }
        if let Some(last) = row.last() {
            cpu::prefetch_l2(last);
        }
    }
}

/// `pack_steps` for the row layout (hd a multiple of `w`, `w` a multiple of 8): the same
/// layout, dst[(c/w)·tp·w + i·w + c%w] = row_i[c], but only rows past `src.n` are zeroed (the
/// rest is written once), each row goes over in 8-float copies, and the row 8 ahead is
/// prefetched: the rows are H·hd apart in memory, a stride the hardware prefetcher does not
/// follow far enough to hide the latency of first touching them.
#[inline(always)]
pub(super) fn pack_steps_rows(src: Rows, tp: usize, w: usize, dst: &mut [f32]) {
    let hd = src.hd;
    assert!(hd.is_multiple_of(w) && w.is_multiple_of(8) && src.n <= tp);
    let dst = &mut dst[..hd * tp];
    for i in 0..src.n {
        if i + 8 < src.n {
            let ahead = src.row(i + 8);
            for c in (0..hd).step_by(16) {
                cpu::prefetch_l2(ahead[c..].as_ptr());
            }
        }
        let row = src.row(i);
        for (cp, chunk) in row.chunks_exact(w).enumerate() {
            let d = &mut dst[cp * tp * w + i * w..][..w];
            for (d8, s8) in d.chunks_exact_mut(8).zip(chunk.chunks_exact(8)) {
                d8.copy_from_slice(s8);
            }
        }
    }
    for cp in 0..hd / w {
        dst[cp * tp * w + src.n * w..(cp + 1) * tp * w].fill(0.0);
    }
}

/// Whether a column of `rows` rows, `stride` floats apart, crowds the L1 sets it maps to: an L1
/// of 4 KiB per way (32 KiB 8-way, 48 KiB 12-way) puts addresses 4 KiB apart in one set, so
/// such a column spans only 4096 / gcd(stride bytes, 4096) sets (2 for H·hd = 512); with 8 ways
/// each, fewer lines than rows means the column cannot stay in L1 while a microkernel call
/// streams it as its B operand.
pub(super) fn set_crowded(stride: usize, rows: usize) -> bool {
    const WAY_BYTES: usize = 4096;
    const WAYS: usize = 8;
    let sets = (WAY_BYTES / gcd(stride * 4, WAY_BYTES)).min(WAY_BYTES / 64);
    sets * WAYS < rows
}

/// An output buffer that tasks write at disjoint positions.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);
// SAFETY: every task writes only the rows of its own (batch, head), so writes never overlap,
// and the buffer outlives the parallel region.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `off + len` is within the buffer and no other task touches these elements.
    pub unsafe fn slice<'a>(self, off: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: the range lies inside the buffer and is this task's alone (the contract).
        unsafe { std::slice::from_raw_parts_mut(self.0.add(off), len) }
    }
}

/// The A operand of `mr` rows starting at row `i0`: read in place (pointer, row stride) when
/// all of them exist, else copied into `tail` (mr × hd, zero past the last row).
#[inline(always)]
pub(super) fn strip(src: Rows, i0: usize, mr: usize, tail: &mut [f32]) -> (*const f32, usize) {
    if i0 + mr <= src.n {
        return (src.data[src.base + i0 * src.stride..].as_ptr(), src.stride);
    }
    let tail = &mut tail[..mr * src.hd];
    tail.fill(0.0);
    for (r, dst) in tail.chunks_exact_mut(src.hd).enumerate().take(src.n.saturating_sub(i0)) {
        dst.copy_from_slice(src.row(i0 + r));
    }
    (tail.as_ptr(), src.hd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_crowding_follows_the_stride() {
        // Rows 2 KiB and 1 KiB apart fall into 2 and 4 sets (16, 32 lines): a column of 48
        // crowds them; 512 B apart, 8 sets (64 lines) hold it; an odd stride spreads over all.
        assert!(set_crowded(512, 48));
        assert!(set_crowded(256, 48));
        assert!(!set_crowded(128, 48));
        assert!(!set_crowded(100, 48));
        assert!(!set_crowded(512, 16));
    }

    #[test]
    fn pack_steps_rows_matches_pack_steps() {
        // 5 rows of hd 32, 48 floats apart, into tp = 8 (rows 5..8 zero), w = 16.
        let data: Vec<f32> = (0..5 * 48).map(|i| i as f32 + 0.5).collect();
        let src = Rows { data: &data, base: 3, stride: 48, n: 5, hd: 32 };
        let (mut a, mut b) = (vec![f32::NAN; 32 * 8], vec![f32::NAN; 32 * 8]);
        pack_steps(src, 8, 32, 16, &mut a);
        pack_steps_rows(src, 8, 16, &mut b);
        assert_eq!(a, b);
    }
}
