//! Shared pieces of the tiled attention kernels: the tile plan per instruction set, row views
//! of one head, packing into microkernel panels, and the raw output pointer tasks share.
//!
//! Panel formats (see `cpu::Tile`): an "A panel" holds MR lanes per step (lanes = rows of the
//! left operand), a "B panel" NR lanes per step (lanes = columns of the right operand).

use crate::cpu::{self, Isa, Tile};
use crate::tensor::AlignedBuf;

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

/// A zeroed, 64-byte aligned scratch buffer (panel loads stay within cache lines).
pub(super) fn buf(len: usize) -> AlignedBuf {
    AlignedBuf::zeros(len)
}

/// Rows as lanes, hd as steps: dst[(i/w)·hd·w + c·w + i%w] = scale·row_i[c], for i < `rows`
/// (a multiple of w; rows past `src.n` are zero). A panels with w = MR, B panels with w = NR.
pub(super) fn pack_lanes(src: Rows, first: usize, rows: usize, w: usize, scale: f32, dst: &mut [f32]) {
    let hd = src.hd;
    let dst = &mut dst[..rows * hd];
    for (pi, panel) in dst.chunks_exact_mut(hd * w).enumerate() {
        for l in 0..w {
            let i = first + pi * w + l;
            if i < src.n {
                for (d, v) in panel.chunks_exact_mut(w).zip(src.row(i)) {
                    d[l] = scale * v;
                }
            } else {
                panel.chunks_exact_mut(w).for_each(|d| d[l] = 0.0);
            }
        }
    }
}

/// hd as lanes, rows as steps: dst[(c/w)·tp·w + i·w + c%w] = row_i[c] for c < hd_pad, i < tp
/// (zero past hd and past `src.n`).
pub(super) fn pack_steps(src: Rows, tp: usize, hd_pad: usize, w: usize, dst: &mut [f32]) {
    let dst = &mut dst[..hd_pad * tp];
    dst.fill(0.0);
    for i in 0..src.n {
        let row = src.row(i);
        for (cp, chunk) in row.chunks(w).enumerate() {
            dst[cp * tp * w + i * w..][..chunk.len()].copy_from_slice(chunk);
        }
    }
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
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}
