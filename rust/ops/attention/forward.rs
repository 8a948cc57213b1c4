//! Causal attention forward for one (batch, head), tiled for the GEMM microkernels, with an
//! online softmax: memory O(T·hd) per head, never a T×T buffer.
//!
//! The tile is transposed, Sᵀ = K·Qᵀ ([keys × queries]), so the softmax runs along the key
//! axis with one vector lane per query (no horizontal reductions), and Sᵀ's rows are already
//! the B panel of the next product Oᵀ += Vᵀ·Pᵀ:
//! ```text
//! for each query tile (NR queries):           Qb  = scale·Q tile as a B panel (hd × NR)
//!   for each key block (TB keys, from the tile's first visible key (window, document) to the diagonal):
//!     Sᵀ  = Ka[block] · Qb                     Ka: K in A panels (keys × hd), packed once
//!     online softmax down each column of Sᵀ   (max, rescale Oᵀ and l, exp in place)
//!     Oᵀ += Vt[block] · Sᵀ                     Vt: V in A panels (hd × keys), packed once
//!   o = Oᵀᵀ / l,  lse = m + ln l
//! ```

use super::tile::{for_isa, pack_lanes, pack_steps, with_bufs, OutPtr, Plan, Rows};
use crate::cpu::Tile;

/// Where one head's results go: o row i at o_base + i·o_stride (hd values), lse at
/// l_base + i·l_stride.
pub(super) struct HeadOut {
    pub o: OutPtr,
    pub o_base: usize,
    pub o_stride: usize,
    pub lse: OutPtr,
    pub l_base: usize,
    pub l_stride: usize,
}

pub(super) fn head(pl: &Plan, q: Rows, k: Rows, v: Rows, first: &[usize], scale: f32, out: &HeadOut) {
    let Plan { nr, tb, tp, hd, hdm, .. } = *pl;
    // The scratch is taken outside and the body compiled for the plan's ISA inside, so the
    // elementwise loops of the body are vectorised for it.
    with_bufs([tp * hd, hdm * tp, hd * nr, tb * nr, hdm * nr, 3 * nr], |bufs| {
        for_isa!(
            pl.isa,
            fn run(
                pl: &Plan,
                q: Rows,
                k: Rows,
                v: Rows,
                first: &[usize],
                scale: f32,
                out: &HeadOut,
                bufs: [&mut [f32]; 6],
            ) {
                body(pl, q, k, v, first, scale, out, bufs)
            }
        )
    })
}

/// `first[i]` (i < tp, non-decreasing, ≤ i): the first key query i sees (window and document
/// start); queries past T repeat the last query's.
#[inline(always)]
fn body(
    pl: &Plan,
    q: Rows,
    k: Rows,
    v: Rows,
    first: &[usize],
    scale: f32,
    out: &HeadOut,
    [ka, vt, qb, st, ot, lanes]: [&mut [f32]; 6],
) {
    let Plan { mr, nr, tb, t, tp, hd, hdm, .. } = *pl;
    pack_lanes(k, 0, tp, mr, 1.0, ka);
    pack_steps(v, tp, hdm, mr, vt);
    let (ka, vt) = (&*ka, &*vt);
    let (m, rest) = lanes.split_at_mut(nr);
    let (l, corr) = rest.split_at_mut(nr);
    for i0 in (0..t).step_by(nr) {
        pack_lanes(q, i0, nr, nr, scale, qb);
        let qb = &*qb;
        ot.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        // Keys past the tile's last query are all masked; so are the keys before its first
        // query's first key (window, document start): skip their blocks.
        let kend = (i0 + nr).min(t);
        let kstart = first[i0] / tb * tb;
        let last_first = first[i0 + nr - 1];
        for j0 in (kstart..kend).step_by(tb) {
            let rows = (kend - j0).min(tb).div_ceil(mr) * mr;
            for kp in 0..rows / mr {
                // Sᵀ rows kp·MR.. = K panel (MR keys × hd) · Qb (hd × NR); all inside ka/qb/st.
                let a = ka[(j0 / mr + kp) * hd * mr..].as_ptr();
                pl.tile(
                    hd,
                    Tile { a, rsa: 1, csa: mr, b: qb.as_ptr(), ldb: nr, c: st[kp * mr * nr..].as_mut_ptr(), ldc: nr },
                    false,
                );
            }
            let st = &mut st[..rows * nr];
            // Only blocks crossing the diagonal or some query's first key need a mask: key j0+p
            // is hidden from queries i0+q < j0+p (causal) and from those with first > j0+p.
            if j0 + rows > i0 + 1 || j0 < last_first {
                let mut past = 0;
                for (p, srow) in st.chunks_exact_mut(nr).enumerate() {
                    let j = j0 + p;
                    let hidden = j.saturating_sub(i0).min(nr);
                    srow[..hidden].fill(f32::NEG_INFINITY);
                    while past < nr && first[i0 + past] <= j {
                        past += 1;
                    }
                    srow[past.max(hidden)..].fill(f32::NEG_INFINITY);
                }
            }
            // Online softmax down the columns: new max, rescale factors, exp in place, sums.
            pl.softmax_step(st, m, l, corr);
            if corr.iter().any(|c| *c != 1.0) {
                for orow in ot.chunks_exact_mut(nr) {
                    for (o, c) in orow.iter_mut().zip(corr.iter()) {
                        *o *= c;
                    }
                }
            }
            for cp in 0..hdm / mr {
                // Oᵀ rows cp·MR.. += Vt panel (MR dims × keys j0..j0+rows) · Pᵀ (rows × NR).
                let a = vt[cp * tp * mr + j0 * mr..].as_ptr();
                pl.tile(
                    rows,
                    Tile { a, rsa: 1, csa: mr, b: st.as_ptr(), ldb: nr, c: ot[cp * mr * nr..].as_mut_ptr(), ldc: nr },
                    true,
                );
            }
        }
        for qi in 0..nr.min(t - i0) {
            let inv = 1.0 / l[qi];
            let i = i0 + qi;
            // SAFETY: row i of this task's head: hd values at o_base + i·o_stride and one lse
            // value, written by this task only.
            let (orow, lse) = unsafe {
                (out.o.slice(out.o_base + i * out.o_stride, hd), out.lse.slice(out.l_base + i * out.l_stride, 1))
            };
            for (c, o) in orow.iter_mut().enumerate() {
                *o = ot[c * nr + qi] * inv;
            }
            lse[0] = m[qi] + l[qi].ln();
        }
    }
}
