//! Causal attention backward for one (batch, query head), tiled for the GEMM microkernels
//! (FlashAttention-2 order): for each key block, walk the query tiles at or below the diagonal
//! (and, under a sliding window, no further than the last query that sees the block), recompute P from the saved log-sum-exp, and accumulate dV, dK for the block and dQ for the
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
    unsafe fn row<'a>(&self, i: usize, hd: usize) -> &'a mut [f32] {
        // SAFETY: the caller's contract is the one `OutPtr::slice` asks for.
        unsafe { self.ptr.slice(self.base + i * self.stride, hd) }
    }
}

pub(super) fn head(pl: &Plan, x: &HeadIn, scale: f32, dq: GradOut, dk: GradOut, dv: GradOut) {
    let Plan { tb, tp, hd, hdn, .. } = *pl;
    let (th, ht, bt, bh) = (tp * hd, hdn * tp, tb * tb, tb * hdn);
    // Scratch outside, body compiled for the plan's ISA inside (see forward::head).
    with_bufs([th, th, th, th, ht, ht, ht, tp * hdn, bt, bt, bh, bh, tb, tp, tp], |bufs| {
        for_isa!(
            pl.isa,
            fn run(pl: &Plan, x: &HeadIn, scale: f32, dq: GradOut, dk: GradOut, dv: GradOut, bufs: [&mut [f32]; 15]) {
                body(pl, x, scale, dq, dk, dv, bufs)
            }
        )
    })
}

#[inline(always)]
fn body(pl: &Plan, x: &HeadIn, scale: f32, dq: GradOut, dk: GradOut, dv: GradOut, bufs: [&mut [f32]; 15]) {
    let Plan { mr, nr, tb, t, tp, hd, hdn, window, .. } = *pl;
    let [qa, doa, kb, vb, don, qn, kn, dqa, s, dp, dkj, dvj, shift, lse, delta] = bufs;
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
        // Query j0+tb-1+window-1 is the last to see a key of this block.
        let iend = (j0 + tb - 1).saturating_add(window).min(t);
        for i0 in (j0..iend).step_by(tb) {
            for qp in 0..tb / mr {
                let a_off = (i0 / mr + qp) * hd * mr;
                for kp in 0..tb / nr {
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
                shift.fill(lse[i]);
                cpu::exp_sub(srow, shift);
                if i0 == j0 {
                    srow[qi + 1..].fill(0.0); // keys after query i
                }
                // Keys at or before i − window (outside the window).
                srow[..(i + 1).saturating_sub(window).saturating_sub(j0).min(tb)].fill(0.0);
                let d = delta[i];
                for (g, p) in dprow.iter_mut().zip(srow.iter()) {
                    *g = p * (*g - d) * scale;
                }
            }
            for kp in 0..tb / mr {
                for cp in 0..hdn / nr {
                    let b_off = cp * tp * nr + i0 * nr;
                    let c_off = kp * mr * hdn + cp * nr;
                    // dV_j, dK_j tiles: A = Pᵀ / dSᵀ read in place (A(r, p) = P[p][kp·MR + r]).
                    pl.tile(
                        tb,
                        Tile {
                            a: s[kp * mr..].as_ptr(),
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
                        tb,
                        Tile {
                            a: dp[kp * mr..].as_ptr(),
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
                for cp in 0..hdn / nr {
                    let b_off = cp * tp * nr + j0 * nr;
                    let c_off = (i0 + qp * mr) * hdn + cp * nr;
                    // dQ_i tile: A = dS rows read in place (A(r, p) = dS[qp·MR + r][p]).
                    pl.tile(
                        tb,
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
