//! Rotary position embedding, HF Llama "rotate_half" layout: within each head of size hd, lane i
//! pairs with lane i + hd/2 and both rotate by pos * base^(-2i/hd). Backward rotates by -angle.

use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;

/// cos/sin tables [T, hd/2], computed in f32 like HF's `LlamaRotaryEmbedding`.
fn tables(positions: &[u32], hd: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / hd as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
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
    let mut y = Tensor::zeros(x.shape());
    let xd = x.data();
    let tok = h * hd;
    threads::for_row_chunks(y.data_mut(), tok, threads::rows_per_task(tok), |r0, out| {
        for (j, yt) in out.chunks_mut(tok).enumerate() {
            let r = r0 + j; // token index b*T + t
            let pi = if per_row { r } else { r % t };
            let (c, s) = (&cos[pi * half..(pi + 1) * half], &sin[pi * half..(pi + 1) * half]);
            for hh in 0..h {
                let xr = &xd[r * tok + hh * hd..r * tok + (hh + 1) * hd];
                let yr = &mut yt[hh * hd..(hh + 1) * hd];
                for i in 0..half {
                    let (x1, x2, si) = (xr[i], xr[i + half], sign * s[i]);
                    yr[i] = x1 * c[i] - x2 * si;
                    yr[i + half] = x2 * c[i] + x1 * si;
                }
            }
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
}
