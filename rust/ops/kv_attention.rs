//! Attention of new queries against a key/value cache, for sampling: query i (absolute position
//! offset + i) sees keys 0..=offset+i, or with a sliding window W only the last W of them
//! (offset+i+1−W..=offset+i, the rule of `attention_forward`). Forward only; each new token
//! costs O(visible keys).
//!
//! Layouts: q [B, Tq, Hq, hd], k/v [B, Tk, Hkv, hd] with Tk = offset + Tq -> o [B, Tq, Hq, hd].

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::attention::window_len;
use crate::tensor::Tensor;
use crate::threads;

pub fn attention_with_cache(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, window: Option<usize>) -> Result<Tensor> {
    let wl = window_len("attention_with_cache", window)?;
    ensure_shape!(
        q.ndim() == 4 && k.ndim() == 4 && v.shape() == k.shape(),
        "attention_with_cache",
        "need q [B,Tq,Hq,hd], k = v [B,Tk,Hkv,hd]; got q {:?}, k {:?}, v {:?}",
        q.shape(),
        k.shape(),
        v.shape()
    );
    let (qs, ks) = (q.shape(), k.shape());
    let (b, tq, hq, hd) = (qs[0], qs[1], qs[2], qs[3]);
    let (tk, hkv) = (ks[1], ks[2]);
    ensure_shape!(
        ks[0] == b && ks[3] == hd && hkv > 0 && hq % hkv == 0 && tk >= tq,
        "attention_with_cache",
        "q {:?} and cache {:?} must share B and hd, Hq must be a multiple of Hkv, and the cache must hold the queries",
        qs,
        ks
    );
    let offset = tk - tq;
    let group = hq / hkv;
    let mut o = Tensor::zeros(qs);
    let (qd, kd, vd) = (q.data(), k.data(), v.data());
    let row = hq * hd;
    if row == 0 {
        return Ok(o);
    }
    threads::for_row_chunks(o.data_mut(), row, 1, |r, orow| {
        let (bi, i) = (r / tq, r % tq);
        let end = offset + i + 1;
        let first = end.saturating_sub(wl);
        let visible = end - first;
        let mut s = vec![0.0f32; visible];
        for h in 0..hq {
            let g = h / group;
            let qi = &qd[(r * hq + h) * hd..(r * hq + h + 1) * hd];
            for (j, sj) in (first..end).zip(s.iter_mut()) {
                let kj = ((bi * tk + j) * hkv + g) * hd;
                *sj = cpu::dot(qi, &kd[kj..kj + hd]) * scale;
            }
            let m = cpu::max(&s);
            let mut p = vec![0.0f32; visible];
            let inv = 1.0 / cpu::exp_shift_sum(&s, m, &mut p);
            let acc = &mut orow[h * hd..(h + 1) * hd];
            for (j, pj) in (first..end).zip(p.iter()) {
                let vj = ((bi * tk + j) * hkv + g) * hd;
                cpu::axpy(pj * inv, &vd[vj..vj + hd], acc);
            }
        }
    });
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::attention_forward;
    use crate::ops::testutil::{assert_close, rand_vec};

    #[test]
    fn last_rows_match_full_causal_attention() {
        // The last Tq rows of full causal attention equal cached attention of those queries.
        let (b, t, hq, hkv, hd, tq) = (2, 37, 4, 2, 8, 3);
        let q = Tensor::from_slice(&[b, t, hq, hd], &rand_vec(b * t * hq * hd, 1)).unwrap();
        let k = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 2)).unwrap();
        let v = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 3)).unwrap();
        // Windows: none, 1, not a multiple of anything, wider than the cache.
        for window in [None, Some(1), Some(5), Some(13), Some(64)] {
            let (full, _) = attention_forward(&q, &k, &v, 0.3, window).unwrap();
            let mut qt = Vec::new();
            let mut want = Vec::new();
            for bi in 0..b {
                let s = (bi * t + t - tq) * hq * hd;
                qt.extend_from_slice(&q.data()[s..s + tq * hq * hd]);
                want.extend_from_slice(&full.data()[s..s + tq * hq * hd]);
            }
            let qt = Tensor::from_slice(&[b, tq, hq, hd], &qt).unwrap();
            let got = attention_with_cache(&qt, &k, &v, 0.3, window).unwrap();
            assert_close(got.data(), &want, 1e-5, 1e-6, &format!("cached attention, window {window:?}"));
            assert!(attention_with_cache(&k, &qt, &qt, 1.0, window).is_err());
            assert!(attention_with_cache(&qt, &k, &v, 1.0, Some(0)).is_err());
        }
    }
}
