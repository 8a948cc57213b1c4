//! Causal attention backward for one (batch, query head), tiled for the GEMM microkernels
//! (FlashAttention-2 order): for each key block, walk the query tiles at or below the diagonal
//! (no further than the last query that sees the block under a window or document mask),
//! recompute P from the saved log-sum-exp, and accumulate dV, dK for the block and dQ for the
//! head. Five products per tile pair, no T×T buffer, no atomics:
//! ```text
//! S  = Qa·Kb   dP = dOa·Vb                   (TB × TB tiles; Q pre-scaled)
//! P  = exp(S − lse)   dS = P∘(dP − δ)·scale  (δ = rowsum(dO∘O); masked above the diagonal)
//! dV_j += Pᵀ·dO_i   dK_j += dSᵀ·Q_i          (P, dS read in place as transposed A panels)
//! dQ_i += dS·K_j                             (dS read in place as a row-major A operand)
//! ```

use super::tile::{for_isa, pack_lanes, pack_steps, with_bufs, OutPtr, Plan, Rows};
use crate::cpu::{self, Tile};

pub(super) struct HeadIn<'a> {
    pub q: Rows<'a>,
    pub k: Rows<'a>,
    pub v: Rows<'a>,
    pub o: Rows<'a>,
    pub dout: Rows<'a>,
    /// lse of query i at lse[l_base + i·l_stride]
    pub lse: &'a [f32],
    pub l_base: usize,
    pub l_stride: usize,
}

/// Destination rows (hd values each) of one head's gradient: row i at base + i·stride.
#[derive(Clone, Copy)]
pub(super) struct GradOut {
    pub ptr: OutPtr,
    pub base: usize,
    pub stride: usize,
}

impl GradOut {
    /// # Safety
    /// The rows belong to the calling task alone and lie inside the buffer.
    pub(super) unsafe fn row<'a>(&self, i: usize, hd: usize) -> &'a mut [f32] {
        // SAFETY: the caller's contract is the one `OutPtr::slice` asks for.
        unsafe { self.ptr.slice(self.base + i * self.stride, hd) }
    }
}

pub(super) fn head(pl: &Plan, x: &HeadIn, first: &[usize], scale: f32, dq: GradOut, dk: GradOut, dv: GradOut) {
    let Plan { tb, tp, hd, hdn, .. } = *pl;
    let (th, ht, bt, bh) = (tp * hd, hdn * tp, tb * tb, tb * hdn);
    // Scratch outside, body compiled for the plan's ISA inside (see forward::head).
    with_bufs([th, th, th, th, ht, ht, ht, tp * hdn, bt, bt, bh, bh, tp, tp], |bufs| {
        for_isa!(
            pl.isa,
            fn run(
                pl: &Plan,
                x: &HeadIn,
                first: &[usize],
                scale: f32,
                dq: GradOut,
                dk: GradOut,
                dv: GradOut,
                bufs: [&mut [f32]; 14],
            ) {
                body(pl, x, first, scale, dq, dk, dv, bufs)
            }
        )
    })
}

/// `first` as in `forward::body`: first[i] is the first key query i sees.
#[inline(always)]
fn body(
    pl: &Plan,
    x: &HeadIn,
    first: &[usize],
    scale: f32,
    dq: GradOut,
    dk: GradOut,
    dv: GradOut,
    bufs: [&mut [f32]; 14],
) {
    let Plan { mr, nr, tb, t, tp, hd, hdn, .. } = *pl;
    let [qa, doa, kb, vb, don, qn, kn, dqa, s, dp, dkj, dvj, lse, delta] = bufs;
    pack_lanes(x.q, 0, tp, mr, scale, qa);
    pack_lanes(x.dout, 0, tp, mr, 1.0, doa);
    pack_lanes(x.k, 0, tp, nr, 1.0, kb);
    pack_lanes(x.v, 0, tp, nr, 1.0, vb);
    pack_steps(x.dout, tp, hdn, nr, don);
    pack_steps(x.q, tp, hdn, nr, qn);
    pack_steps(x.k, tp, hdn, nr, kn);
    let (qa, doa, kb, vb, don, qn, kn) = (&*qa, &*doa, &*kb, &*vb, &*don, &*qn, &*kn);
    // Padded queries get lse = +inf, so their P (and dS) is exactly 0.
    for (i, (l, d)) in lse.iter_mut().zip(delta.iter_mut()).enumerate() {
        (*l, *d) = if i < t {
            (x.lse[x.l_base + i * x.l_stride], cpu::dot(x.dout.row(i), x.o.row(i)))
        } else {
            (f32::INFINITY, 0.0)
        };
    }
    dqa.fill(0.0);
    for j0 in (0..t).step_by(tb) {
        dkj.fill(0.0);
        dvj.fill(0.0);
        // The queries that see a key of this block: from its first key to the last query whose
        // first key is inside the block (first is non-decreasing).
        let iend = first[..t].partition_point(|f| *f < j0 + tb);
        for i0 in (j0..iend).step_by(tb) {
            // On the diagonal tile, query i sees keys ≤ i only: S/dP microtiles wholly above the
            // diagonal are skipped (their P and dS are zeroed below), and the products below
            // start or stop at the diagonal.
            let diag = i0 == j0;
            for qp in 0..tb / mr {
                let a_off = (i0 / mr + qp) * hd * mr;
                for kp in 0..tb / nr {
                    if diag && kp * nr > qp * mr + mr - 1 {
                        continue;
                    }
                    let b_off = (j0 / nr + kp) * hd * nr;
                    let c_off = qp * mr * tb + kp * nr;
                    // S, dP tiles (MR × NR) from packed panels; all offsets inside the buffers.
                    pl.tile(
                        hd,
                        Tile {
                            a: qa[a_off..].as_ptr(),
                            rsa: 1,
                            csa: mr,
                            b: kb[b_off..].as_ptr(),
                            ldb: nr,
                            c: s[c_off..].as_mut_ptr(),
                            ldc: tb,
                        },
                        false,
                    );
                    pl.tile(
                        hd,
                        Tile {
                            a: doa[a_off..].as_ptr(),
                            rsa: 1,
                            csa: mr,
                            b: vb[b_off..].as_ptr(),
                            ldb: nr,
                            c: dp[c_off..].as_mut_ptr(),
                            ldc: tb,
                        },
                        false,
                    );
                }
            }
            for (qi, (srow, dprow)) in s.chunks_exact_mut(tb).zip(dp.chunks_exact_mut(tb)).enumerate() {
                let i = i0 + qi;
                // Visible keys of row i in this block: lo.. (its first key), ..hi (itself).
                let lo = if i < t { first[i].saturating_sub(j0).min(tb) } else { 0 };
                let hi = if diag { qi + 1 } else { tb };
                pl.ds_row(srow, dprow, lse[i], delta[i], scale);
                for row in [&mut *srow, &mut *dprow] {
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                }
            }
            for kp in 0..tb / mr {
                // On the diagonal, key panel kp has P = dS = 0 for the queries before it.
                let p0 = if diag { kp * mr } else { 0 };
                for cp in 0..hdn / nr {
                    let b_off = cp * tp * nr + (i0 + p0) * nr;
                    let c_off = kp * mr * hdn + cp * nr;
                    // dV_j, dK_j tiles: A = Pᵀ / dSᵀ read in place (A(r, p) = P[p][kp·MR + r]).
                    pl.tile(
                        tb - p0,
                        Tile {
                            a: s[p0 * tb + kp * mr..].as_ptr(),
                            rsa: 1,
                            csa: tb,
                            b: don[b_off..].as_ptr(),
                            ldb: nr,
                            c: dvj[c_off..].as_mut_ptr(),
                            ldc: hdn,
                        },
                        true,
                    );
                    pl.tile(
                        tb - p0,
                        Tile {
                            a: dp[p0 * tb + kp * mr..].as_ptr(),
                            rsa: 1,
                            csa: tb,
                            b: qn[b_off..].as_ptr(),
                            ldb: nr,
                            c: dkj[c_off..].as_mut_ptr(),
                            ldc: hdn,
                        },
                        true,
                    );
                }
            }
            for qp in 0..tb / mr {
                // On the diagonal, query panel qp has dS = 0 for the keys after it.
                let kc = if diag { (qp + 1) * mr } else { tb };
                for cp in 0..hdn / nr {
                    let b_off = cp * tp * nr + j0 * nr;
                    let c_off = (i0 + qp * mr) * hdn + cp * nr;
                    // dQ_i tile: A = dS rows read in place (A(r, p) = dS[qp·MR + r][p]).
                    pl.tile(
                        kc,
                        Tile {
                            a: dp[qp * mr * tb..].as_ptr(),
                            rsa: tb,
                            csa: 1,
                            b: kn[b_off..].as_ptr(),
                            ldb: nr,
                            c: dqa[c_off..].as_mut_ptr(),
                            ldc: hdn,
                        },
                        true,
                    );
                }
            }
        }
        for jj in 0..tb.min(t - j0) {
            // SAFETY: key row j0+jj of this task's head (or partial buffer), this task only.
            unsafe {
                dk.row(j0 + jj, hd).copy_from_slice(&dkj[jj * hdn..jj * hdn + hd]);
                dv.row(j0 + jj, hd).copy_from_slice(&dvj[jj * hdn..jj * hdn + hd]);
            }
        }
    }
    for i in 0..t {
        // SAFETY: query row i of this task's head, this task only.
        unsafe { dq.row(i, hd).copy_from_slice(&dqa[i * hdn..i * hdn + hd]) };
    }
}
