//! SiLU, GELU (tanh form) and SwiGLU = silu(gate) * up, forward and backward, elementwise in
//! parallel chunks of fixed size.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn unary(x: &Tensor, f: fn(&[f32], &mut [f32])) -> Tensor {
    let mut y = Tensor::zeros(x.shape());
    let xd = x.data();
    y.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| f(&xd[i * CHUNK..i * CHUNK + o.len()], o));
    y
}

fn unary_backward(op: &'static str, x: &Tensor, dy: &Tensor, f: fn(&[f32], &[f32], &mut [f32])) -> Result<Tensor> {
    ensure_shape!(x.shape() == dy.shape(), op, "x {:?} vs dy {:?}", x.shape(), dy.shape());
    let mut dx = Tensor::zeros(x.shape());
    let (xd, dyd) = (x.data(), dy.data());
    dx.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        f(&xd[s..s + o.len()], &dyd[s..s + o.len()], o)
    });
    Ok(dx)
}

pub fn silu_forward(x: &Tensor) -> Tensor {
    unary(x, cpu::silu)
}
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    unary_backward("silu_backward", x, dy, cpu::silu_backward)
}
pub fn gelu_forward(x: &Tensor) -> Tensor {
    unary(x, cpu::gelu)
}
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    unary_backward("gelu_backward", x, dy, cpu::gelu_backward)
}

/// y = silu(gate) * up.  gate, up: same shape.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    ensure_shape!(gate.shape() == up.shape(), "swiglu", "gate {:?} vs up {:?}", gate.shape(), up.shape());
    let mut y = Tensor::zeros(gate.shape());
    let (gd, ud) = (gate.data(), up.data());
    y.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        cpu::silu(&gd[s..s + o.len()], o);
        let tmp = o.to_vec();
        cpu::mul(&tmp, &ud[s..s + o.len()], o);
    });
    Ok(y)
}

/// dgate = dy * up * silu'(gate), dup = dy * silu(gate).
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    ensure_shape!(
        gate.shape() == up.shape() && gate.shape() == dy.shape(),
        "swiglu_backward",
        "gate {:?}, up {:?}, dy {:?}",
        gate.shape(),
        up.shape(),
        dy.shape()
    );
    let mut dg = Tensor::zeros(gate.shape());
    let mut du = Tensor::zeros(gate.shape());
    let (gd, ud, dyd) = (gate.data(), up.data(), dy.data());
    dg.data_mut().par_chunks_mut(CHUNK).zip(du.data_mut().par_chunks_mut(CHUNK)).enumerate().for_each(
        |(i, (dgo, duo))| {
            let s = i * CHUNK;
            let r = s..s + dgo.len();
            cpu::silu(&gd[r.clone()], duo);
            let act = duo.to_vec();
            cpu::mul(&act, &dyd[r.clone()], duo);
            let mut dyu = vec![0.0; dgo.len()];
            cpu::mul(&dyd[r.clone()], &ud[r.clone()], &mut dyu);
            cpu::silu_backward(&gd[r], &dyu, dgo);
        },
    );
    Ok((dg, du))
}

fn packed_rows(op: &'static str, gu: &Tensor) -> Result<(usize, usize)> {
    let two_h = gu.last_dim();
    ensure_shape!(
        gu.ndim() >= 1 && two_h.is_multiple_of(2),
        op,
        "gate|up must be [..., 2·hidden] (gate columns, then up columns), got {:?}",
        gu.shape()
    );
    Ok((gu.numel() / two_h.max(1), two_h / 2))
}

/// y = silu(g) * u where each row of gu [..., 2H] holds g (first H) then u (last H): the output
/// of one GEMM against the gate and up weights stacked, so the MLP's two input projections are
/// one GEMM and the activation reads it in one pass.  -> [..., H]
pub fn swiglu_packed_forward(gu: &Tensor) -> Result<Tensor> {
    let (n, h) = packed_rows("swiglu_packed", gu)?;
    let mut shape = gu.shape().to_vec();
    *shape.last_mut().expect("ndim >= 1") = h;
    let mut y = Tensor::for_overwrite(&shape);
    if n == 0 || h == 0 {
        return Ok(y);
    }
    let gd = gu.data();
    threads::for_row_chunks(y.data_mut(), h, threads::rows_per_task(2 * h), |r0, out| {
        let mut act = vec![0.0f32; h];
        for (j, yr) in out.chunks_mut(h).enumerate() {
            let row = &gd[(r0 + j) * 2 * h..(r0 + j + 1) * 2 * h];
            cpu::silu(&row[..h], &mut act);
            cpu::mul(&act, &row[h..], yr);
        }
    });
    Ok(y)
}

/// The gradient of `swiglu_packed_forward`: dgu [..., 2H] with dg = dy * u * silu'(g) in the
/// first H columns and du = dy * silu(g) in the last H (one buffer, so the stacked GEMM's
/// backward is one GEMM per operand).
pub fn swiglu_packed_backward(gu: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (n, h) = packed_rows("swiglu_packed_backward", gu)?;
    let lead = &gu.shape()[..gu.ndim() - 1];
    ensure_shape!(
        dy.ndim() == gu.ndim() && &dy.shape()[..dy.ndim() - 1] == lead && dy.last_dim() == h,
        "swiglu_packed_backward",
        "dy {:?} must be gate|up {:?} with half the last dimension",
        dy.shape(),
        gu.shape()
    );
    let mut dgu = Tensor::for_overwrite(gu.shape());
    if n == 0 || h == 0 {
        return Ok(dgu);
    }
    let (gd, dyd) = (gu.data(), dy.data());
    threads::for_row_chunks(dgu.data_mut(), 2 * h, threads::rows_per_task(2 * h), |r0, out| {
        for (j, o) in out.chunks_mut(2 * h).enumerate() {
            let r = r0 + j;
            let (row, dyr) = (&gd[r * 2 * h..(r + 1) * 2 * h], &dyd[r * h..(r + 1) * h]);
            let (dg, du) = o.split_at_mut(h);
            // One pass, one sigmoid per element: the bits of silu, mul, mul, silu_backward.
            cpu::fused::swiglu_backward(&row[..h], &row[h..], dyr, dg, du);
        }
    });
    Ok(dgu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        // silu(0) = 0, silu(1) = 1/(1+e^-1) = 0.7310586; gelu(1) = sigmoid(2*0.7978846*1.044715) = 0.8411920
        let x = Tensor::from_slice(&[2], &[0.0, 1.0]).unwrap();
        let s = silu_forward(&x);
        assert!((s.data()[0]).abs() < 1e-7 && (s.data()[1] - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_forward(&x).data()[1] - 0.841_192).abs() < 1e-5);
        let up = Tensor::from_slice(&[2], &[5.0, 2.0]).unwrap();
        assert!((swiglu_forward(&x, &up).unwrap().data()[1] - 1.462_117_2).abs() < 1e-5);
        assert!(swiglu_forward(&x, &Tensor::zeros(&[3])).is_err());
    }

    /// Scalar twin: the packed kernels against silu(g)·u and its derivative computed per element
    /// in f64, and against the unpacked kernels; 1 and 2 threads give the same bits.
    #[test]
    fn packed_swiglu_matches_scalar_twin_and_threads() {
        use crate::ops::testutil::{assert_close, rand_vec, run_threads_split, same_bits};
        for &(n, h) in &[(1usize, 1usize), (3, 5), (37, 17), (300, 96)] {
            let gu =
                Tensor::from_slice(&[n, 2 * h], &rand_vec(n * 2 * h, 7).iter().map(|x| 4.0 * x).collect::<Vec<_>>())
                    .unwrap();
            let dy = Tensor::from_slice(&[n, h], &rand_vec(n * h, 8)).unwrap();
            let (y, dgu) = (swiglu_packed_forward(&gu).unwrap(), swiglu_packed_backward(&gu, &dy).unwrap());
            let (mut wy, mut wd) = (vec![0.0f32; n * h], vec![0.0f32; n * 2 * h]);
            for r in 0..n {
                for i in 0..h {
                    let g = gu.data()[r * 2 * h + i] as f64;
                    let u = gu.data()[r * 2 * h + h + i] as f64;
                    let d = dy.data()[r * h + i] as f64;
                    let sig = 1.0 / (1.0 + (-g).exp());
                    wy[r * h + i] = (g * sig * u) as f32;
                    wd[r * 2 * h + i] = (d * u * sig * (1.0 + g * (1.0 - sig))) as f32;
                    wd[r * 2 * h + h + i] = (d * g * sig) as f32;
                }
            }
            assert_close(y.data(), &wy, 1e-5, 1e-6, "swiglu_packed_forward");
            assert_close(dgu.data(), &wd, 1e-5, 1e-6, "swiglu_packed_backward");
            if n * h >= 1000 {
                let (outs, chunks) = run_threads_split(|| {
                    (swiglu_packed_forward(&gu).unwrap(), swiglu_packed_backward(&gu, &dy).unwrap())
                });
                assert!(chunks >= 2, "the rows split into {chunks} chunks");
                assert!(same_bits(outs[0].0.data(), outs[1].0.data()) && same_bits(outs[0].1.data(), outs[1].1.data()));
            }
        }
        assert!(swiglu_packed_forward(&Tensor::zeros(&[2, 3])).is_err());
        assert!(swiglu_packed_backward(&Tensor::zeros(&[2, 4]), &Tensor::zeros(&[2, 3])).is_err());
    }
}
