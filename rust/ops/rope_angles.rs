//! Rotary embedding with given angles, forward and backward to both the input and the angles, so
//! angles can be learned (BlackHoleRoPE adds a learned Fourier perturbation to RoPE's phases).
//! Rotate-half layout as HF Llama: channel f pairs with f + hd/2,
//!   y1 = x1 cos a - x2 sin a,   y2 = x2 cos a + x1 sin a,   a = ang[pos[n], f].
//! Layouts: x [..., H, hd] seen as N rows of H·hd; ang [P, hd/2]; pos [N] with entries < P.

use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

fn dims(op: &'static str, x: &Tensor, ang: &Tensor, pos: &[u32]) -> Result<(usize, usize, usize)> {
    ensure_shape!(
        x.ndim() >= 2 && ang.ndim() == 2,
        op,
        "need x [..., H, hd] and ang [P, hd/2], got {:?}, {:?}",
        x.shape(),
        ang.shape()
    );
    let (h, hd) = (x.shape()[x.ndim() - 2], x.last_dim());
    ensure_shape!(
        hd % 2 == 0 && ang.shape()[1] == hd / 2,
        op,
        "head size {} must be even and match ang {:?}",
        hd,
        ang.shape()
    );
    let n = x.numel() / (h * hd).max(1);
    ensure_shape!(pos.len() == n, op, "{} positions for {} rows of x {:?}", pos.len(), n, x.shape());
    if let Some(&p) = pos.iter().find(|&&p| p as usize >= ang.shape()[0]) {
        return Err(Error::value(op, format!("position {p} is out of range for {} angle rows", ang.shape()[0])));
    }
    Ok((n, h, hd))
}

/// (sin, cos) of sign · ang for every angle row a position uses, [P, hd/2] pairs (rows no
/// position uses stay zero): computed once per call, not once per row and head.
fn sin_cos_table(ang: &Tensor, pos: &[u32], sign: f32) -> Vec<(f32, f32)> {
    let (p, half) = (ang.shape()[0], ang.shape()[1]);
    let mut used = vec![false; p];
    pos.iter().for_each(|&q| used[q as usize] = true);
    let ad = ang.data();
    let mut t = vec![(0.0f32, 0.0f32); p * half];
    t.par_chunks_mut(half.max(1)).enumerate().filter(|(r, _)| used[*r]).for_each(|(r, row)| {
        for (f, sc) in row.iter_mut().enumerate() {
            *sc = (sign * ad[r * half + f]).sin_cos();
        }
    });
    t
}

/// Rotates each (x1, x2) pair of one row by the angles whose (sin, cos) are `sc` (len hd/2).
fn rotate(src: &[f32], sc: &[(f32, f32)], dst: &mut [f32]) {
    let half = sc.len();
    for (f, &(s, c)) in sc.iter().enumerate() {
        let (x1, x2) = (src[f], src[f + half]);
        dst[f] = x1 * c - x2 * s;
        dst[f + half] = x2 * c + x1 * s;
    }
}

pub fn rope_angles_forward(x: &Tensor, ang: &Tensor, pos: &[u32]) -> Result<Tensor> {
    let (_, h, hd) = dims("rope_angles", x, ang, pos)?;
    let mut y = Tensor::for_overwrite(x.shape());
    let (xd, half) = (x.data(), hd / 2);
    let sc = sin_cos_table(ang, pos, 1.0);
    threads::for_row_chunks(y.data_mut(), h * hd, threads::rows_per_task(h * hd), |r0, out| {
        for (j, row) in out.chunks_mut(h * hd).enumerate() {
            let n = r0 + j;
            let a = &sc[pos[n] as usize * half..][..half];
            for hh in 0..h {
                let at = n * h * hd + hh * hd;
                rotate(&xd[at..at + hd], a, &mut row[hh * hd..(hh + 1) * hd]);
            }
        }
    });
    Ok(y)
}

/// dx = rotation of dy by -a;  dang[pos[n], f] += Σ_h (dy2 · y1 - dy1 · y2), reduced over fixed
/// row blocks in block order.
pub fn rope_angles_backward(x: &Tensor, ang: &Tensor, pos: &[u32], dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, h, hd) = dims("rope_angles_backward", x, ang, pos)?;
    ensure_shape!(dy.shape() == x.shape(), "rope_angles_backward", "dy {:?} vs x {:?}", dy.shape(), x.shape());
    let (xd, dyd, half) = (x.data(), dy.data(), hd / 2);
    let (fwd, inv) = (sin_cos_table(ang, pos, 1.0), sin_cos_table(ang, pos, -1.0));
    let mut dx = Tensor::for_overwrite(x.shape());
    threads::for_row_chunks(dx.data_mut(), h * hd, threads::rows_per_task(h * hd), |r0, out| {
        for (j, row) in out.chunks_mut(h * hd).enumerate() {
            let r = r0 + j;
            let a = &inv[pos[r] as usize * half..][..half];
            for hh in 0..h {
                let at = r * h * hd + hh * hd;
                rotate(&dyd[at..at + hd], a, &mut row[hh * hd..(hh + 1) * hd]);
            }
        }
    });
    let block = 256usize;
    let dang = threads::ordered_sum(n.div_ceil(block), ang.numel(), |bi| {
        let mut part = vec![0.0f32; ang.numel()];
        let mut y = vec![0.0f32; hd];
        for (r, &p) in pos.iter().enumerate().take(((bi + 1) * block).min(n)).skip(bi * block) {
            let p = p as usize;
            for hh in 0..h {
                let at = r * h * hd + hh * hd;
                rotate(&xd[at..at + hd], &fwd[p * half..(p + 1) * half], &mut y);
                let g = &dyd[at..at + hd];
                for f in 0..half {
                    part[p * half + f] += g[f + half] * y[f] - g[f] * y[f + half];
                }
            }
        }
        part
    });
    Ok((dx, Tensor::from_slice(ang.shape(), &dang)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rope::rope_forward;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads_split, same_bits};

    #[test]
    fn standard_angles_match_rope() {
        // ang[t, f] = t · base^(-2f/hd) reproduces the RoPE op.
        let (b, t, h, hd) = (2, 9, 3, 8);
        let x = Tensor::from_slice(&[b, t, h, hd], &rand_vec(b * t * h * hd, 1)).unwrap();
        let ang: Vec<f32> = (0..t)
            .flat_map(|p| (0..hd / 2).map(move |f| p as f32 * 100f32.powf(-2.0 * f as f32 / hd as f32)))
            .collect();
        let ang = Tensor::from_slice(&[t, hd / 2], &ang).unwrap();
        let pos: Vec<u32> = (0..b * t).map(|r| (r % t) as u32).collect();
        let y = rope_angles_forward(&x, &ang, &pos).unwrap();
        assert_close(y.data(), rope_forward(&x, None, 100.0).unwrap().data(), 1e-5, 1e-5, "rope");
        assert!(rope_angles_forward(&x, &ang, &pos[1..]).is_err());
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        // 2048 rows of 4 × 16: rows_per_task(64) = 512, so both halves split into 4 chunks.
        let (b, t, h, hd) = (4, 512, 4, 16);
        let x = Tensor::from_slice(&[b, t, h, hd], &rand_vec(b * t * h * hd, 3)).unwrap();
        let ang = Tensor::from_slice(&[t, hd / 2], &rand_vec(t * hd / 2, 4)).unwrap();
        let pos: Vec<u32> = (0..b * t).map(|r| (r % t) as u32).collect();
        let y = rope_angles_forward(&x, &ang, &pos).unwrap();
        let (outs, chunks) = run_threads_split(|| {
            let (dx, dang) = rope_angles_backward(&x, &ang, &pos, &y).unwrap();
            [dx, dang].map(|z| z.data().to_vec())
        });
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        assert!(same_bits(&outs[0][0], &outs[1][0]) && same_bits(&outs[0][1], &outs[1][1]));
    }
}
