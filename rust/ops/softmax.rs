//! Softmax over the last dimension, forward and backward (row-parallel).

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;

/// y = exp(x - max) / sum.  x: [..., D]
pub fn softmax_forward(x: &Tensor) -> Tensor {
    let d = x.last_dim();
    let mut y = Tensor::zeros(x.shape());
    let xd = x.data();
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, yr) in out.chunks_mut(d).enumerate() {
            let xr = &xd[(r0 + j) * d..(r0 + j + 1) * d];
            let s = cpu::exp_shift_sum(xr, cpu::max(xr), yr);
            let inv = 1.0 / s;
            for v in yr.iter_mut() {
                *v *= inv;
            }
        }
    });
    y
}

/// dx = y * (dy - sum(dy * y)).
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    ensure_shape!(y.shape() == dy.shape(), "softmax_backward", "y {:?} vs dy {:?}", y.shape(), dy.shape());
    let d = y.last_dim();
    let mut dx = Tensor::zeros(y.shape());
    let (yd, dyd) = (y.data(), dy.data());
    threads::for_row_chunks(dx.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, dxr) in out.chunks_mut(d).enumerate() {
            let rg = (r0 + j) * d..(r0 + j + 1) * d;
            let (yr, dyr) = (&yd[rg.clone()], &dyd[rg]);
            let c = cpu::dot(yr, dyr);
            for i in 0..d {
                dxr[i] = yr[i] * (dyr[i] - c);
            }
        }
    });
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_case() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let x = Tensor::from_slice(&[1, 2], &[0.0, 3.0f32.ln()]).unwrap();
        let y = softmax_forward(&x);
        assert!((y.data()[0] - 0.25).abs() < 1e-6 && (y.data()[1] - 0.75).abs() < 1e-6);
    }
}
