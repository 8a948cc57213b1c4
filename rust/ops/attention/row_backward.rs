//! Causal attention backward for one (batch, query head) in the row layout (the companion of
//! `row_forward`): the same FlashAttention-2 order as `backward.rs`, but Q and dO are read in
//! place as the A operand of S and dP, and K and V are packed (transposed) a key block at a
//! time, just before the block's sweep. K, Q, dO as B operands are read in place too, unless
//! their row stride (H·hd) maps a column of them onto too few L1 sets (`tile::set_crowded`,
//! e.g. H·hd = 512); then they are packed as step panels (Q, dO once per head, K per block).
//! ```text
//! Qs, dOs = Q, dO as B panels (per NR columns: tp × NR, rows as steps), or in place
//! for each key block j (TB keys):
//!   Kt_j, Vt_j = its K, V rows as B panels (per NR keys: hd × NR, keys contiguous; zero past T)
//!   Ks_j = its K rows as a B panel (per NR columns: TB × NR, rows as steps), or in place
//!   for each query tile i (TB queries) that sees it:
//!     S  = Q_i · Kt_j     dP = dO_i · Vt_j        rows = queries (A in place), NR keys per call
//!     P  = exp(scale·S − lse)   dS = P∘(dP − δ)·scale   (0 where masked; δ = rowsum(dO∘O))
//!     (with a score bias: S[.., j] += bias[j] first, and dbias_j += Σ_i dS_ij, queries in order)
//!     dV_j += Pᵀ · dO_i   dK_j += dSᵀ · Q_i       A = P/dS read transposed, B = dOs/Qs
//!     dQ_i += dS · K_j                            A = dS rows, B = Ks_j
//! ```
//! The sums run over tiles in a fixed order, so the result does not depend on the threads.

use super::backward::{GradOut, HeadIn};
use super::row_kernels::ds_row;
use super::tile::{
    for_isa, pack_lanes, pack_steps_rows, prefetch_rows, set_crowded, strip, with_bufs, Col, Plan, Rows,
};
use crate::cpu::{self, Tile};

/// With `bias` (a score bias column), `db` takes its gradient (one value per key row).
#[allow(clippy::too_many_arguments)]
pub(super) fn head(
    pl: &Plan,
    x: &HeadIn,
    bias: Option<Col>,
    first: &[usize],
    scale: f32,
    dq: GradOut,
    dk: GradOut,
    dv: GradOut,
    db: Option<GradOut>,
) {
    let Plan { mr, tb, tp, hd, .. } = *pl;
    let (th, bt, bh, mh) = (tp * hd, tb * tb, tb * hd, mr * hd);
    let (bn, dbn) = if bias.is_some() { (tp, tb) } else { (0, 0) };
    with_bufs([bh, bh, bh, th, th, th, bt, bt, bh, bh, tp, tp, mh, mh, bn, dbn], |bufs| {
        for_isa!(
            pl.isa,
            fn run(
                pl: &Plan,
                x: &HeadIn,
                bias: Option<Col>,
                first: &[usize],
                scale: f32,
                dq: GradOut,
                dk: GradOut,
                dv: GradOut,
                db: Option<GradOut>,
                bufs: [&mut [f32]; 16],
            ) {
                body(pl, x, bias, first, scale, dq, dk, dv, db, bufs)
            }
        )
    })
}

/// `first` as in `forward::body`: first[i] is the first key query i sees. A bias is gathered
/// into `bb` (tp keys, zero past T); `dbj` sums its gradient over one key block.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn body(
    pl: &Plan,
    x: &HeadIn,
    bias: Option<Col>,
    first: &[usize],
    scale: f32,
    dq: GradOut,
    dk: GradOut,
    dv: GradOut,
    db: Option<GradOut>,
    bufs: [&mut [f32]; 16],
) {
    let Plan { mr, nr, tb, t, tp, hd, .. } = *pl;
    let [kt, vt, ks, qs, dos, dqa, s, dp, dkj, dvj, lse, delta, qtail, dotail, bb, dbj] = bufs;
    let bias = bias.map(|c| {
        c.gather(t, bb);
        &*bb
    });
    // K (Q and dO) as B operands: from step panels when their rows read in place would
    // crowd their L1 sets (the B operand of one call is up to TB rows of one column chunk).
    let (pk, pq) = (set_crowded(x.k.stride, tb), set_crowded(x.q.stride, tb));
    debug_assert_eq!(x.q.stride, x.dout.stride);
    if pq {
        pack_steps_rows(x.q, tp, nr, qs);
        pack_steps_rows(x.dout, tp, nr, dos);
    }
    let (qs, dos) = (&*qs, &*dos);
    // B = rows i.. (< T) at columns c0.. (c0 a multiple of NR, + NR ≤ hd): (pointer, ldb), from
    // the step panel (rows i < T ≤ tp) or in place.
    let b_at = |packed: bool, p: &[f32], r: &Rows, i: usize, c0: usize| {
        if packed {
            (p[c0 * tp + i * nr..].as_ptr(), nr)
        } else {
            (r.data[r.base + i * r.stride + c0..].as_ptr(), r.stride)
        }
    };
    for i in 0..t {
        if i % 8 == 0 {
            prefetch_rows(x.o, i + 8, 8);
            prefetch_rows(x.dout, i + 8, 8);
        }
        (lse[i], delta[i]) = (x.lse[x.l_base + i * x.l_stride], cpu::dot(x.dout.row(i), x.o.row(i)));
    }
    let dqa = &mut dqa[..t.div_ceil(mr) * mr * hd];
    dqa.fill(0.0);
    for j0 in (0..t).step_by(tb) {
        let kn = tb.min(t - j0);
        // This block's keys packed as B operands (Kt, Vt; Ks when K is set-crowded), just before
        // the sweep that reads them: TB rows each rather than the whole head, so the scratch
        // that streams through L2 per sweep is the query side only.
        pack_lanes(x.k, j0, tb, nr, 1.0, kt);
        pack_lanes(x.v, j0, tb, nr, 1.0, vt);
        let kblock = Rows { base: x.k.base + j0 * x.k.stride, n: kn, ..x.k };
        if pk {
            pack_steps_rows(kblock, tb, nr, ks);
        }
        dkj.fill(0.0);
        dvj.fill(0.0);
        dbj.fill(0.0);
        // The queries that see a key of this block: from its first key to the last query whose
        // first key is inside the block (first is non-decreasing).
        let iend = first[..t].partition_point(|f| *f < j0 + tb);
        for i0 in (j0..iend).step_by(tb) {
            let qn = tb.min(t - i0);
            let strips = qn.div_ceil(mr);
            // On the diagonal tile query i sees keys ≤ i only: S/dP microtiles wholly above it
            // are skipped (the row pass zeroes them), the products start or stop at it.
            let diag = i0 == j0;
            for qp in 0..strips {
                // The next strip's rows of Q and dO (read in place) may not have been touched yet.
                prefetch_rows(x.q, i0 + (qp + 1) * mr, mr);
                prefetch_rows(x.dout, i0 + (qp + 1) * mr, mr);
                let (qa, qs) = strip(x.q, i0 + qp * mr, mr, qtail);
                let (da, ds) = strip(x.dout, i0 + qp * mr, mr, dotail);
                for kp in 0..kn.div_ceil(nr) {
                    if diag && kp * nr > qp * mr + mr - 1 {
                        break;
                    }
                    let (b_off, c_off) = (kp * nr * hd, qp * mr * tb + kp * nr);
                    // S, dP tiles (MR queries × NR keys): A rows in place (or the tail copy),
                    // B = the block's K/V panel of keys j0+kp·NR.., C inside the TB × TB tiles.
                    let (kb, vb) = (kt[b_off..].as_ptr(), vt[b_off..].as_ptr());
                    pl.tile(
                        hd,
                        Tile { a: qa, rsa: qs, csa: 1, b: kb, ldb: nr, c: s[c_off..].as_mut_ptr(), ldc: tb },
                        false,
                    );
                    pl.tile(
                        hd,
                        Tile { a: da, rsa: ds, csa: 1, b: vb, ldb: nr, c: dp[c_off..].as_mut_ptr(), ldc: tb },
                        false,
                    );
                }
            }
            for (r, (srow, dprow)) in s.chunks_exact_mut(tb).zip(dp.chunks_exact_mut(tb)).enumerate().take(strips * mr)
            {
                let i = i0 + r;
                // Visible keys of row i in this block: lo.. (its first key), ..hi (itself).
                let (lo, hi) =
                    if r < qn { (first[i].saturating_sub(j0).min(tb), if diag { r + 1 } else { tb }) } else { (0, 0) };
                let (l, d) = if r < qn { (lse[i], delta[i]) } else { (0.0, 0.0) };
                if let Some(bias) = bias {
                    // As in `row_forward`: keys j0..j0+TB (≤ tp, zero past T).
                    srow.iter_mut().zip(&bias[j0..j0 + tb]).for_each(|(x, b)| *x += b);
                }
                ds_row(pl.isa, srow, dprow, lo, hi, l, d, scale);
                if bias.is_some() && r < qn {
                    // dbias_j = Σ_i dS_ij: this block's keys, query rows in order (dS is 0
                    // outside lo..hi).
                    dbj.iter_mut().zip(&*dprow).for_each(|(a, g)| *a += g);
                }
            }
            let (s, dp) = (&*s, &*dp);
            for kp in 0..kn.div_ceil(mr) {
                // On the diagonal, key strip kp has P = dS = 0 for the queries before it.
                let p0 = if diag { kp * mr } else { 0 };
                if p0 >= qn {
                    break;
                }
                for c0 in (0..hd).step_by(nr) {
                    let c_off = kp * mr * hd + c0;
                    // dV_j, dK_j tiles: A = Pᵀ / dSᵀ read in place (A(r, p) = P[p0+p][kp·MR + r]),
                    // B = dO / Q rows i0+p0.. (< T) at columns c0..c0+NR (≤ hd).
                    let a_off = p0 * tb + kp * mr;
                    let (bdo, bq) = (b_at(pq, dos, &x.dout, i0 + p0, c0), b_at(pq, qs, &x.q, i0 + p0, c0));
                    let tile = |a: &[f32], (b, ldb): (*const f32, usize), c: &mut [f32]| Tile {
                        a: a[a_off..].as_ptr(),
                        rsa: 1,
                        csa: tb,
                        b,
                        ldb,
                        c: c[c_off..].as_mut_ptr(),
                        ldc: hd,
                    };
                    pl.tile(qn - p0, tile(s, bdo, dvj), true);
                    pl.tile(qn - p0, tile(dp, bq, dkj), true);
                }
            }
            for qp in 0..strips {
                // On the diagonal, query strip qp has dS = 0 for the keys after it.
                let kc = if diag { ((qp + 1) * mr).min(kn) } else { kn };
                for c0 in (0..hd).step_by(nr) {
                    // dQ_i tile: A = dS rows (MR × kc), B = K rows j0.. (< T) at columns c0...
                    let (b, ldb) = if pk { (ks[c0 * tb..].as_ptr(), nr) } else { b_at(false, ks, &kblock, 0, c0) };
                    pl.tile(
                        kc,
                        Tile {
                            a: dp[qp * mr * tb..].as_ptr(),
                            rsa: tb,
                            csa: 1,
                            b,
                            ldb,
                            c: dqa[(i0 + qp * mr) * hd + c0..].as_mut_ptr(),
                            ldc: hd,
                        },
                        true,
                    );
                }
            }
        }
        for jj in 0..kn {
            // SAFETY: key row j0+jj of this task's head (or partial buffer), this task only.
            unsafe {
                dk.row(j0 + jj, hd).copy_from_slice(&dkj[jj * hd..(jj + 1) * hd]);
                dv.row(j0 + jj, hd).copy_from_slice(&dvj[jj * hd..(jj + 1) * hd]);
            }
        }
        if let Some(db) = db {
            for (jj, g) in dbj.iter().enumerate().take(kn) {
                // SAFETY: the dbias value of key j0+jj of this task's head, this task only.
                unsafe { db.row(j0 + jj, 1)[0] = *g };
            }
        }
    }
    for i in 0..t {
        // SAFETY: query row i of this task's head, this task only.
        unsafe { dq.row(i, hd).copy_from_slice(&dqa[i * hd..(i + 1) * hd]) };
    }
}
