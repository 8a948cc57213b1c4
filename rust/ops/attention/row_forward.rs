//! Causal attention forward for one (batch, head) in the row layout: queries as microkernel
//! rows, so Q is read in place and only K is repacked (as B panels of NR keys, once per head);
//! V is read in place too, unless its row stride crowds the L1 sets (`tile::set_crowded`),
//! then it is packed once per head as B panels of NR columns with keys as steps.
//! For head sizes that are a multiple of NR on AVX2 and scalar (see `mod.rs` for the choice).
//!
//! A strip of MR queries sees at most the keys up to its last query, so its whole score strip
//! (MR × keys, O(MR·T) memory, never T×T) is computed at once and the softmax is exact in one
//! go: no running max, no rescaling of the output.
//! ```text
//! Kt = K as B panels (per NR keys: hd × NR, keys contiguous; zero past T)
//! Vs = V as B panels (per NR columns: tp × NR, keys as steps), or V in place
//! for each strip of MR queries (from its first query's first visible key to its last query):
//!   S  = Q[strip] · Kt[.., keys]            A = Q rows in place, one K panel per microkernel call
//!   (with a score bias: S[.., j] += bias[j], so the scores are scale·(q·k + bias))
//!   per row: m = max(scale·s), p = exp(scale·s − m) over the visible keys, 0 elsewhere, l = Σp
//!   O  = P · V[keys]                        B = Vs (NR of hd per call), kc = keys
//!   o = O / l,  lse = m + ln l
//! ```

use super::forward::HeadOut;
use super::row_kernels::softmax_row;
use super::tile::{
    for_isa, pack_lanes, pack_steps_rows, prefetch_rows, set_crowded, strip, with_bufs, Col, Plan, Rows,
};
use crate::cpu::{self, Tile};

#[allow(clippy::too_many_arguments)]
pub(super) fn head(
    pl: &Plan,
    q: Rows,
    k: Rows,
    v: Rows,
    bias: Option<Col>,
    first: &[usize],
    scale: f32,
    out: &HeadOut,
) {
    let Plan { mr, tp, hd, .. } = *pl;
    let bn = if bias.is_some() { tp } else { 0 };
    with_bufs([hd * tp, hd * tp, mr * tp, mr * hd, mr * hd, bn], |bufs| {
        for_isa!(
            pl.isa,
            fn run(
                pl: &Plan,
                q: Rows,
                k: Rows,
                v: Rows,
                bias: Option<Col>,
                first: &[usize],
                scale: f32,
                out: &HeadOut,
                bufs: [&mut [f32]; 6],
            ) {
                body(pl, q, k, v, bias, first, scale, out, bufs)
            }
        )
    })
}

/// `first` as in `forward::body`; `bias` (when given) is gathered into `bb` (tp keys, zero
/// past T).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body(
    pl: &Plan,
    q: Rows,
    k: Rows,
    v: Rows,
    bias: Option<Col>,
    first: &[usize],
    scale: f32,
    out: &HeadOut,
    [kt, vs, s, oacc, qtail, bb]: [&mut [f32]; 6],
) {
    let Plan { mr, nr, t, tp, hd, .. } = *pl;
    let bias = bias.map(|c| {
        c.gather(t, bb);
        &*bb
    });
    pack_lanes(k, 0, tp, nr, 1.0, kt);
    // V as the B operand of P·V: from step panels when its rows read in place would crowd
    // their L1 sets (see `tile::set_crowded`).
    let pv = set_crowded(v.stride, pl.tb);
    if pv {
        pack_steps_rows(v, tp, nr, vs);
    }
    let (kt, vs) = (&*kt, &*vs);
    let mut ml = [(0.0f32, 0.0f32); 16];
    for i0 in (0..t).step_by(mr) {
        let rows = mr.min(t - i0);
        // The next strip's query rows, and output rows, are first touched one strip from now.
        prefetch_rows(q, i0 + mr, mr);
        for i in (i0 + mr..i0 + 2 * mr).take_while(|i| *i < t) {
            let o = out.o.0.wrapping_add(out.o_base + i * out.o_stride);
            for c in (0..hd).step_by(16) {
                cpu::prefetch_l2(o.wrapping_add(c));
            }
        }
        let (qa, qs) = strip(q, i0, mr, qtail);
        // Keys kstart..kend: from the strip's first visible key (rounded down to NR) to its
        // last query; S is computed in NR-key columns up to kend rounded up (Kt is zero there).
        let (kstart, kend) = (first[i0] / nr * nr, i0 + rows);
        let w = kend.div_ceil(nr) * nr - kstart;
        let s = &mut s[..mr * w];
        for jc in (0..w).step_by(nr) {
            // S[.., jc..jc+NR] = Q strip (MR × hd, row stride qs) · the K panel of keys
            // kstart+jc.. (hd × NR): inside q (or qtail), kt (kstart + w ≤ tp) and s.
            pl.tile(
                hd,
                Tile {
                    a: qa,
                    rsa: qs,
                    csa: 1,
                    b: kt[(kstart + jc) * hd..].as_ptr(),
                    ldb: nr,
                    c: s[jc..].as_mut_ptr(),
                    ldc: w,
                },
                false,
            );
        }
        if let Some(bias) = bias {
            // The bias lane's term, added after the dot product as its FMA with q̃ = 1 would:
            // keys kstart..kstart+w (≤ tp, zero past T).
            let bias = &bias[kstart..kstart + w];
            for srow in s.chunks_exact_mut(w).take(rows) {
                srow.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
            }
        }
        for (r, srow) in s.chunks_exact_mut(w).enumerate() {
            if r < rows {
                let i = i0 + r;
                ml[r] = softmax_row(pl.isa, srow, first[i] - kstart, i + 1 - kstart, scale);
            } else {
                srow.fill(0.0);
            }
        }
        let s = &*s;
        for c0 in (0..hd).step_by(nr) {
            // O[.., c0..c0+NR] = P (MR × keys, row stride w) · V rows kstart..kend, columns
            // c0..c0+NR ≤ hd, from the step panels or in place: kend ≤ T ≤ tp.
            let (b, ldb) = if pv {
                (vs[c0 * tp + kstart * nr..].as_ptr(), nr)
            } else {
                (v.data[v.base + kstart * v.stride + c0..].as_ptr(), v.stride)
            };
            pl.tile(
                kend - kstart,
                Tile { a: s.as_ptr(), rsa: w, csa: 1, b, ldb, c: oacc[c0..].as_mut_ptr(), ldc: hd },
                false,
            );
        }
        for (r, &(m, l)) in ml.iter().enumerate().take(rows) {
            let (inv, i) = (1.0 / l, i0 + r);
            // SAFETY: row i of this task's head: hd values at o_base + i·o_stride and one lse
            // value, written by this task only.
            let (orow, lse) = unsafe {
                (out.o.slice(out.o_base + i * out.o_stride, hd), out.lse.slice(out.l_base + i * out.l_stride, 1))
            };
            for (o, a) in orow.iter_mut().zip(&oacc[r * hd..(r + 1) * hd]) {
                *o = a * inv;
            }
            lse[0] = m + l.ln();
        }
    }
}
