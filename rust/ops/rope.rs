//! Rotary position embedding, HF Llama "rotate_half" layout: within each head of size hd, lane i
//! pairs with lane i + hd/2 and both rotate by pos * base^(-2i/hd). Backward rotates by -angle.

use crate::cpu::fused::rope_heads;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;

/// cos/sin tables [positions, hd/2], computed in f32 like HF's `LlamaRotaryEmbedding`. Per-token
/// positions ([B·T], documents restarting at 0) repeat few values: when they all lie below their
/// count, each value's row is computed once and copied (the same bits, a fraction of the libm
/// calls, which ran serially before every rotation).
fn tables(positions: &[u32], hd: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / hd as f32)).collect();
    let rows = |ps: &[u32]| -> (Vec<f32>, Vec<f32>) {
        let angles = || ps.iter().flat_map(|&p| inv.iter().map(move |&f| p as f32 * f));
        (angles().map(f32::cos).collect(), angles().map(f32::sin).collect())
    };
    let distinct = positions.iter().max().map_or(0, |&m| m as usize + 1);
    if distinct >= positions.len() || half == 0 {
        return rows(positions);
    }
    let (vc, vs) = rows(&(0..distinct as u32).collect::<Vec<_>>());
    let gather =
        |v: &[f32]| positions.iter().flat_map(|&p| &v[p as usize * half..(p as usize + 1) * half]).copied().collect();
    (gather(&vc), gather(&vs))
}

/// x: [B, T, H, hd]; positions: [T] (shared by the batch) or [B*T]. `sign` = 1 forward, -1 backward.
fn rotate(op: &'static str, x: &Tensor, positions: Option<&[u32]>, base: f32, sign: f32) -> Result<Tensor> {
    ensure_shape!(
        x.ndim() == 4 && x.shape()[3].is_multiple_of(2),
        op,
        "x must be [B, T, H, hd] with even hd, got {:?}",
        x.shape()
    );
    let (b, t, h, hd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let default: Vec<u32>;
    let pos = match positions {
        Some(p) => {
            ensure_shape!(
                p.len() == t || p.len() == b * t,
                op,
                "positions has {} entries; need T={} or B*T={}",
                p.len(),
                t,
                b * t
            );
            p
        }
        None => {
            default = (0..t as u32).collect();
            &default
        }
    };
    let per_row = pos.len() == b * t;
    let (cos, sin) = tables(pos, hd, base);
    let half = hd / 2;
    // Every element is written below.
    let mut y = Tensor::for_overwrite(x.shape());
    let xd = x.data();
    let tok = h * hd;
    threads::for_row_chunks(y.data_mut(), tok, threads::rows_per_task(tok), |r0, out| {
        for (j, yt) in out.chunks_mut(tok).enumerate() {
            let r = r0 + j; // token index b*T + t
            let pi = if per_row { r } else { r % t };
            let (c, s) = (&cos[pi * half..(pi + 1) * half], &sin[pi * half..(pi + 1) * half]);
            rope_heads(&xd[r * tok..(r + 1) * tok], yt, c, s, sign);
        }
    });
    Ok(y)
}

pub fn rope_forward(x: &Tensor, positions: Option<&[u32]>, base: f32) -> Result<Tensor> {
    rotate("rope", x, positions, base, 1.0)
}

/// The rotation is orthogonal, so the gradient is dy rotated back.
pub fn rope_backward(dy: &Tensor, positions: Option<&[u32]>, base: f32) -> Result<Tensor> {
    rotate("rope_backward", dy, positions, base, -1.0)
}

/// Checks qkv [B, T, (H + 2·Hkv)·hd] and returns (B, T, hd) and the positions (default 0..T-1).
fn qkv_dims(
    op: &'static str,
    shape: &[usize],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(usize, usize, usize)> {
    let width = (heads + 2 * kv_heads) * head_dim;
    ensure_shape!(
        shape.len() == 3
            && heads > 0
            && kv_heads > 0
            && head_dim.is_multiple_of(2)
            && head_dim > 0
            && shape[2] == width,
        op,
        "qkv must be [B, T, (heads + 2·kv_heads)·head_dim] = [B, T, {}] with an even head_dim, got {:?} \
         (heads {}, kv_heads {}, head_dim {})",
        width,
        shape,
        heads,
        kv_heads,
        head_dim
    );
    Ok((shape[0], shape[1], head_dim))
}

fn positions_or_default<'a>(
    op: &'static str,
    positions: Option<&'a [u32]>,
    b: usize,
    t: usize,
    default: &'a mut Vec<u32>,
) -> Result<&'a [u32]> {
    match positions {
        Some(p) => {
            ensure_shape!(
                p.len() == t || p.len() == b * t,
                op,
                "positions has {} entries; need T={} or B*T={}",
                p.len(),
                t,
                b * t
            );
            Ok(p)
        }
        None => {
            *default = (0..t as u32).collect();
            Ok(default)
        }
    }
}

/// The fused QKV split: qkv [B, T, (H + 2·Hkv)·hd], the output of one GEMM against the stacked
/// q, k and v projections (per token: H query heads, Hkv key heads, Hkv value heads), becomes
/// q [B, T, H, hd] and k [B, T, Hkv, hd] with RoPE applied and v [B, T, Hkv, hd], in one pass.
/// Not bound to Python (the model runs three narrow GEMMs, measured faster than one wide one); it
/// is the forward whose adjoint `qkv_rope_merge` is, and the tests check the pair against `rope_*`.
pub fn qkv_rope_split(
    qkv: &Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    positions: Option<&[u32]>,
    base: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    use rayon::prelude::*;
    let op = "qkv_rope_split";
    let (b, t, hd) = qkv_dims(op, qkv.shape(), heads, kv_heads, head_dim)?;
    let mut default = Vec::new();
    let pos = positions_or_default(op, positions, b, t, &mut default)?;
    let per_row = pos.len() == b * t;
    let (cos, sin) = tables(pos, hd, base);
    let half = hd / 2;
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let width = qw + 2 * kw;
    let mut q = Tensor::for_overwrite(&[b, t, heads, hd]);
    let mut k = Tensor::for_overwrite(&[b, t, kv_heads, hd]);
    let mut v = Tensor::for_overwrite(&[b, t, kv_heads, hd]);
    if b * t == 0 {
        return Ok((q, k, v));
    }
    let rows = threads::rows_per_task(width);
    let xd = qkv.data();
    q.data_mut()
        .par_chunks_mut(rows * qw)
        .zip(k.data_mut().par_chunks_mut(rows * kw))
        .zip(v.data_mut().par_chunks_mut(rows * kw))
        .enumerate()
        .for_each(|(ci, ((qc, kc), vc))| {
            for (j, ((qr, kr), vr)) in qc.chunks_mut(qw).zip(kc.chunks_mut(kw)).zip(vc.chunks_mut(kw)).enumerate() {
                let r = ci * rows + j;
                let pi = if per_row { r } else { r % t };
                let (c, s) = (&cos[pi * half..(pi + 1) * half], &sin[pi * half..(pi + 1) * half]);
                let x = &xd[r * width..(r + 1) * width];
                rope_heads(&x[..qw], qr, c, s, 1.0);
                rope_heads(&x[qw..qw + kw], kr, c, s, 1.0);
                vr.copy_from_slice(&x[qw + kw..]);
            }
        });
    Ok((q, k, v))
}

/// The gradient of `qkv_rope_split`: dq, dk rotated back and dv, side by side per token in one
/// dqkv [B, T, (H + 2·Hkv)·hd] (so the stacked projection's backward is one GEMM per operand).
pub fn qkv_rope_merge(dq: &Tensor, dk: &Tensor, dv: &Tensor, positions: Option<&[u32]>, base: f32) -> Result<Tensor> {
    let op = "qkv_rope_merge";
    ensure_shape!(
        dq.ndim() == 4
            && dk.ndim() == 4
            && dk.shape() == dv.shape()
            && dq.shape()[..2] == dk.shape()[..2]
            && dq.shape()[3] == dk.shape()[3],
        op,
        "dq [B, T, H, hd], dk and dv [B, T, Hkv, hd] expected, got {:?}, {:?}, {:?}",
        dq.shape(),
        dk.shape(),
        dv.shape()
    );
    let (b, t, heads, hd) = (dq.shape()[0], dq.shape()[1], dq.shape()[2], dq.shape()[3]);
    let kv_heads = dk.shape()[2];
    qkv_dims(op, &[b, t, (heads + 2 * kv_heads) * hd], heads, kv_heads, hd)?;
    let mut default = Vec::new();
    let pos = positions_or_default(op, positions, b, t, &mut default)?;
    let per_row = pos.len() == b * t;
    let (cos, sin) = tables(pos, hd, base);
    let half = hd / 2;
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let width = qw + 2 * kw;
    let mut out = Tensor::for_overwrite(&[b, t, width]);
    let (dqd, dkd, dvd) = (dq.data(), dk.data(), dv.data());
    threads::for_row_chunks(out.data_mut(), width, threads::rows_per_task(width), |r0, chunk| {
        for (j, o) in chunk.chunks_mut(width).enumerate() {
            let r = r0 + j;
            let pi = if per_row { r } else { r % t };
            let (c, s) = (&cos[pi * half..(pi + 1) * half], &sin[pi * half..(pi + 1) * half]);
            let (oq, rest) = o.split_at_mut(qw);
            let (ok, ov) = rest.split_at_mut(kw);
            rope_heads(&dqd[r * qw..(r + 1) * qw], oq, c, s, -1.0);
            rope_heads(&dkd[r * kw..(r + 1) * kw], ok, c, s, -1.0);
            ov.copy_from_slice(&dvd[r * kw..(r + 1) * kw]);
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_backward_inverts() {
        let x = Tensor::from_slice(&[1, 2, 1, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap();
        let y = rope_forward(&x, None, 10000.0).unwrap();
        assert_eq!(&y.data()[..4], &x.data()[..4]);
        // t=1, i=0: angle 1 rad: y0 = 5cos1 - 7sin1
        assert!((y.data()[4] - (5.0 * 1f32.cos() - 7.0 * 1f32.sin())).abs() < 1e-6);
        let back = rope_backward(&y, None, 10000.0).unwrap();
        for (a, b) in back.data().iter().zip(x.data()) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(rope_forward(&Tensor::zeros(&[1, 2, 3]), None, 1e4).is_err());
    }

    /// The fused split equals slicing qkv and calling `rope_forward` per part (the scalar twin),
    /// bit for bit; merge equals `rope_backward` per part; 1 and 2 threads agree.
    #[test]
    fn qkv_split_and_merge_match_rope_per_part() {
        use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};
        for &(b, t, h, hkv, hd, per_row) in
            &[(1usize, 1usize, 1usize, 1usize, 2usize, false), (2, 5, 4, 2, 8, true), (3, 64, 4, 4, 32, false)]
        {
            let width = (h + 2 * hkv) * hd;
            let qkv = Tensor::from_slice(&[b, t, width], &rand_vec(b * t * width, 3)).unwrap();
            let pos: Vec<u32> = (0..(if per_row { b * t } else { t }) as u32).map(|p| (p * 7) % 11).collect();
            let pos = per_row.then_some(pos.as_slice());
            let part = |lo: usize, heads: usize| {
                let mut d = Vec::new();
                for r in 0..b * t {
                    d.extend_from_slice(&qkv.data()[r * width + lo..r * width + lo + heads * hd]);
                }
                Tensor::from_slice(&[b, t, heads, hd], &d).unwrap()
            };
            let (q0, k0, v0) = (part(0, h), part(h * hd, hkv), part((h + hkv) * hd, hkv));
            let (q, k, v) = qkv_rope_split(&qkv, h, hkv, hd, pos, 500.0).unwrap();
            assert!(same_bits(q.data(), rope_forward(&q0, pos, 500.0).unwrap().data()));
            assert!(same_bits(k.data(), rope_forward(&k0, pos, 500.0).unwrap().data()));
            assert!(same_bits(v.data(), v0.data()));
            let merged = qkv_rope_merge(&q, &k, &v, pos, 500.0).unwrap();
            let (bq, bk) = (rope_backward(&q, pos, 500.0).unwrap(), rope_backward(&k, pos, 500.0).unwrap());
            for r in 0..b * t {
                let m = &merged.data()[r * width..(r + 1) * width];
                assert!(same_bits(&m[..h * hd], &bq.data()[r * h * hd..(r + 1) * h * hd]));
                assert!(same_bits(&m[h * hd..(h + hkv) * hd], &bk.data()[r * hkv * hd..(r + 1) * hkv * hd]));
                assert!(same_bits(&m[(h + hkv) * hd..], &v.data()[r * hkv * hd..(r + 1) * hkv * hd]));
            }
            if b * t * width >= 10_000 {
                let (outs, chunks) = run_threads_split(|| {
                    let (q, k, v) = qkv_rope_split(&qkv, h, hkv, hd, pos, 500.0).unwrap();
                    let m = qkv_rope_merge(&q, &k, &v, pos, 500.0).unwrap();
                    (q, k, m)
                });
                assert!(chunks >= 2, "{chunks} chunks");
                assert!(same_bits(outs[0].0.data(), outs[1].0.data()) && same_bits(outs[0].2.data(), outs[1].2.data()));
            }
        }
        assert!(qkv_rope_split(&Tensor::zeros(&[1, 2, 10]), 1, 1, 4, None, 1e4).is_err());
        assert!(qkv_rope_merge(
            &Tensor::zeros(&[1, 2, 1, 4]),
            &Tensor::zeros(&[1, 2, 1, 4]),
            &Tensor::zeros(&[1, 2, 2, 4]),
            None,
            1e4
        )
        .is_err());
    }
}
