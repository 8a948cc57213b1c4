//! Causal self-attention, multi-head and grouped-query, memory-efficient and tiled: scores are
//! computed a tile at a time with the GEMM microkernels, so memory is O(T·hd) per head and no
//! B·H·T·T buffer exists. Forward saves the per-row log-sum-exp; backward recomputes the
//! probabilities from it. Two layouts (`row_layout` picks one per call):
//!   - row layout (`row_forward.rs`, `row_backward.rs`, `row_kernels.rs`): queries as
//!     microkernel rows, Q and dO read in place as A operands, K and V packed (transposed);
//!     B operands read by rows (V, K, Q, dO) are packed as step panels only when their row
//!     stride crowds the L1 sets (`tile::set_crowded`); an exact softmax per strip of MR
//!     queries. AVX2 and scalar, hd a multiple of NR (32, 64, 128 on AVX2).
//!   - panel layout (`forward.rs`, `backward.rs`): every operand packed into panels, an online
//!     softmax over key blocks. AVX-512, and any hd.
//!
//! Layouts (no transposes needed around the projections):
//!   q: [B, T, Hq, hd]   k, v: [B, T, Hkv, hd]   o: [B, T, Hq, hd]   lse: [B, T, Hq]
//! Query head h reads key/value head h / (Hq / Hkv).
//!
//! Sliding window: with `window = Some(W)` query i sees keys j with i − W < j ≤ i (the last W
//! keys, itself included); `None` is full causal. Key blocks wholly outside the window are
//! skipped (forward and backward), the partial ones masked.
//!
//! Documents: with segment ids [B, T] (non-decreasing along each row: a row packs whole
//! documents end to end), query i sees only keys of its own segment, causal within it (and
//! within the window). Both masks reduce to one non-decreasing "first visible key" per query,
//! so key blocks wholly before a tile's first key are skipped like the window's: a masked call
//! costs no more than an unmasked one.
//!
//! Score bias (`attention_forward_bias`, row layout only): a per-key, per-query-head bias
//! [B, T, Hq] added to each raw score before the scale, scale·(q·k + bias): the math of a bias
//! lane (q̃ = [q, 1], k̃ = [k, bias]) without widening hd. Backward also returns dbias, each
//! key's sum of dS over its queries in query order (metric attention uses it).
//!
//! One parallel task per (batch, query head), each summing in a fixed order, so results are
//! bit-identical for any thread count. Under GQA, each query head's dK, dV go to its own
//! partial buffer and the group's heads are summed in head order afterwards.

mod backward;
mod forward;
mod row_backward;
mod row_forward;
mod row_kernels;
mod tile;

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;
use tile::{OutPtr, Plan, Rows};

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
}

fn dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    ensure_shape!(
        q.ndim() == 4 && k.ndim() == 4 && v.shape() == k.shape(),
        op,
        "need q [B,T,Hq,hd], k = v [B,T,Hkv,hd]; got q {:?}, k {:?}, v {:?}",
        q.shape(),
        k.shape(),
        v.shape()
    );
    let (s, ks) = (q.shape(), k.shape());
    ensure_shape!(
        s[0] == ks[0] && s[1] == ks[1] && s[3] == ks[3] && ks[2] > 0 && s[2] % ks[2] == 0,
        op,
        "q {:?} and k {:?} must share B, T, hd, and Hq must be a multiple of Hkv",
        s,
        ks
    );
    Ok(Dims { b: s[0], t: s[1], hq: s[2], hkv: ks[2], hd: s[3] })
}

/// The window as a key count (`usize::MAX` for full causal); W = 0 is an error.
pub(crate) fn window_len(op: &'static str, window: Option<usize>) -> Result<usize> {
    match window {
        Some(0) => Err(Error::value(op, "window must be at least 1 (a query always sees itself)")),
        Some(w) => Ok(w),
        None => Ok(usize::MAX),
    }
}

impl Dims {
    #[inline]
    fn q_at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.hq + h) * self.hd
    }
    #[inline]
    fn kv_at(&self, b: usize, t: usize, g: usize) -> usize {
        ((b * self.t + t) * self.hkv + g) * self.hd
    }
    fn group(&self) -> usize {
        self.hq / self.hkv
    }
    /// Rows of query-layout head (b, h) in `data`.
    fn q_rows<'a>(&self, data: &'a [f32], b: usize, h: usize) -> Rows<'a> {
        Rows { data, base: self.q_at(b, 0, h), stride: self.hq * self.hd, n: self.t, hd: self.hd }
    }
    /// Rows of key/value head (b, g) in `data`.
    fn kv_rows<'a>(&self, data: &'a [f32], b: usize, g: usize) -> Rows<'a> {
        Rows { data, base: self.kv_at(b, 0, g), stride: self.hkv * self.hd, n: self.t, hd: self.hd }
    }
}

/// Whether a head runs in the row layout (`row_forward`, `row_backward`: queries as microkernel
/// rows, operands read in place, only K and V transposed) rather than the panel layout
/// (`forward`, `backward`). The row layout reads NR columns of a row at a time, so it needs hd
/// to be a multiple of NR; AVX-512 keeps the panel layout (not measurable on the hosts this was
/// tuned on).
fn row_layout(pl: &Plan) -> bool {
    pl.isa != cpu::Isa::Avx512 && pl.hd.is_multiple_of(pl.nr)
}

/// The first key each query sees, per batch row and padded to `tp` queries (the padding repeats
/// the last query's): max(start of the query's segment, i + 1 − window).
fn first_keys(op: &'static str, d: &Dims, tp: usize, wl: usize, segments: Option<&[i64]>) -> Result<Vec<usize>> {
    if let Some(seg) = segments {
        ensure_shape!(
            seg.len() == d.b * d.t,
            op,
            "segments must be [B, T] = [{}, {}]; got {} ids",
            d.b,
            d.t,
            seg.len()
        );
    }
    if tp == 0 {
        // No queries (T = 0): nothing to attend, and no rows to chunk.
        return Ok(Vec::new());
    }
    let mut first = vec![0usize; d.b * tp];
    for (b, row) in first.chunks_exact_mut(tp).enumerate() {
        let mut start = 0;
        for i in 0..d.t {
            if let Some(seg) = segments {
                let (prev, cur) = (seg[b * d.t + i.saturating_sub(1)], seg[b * d.t + i]);
                if cur < prev {
                    return Err(Error::value(
                        op,
                        format!(
                            "segment ids must not decrease along a row (documents are contiguous): row {b} has \
                             {prev} then {cur} at position {i}"
                        ),
                    ));
                }
                if cur != prev {
                    start = i;
                }
            }
            row[i] = start.max((i + 1).saturating_sub(wl));
        }
        let last = if d.t > 0 { row[d.t - 1] } else { 0 };
        row[d.t..].fill(last);
    }
    Ok(first)
}

/// softmax(q·kᵀ·scale, causal, optionally within a sliding window of `window` keys) · v.
/// Returns (o, lse).
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    forward_with(cpu::isa(), q, k, v, scale, window, None)
}

/// `attention_forward` within documents: `segments` [B, T] (non-decreasing along each row)
/// keeps each query to the keys of its own segment; None is `attention_forward`.
pub fn attention_forward_segments(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
) -> Result<(Tensor, Tensor)> {
    forward_with(cpu::isa(), q, k, v, scale, window, segments)
}

/// `attention_forward` on a given instruction set (which the host must support).
pub fn forward_with(
    isa: cpu::Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
) -> Result<(Tensor, Tensor)> {
    forward_impl(isa, q, k, v, scale, window, segments, None)
}

/// Whether `attention_forward_bias` and `attention_backward_bias` run for head size `hd` on
/// this host: the per-key bias exists in the row layout only (AVX2 and scalar, hd a multiple
/// of NR).
pub fn bias_supported(hd: usize) -> bool {
    row_layout(&Plan::new(cpu::isa(), 0, hd))
}

/// `attention_forward` (full causal) with a per-key score bias: query head h scores key j of
/// batch row b as scale·(q·k_j + bias[b, j, h]); `bias` is [B, T, Hq] (the layout of lse).
/// The math of a bias lane (q̃ = [q, 1], k̃ = [k, bias]) at hd lanes. Needs `bias_supported(hd)`.
pub fn attention_forward_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    forward_impl(cpu::isa(), q, k, v, scale, None, None, Some(bias))
}

/// Checks a bias against the shape of lse and the layout's support for it.
fn check_bias(op: &'static str, pl: &Plan, d: &Dims, bias: Option<&Tensor>) -> Result<()> {
    if let Some(bias) = bias {
        ensure_shape!(bias.shape() == [d.b, d.t, d.hq], op, "bias {:?} must be [B,T,Hq]", bias.shape());
        if !row_layout(pl) {
            return Err(Error::value(
                op,
                format!("a score bias needs the row layout (hd {} on {})", d.hd, pl.isa.name()),
            ));
        }
    }
    Ok(())
}

/// The bias column of head (b, h): key j at base + j·Hq.
fn bias_col<'a>(d: &Dims, bias: Option<&'a Tensor>, b: usize, h: usize) -> Option<tile::Col<'a>> {
    bias.map(|t| tile::Col { data: t.data(), base: b * d.t * d.hq + h, stride: d.hq })
}

#[allow(clippy::too_many_arguments)]
fn forward_impl(
    isa: cpu::Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    assert!(cpu::supports(isa), "attention: {} is not supported by this host", isa.name());
    let d = dims("attention", q, k, v)?;
    let wl = window_len("attention", window)?;
    let pl = Plan::new(isa, d.t, d.hd);
    check_bias("attention", &pl, &d, bias)?;
    let first = first_keys("attention", &d, pl.tp, wl, segments)?;
    if d.hq * d.hd == 0 || d.t == 0 || d.b == 0 {
        return Ok((Tensor::zeros(q.shape()), Tensor::zeros(&[d.b, d.t, d.hq])));
    }
    // Every row of o and every lse value is written below (each task writes all T rows of its
    // head), so neither needs zeroing.
    let mut o = Tensor::for_overwrite(q.shape());
    let mut lse = Tensor::for_overwrite(&[d.b, d.t, d.hq]);
    let (op, lp) = (OutPtr(o.data_mut().as_mut_ptr()), OutPtr(lse.data_mut().as_mut_ptr()));
    (0..d.b * d.hq).into_par_iter().for_each(|task| {
        let (b, h) = (task / d.hq, task % d.hq);
        let g = h / d.group();
        let out = forward::HeadOut {
            o: op,
            o_base: d.q_at(b, 0, h),
            o_stride: d.hq * d.hd,
            lse: lp,
            l_base: b * d.t * d.hq + h,
            l_stride: d.hq,
        };
        let (qr, kr, vr) = (d.q_rows(q.data(), b, h), d.kv_rows(k.data(), b, g), d.kv_rows(v.data(), b, g));
        let first = &first[b * pl.tp..][..pl.tp];
        if row_layout(&pl) {
            row_forward::head(&pl, qr, kr, vr, bias_col(&d, bias, b, h), first, scale, &out);
        } else {
            forward::head(&pl, qr, kr, vr, first, scale, &out);
        }
    });
    Ok((o, lse))
}

/// Gradients of attention_forward (same `window`): (dq, dk, dv).
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    window: Option<usize>,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward_with(cpu::isa(), q, k, v, o, lse, dout, scale, window, None)
}

/// Gradients of attention_forward_segments (same `window` and `segments`): (dq, dk, dv).
pub fn attention_backward_segments(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward_with(cpu::isa(), q, k, v, o, lse, dout, scale, window, segments)
}

/// `attention_backward` on a given instruction set (which the host must support).
pub fn backward_with(
    isa: cpu::Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward_impl(isa, q, k, v, o, lse, dout, scale, window, segments, None).map(|(dq, dk, dv, _)| (dq, dk, dv))
}

/// Gradients of `attention_forward_bias`: (dq, dk, dv, dbias), dbias [B, T, Hq] with
/// dbias[b, j, h] = Σ_i dS_ij (the gradient of the unscaled score q·k_j + bias), summed over
/// the queries in order.
pub fn attention_backward_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    backward_impl(cpu::isa(), q, k, v, o, lse, dout, scale, None, None, Some(bias))
        .map(|(dq, dk, dv, db)| (dq, dk, dv, db.unwrap_or_else(|| Tensor::zeros(bias.shape()))))
}

#[allow(clippy::too_many_arguments)]
fn backward_impl(
    isa: cpu::Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    scale: f32,
    window: Option<usize>,
    segments: Option<&[i64]>,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    assert!(cpu::supports(isa), "attention: {} is not supported by this host", isa.name());
    let d = dims("attention_backward", q, k, v)?;
    let wl = window_len("attention_backward", window)?;
    ensure_shape!(
        o.shape() == q.shape() && dout.shape() == q.shape() && lse.shape() == [d.b, d.t, d.hq],
        "attention_backward",
        "o {:?}, dout {:?} must match q {:?}; lse {:?} must be [B,T,Hq]",
        o.shape(),
        dout.shape(),
        q.shape(),
        lse.shape()
    );
    let pl = Plan::new(isa, d.t, d.hd);
    check_bias("attention_backward", &pl, &d, bias)?;
    let mut dbias = bias.map(|b| Tensor::zeros(b.shape()));
    let first = first_keys("attention_backward", &d, pl.tp, wl, segments)?;
    if d.hq * d.hd == 0 || d.t == 0 || d.b == 0 {
        return Ok((Tensor::zeros(q.shape()), Tensor::zeros(k.shape()), Tensor::zeros(k.shape()), dbias));
    }
    let grouped = d.group() > 1;
    // Each task writes every row of its head's dQ and (without GQA) of its key/value head's
    // dK, dV, so those need no zeroing; under GQA the group's partials are added into dK, dV.
    let mut dq = Tensor::for_overwrite(q.shape());
    let (mut dk, mut dv) = if grouped {
        (Tensor::zeros(k.shape()), Tensor::zeros(k.shape()))
    } else {
        (Tensor::for_overwrite(k.shape()), Tensor::for_overwrite(k.shape()))
    };
    // Under GQA: per-query-head partials [B, Hq, T, hd], summed over each group below.
    let part_len = if grouped { d.b * d.hq * d.t * d.hd } else { 0 };
    let (mut pk, mut pv) = (vec![0.0f32; part_len], vec![0.0f32; part_len]);
    let dqp = OutPtr(dq.data_mut().as_mut_ptr());
    let dbp = dbias.as_mut().map(|t| OutPtr(t.data_mut().as_mut_ptr()));
    let (dkp, dvp) = if grouped {
        (OutPtr(pk.as_mut_ptr()), OutPtr(pv.as_mut_ptr()))
    } else {
        (OutPtr(dk.data_mut().as_mut_ptr()), OutPtr(dv.data_mut().as_mut_ptr()))
    };
    (0..d.b * d.hq).into_par_iter().for_each(|task| {
        let (b, h) = (task / d.hq, task % d.hq);
        let g = h / d.group();
        let x = backward::HeadIn {
            q: d.q_rows(q.data(), b, h),
            k: d.kv_rows(k.data(), b, g),
            v: d.kv_rows(v.data(), b, g),
            o: d.q_rows(o.data(), b, h),
            dout: d.q_rows(dout.data(), b, h),
            lse: lse.data(),
            l_base: b * d.t * d.hq + h,
            l_stride: d.hq,
        };
        let dqo = backward::GradOut { ptr: dqp, base: d.q_at(b, 0, h), stride: d.hq * d.hd };
        let (kbase, kstride) = if grouped { (task * d.t * d.hd, d.hd) } else { (d.kv_at(b, 0, g), d.hkv * d.hd) };
        let dko = backward::GradOut { ptr: dkp, base: kbase, stride: kstride };
        let dvo = backward::GradOut { ptr: dvp, base: kbase, stride: kstride };
        let first = &first[b * pl.tp..][..pl.tp];
        if row_layout(&pl) {
            // dbias of head (b, h): key j at b·T·Hq + h + j·Hq, this task's alone.
            let dbo = dbp.map(|ptr| backward::GradOut { ptr, base: b * d.t * d.hq + h, stride: d.hq });
            row_backward::head(&pl, &x, bias_col(&d, bias, b, h), first, scale, dqo, dko, dvo, dbo);
        } else {
            backward::head(&pl, &x, first, scale, dqo, dko, dvo);
        }
    });
    if grouped {
        let kvrow = d.hkv * d.hd;
        for (out, part) in [(&mut dk, &pk), (&mut dv, &pv)] {
            out.data_mut().par_chunks_mut(kvrow).enumerate().for_each(|(r, row)| {
                let (b, t) = (r / d.t, r % d.t);
                for (g, dst) in row.chunks_mut(d.hd).enumerate() {
                    for h in g * d.group()..(g + 1) * d.group() {
                        let src = &part[((b * d.hq + h) * d.t + t) * d.hd..][..d.hd];
                        dst.iter_mut().zip(src).for_each(|(a, s)| *a += s);
                    }
                }
            });
        }
    }
    Ok((dq, dk, dv, dbias))
}

#[cfg(test)]
mod bias_tests;
#[cfg(test)]
mod tests;
