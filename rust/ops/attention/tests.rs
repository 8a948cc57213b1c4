use super::*;
use crate::cpu::Isa;
use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

/// Materialised reference (B·H·T·T).
fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
    let d = dims("attention", q, k, v).unwrap();
    let mut o = vec![0.0f32; q.numel()];
    for b in 0..d.b {
        for h in 0..d.hq {
            let g = h / d.group();
            for i in 0..d.t {
                let qi = &q.data()[d.q_at(b, i, h)..][..d.hd];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k.data()[d.kv_at(b, j, g)..][..d.hd];
                        qi.iter().zip(kj).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let p = (sj - m).exp() / z;
                    let vj = &v.data()[d.kv_at(b, j, g)..][..d.hd];
                    for c in 0..d.hd {
                        o[d.q_at(b, i, h) + c] += (p * vj[c] as f64) as f32;
                    }
                }
            }
        }
    }
    o
}

fn inputs(b: usize, t: usize, hq: usize, hkv: usize, hd: usize) -> (Tensor, Tensor, Tensor) {
    let q = Tensor::from_slice(&[b, t, hq, hd], &rand_vec(b * t * hq * hd, 1)).unwrap();
    let k = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 2)).unwrap();
    let v = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 3)).unwrap();
    (q, k, v)
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    for isa in [Isa::Avx2, Isa::Avx512] {
        if cpu::supports(isa) {
            v.push(isa);
        } else {
            eprintln!("SKIP attention {}: not supported on this host", isa.name());
        }
    }
    v
}

/// Materialised f64 backward: P = softmax(S), dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)).
fn backward_reference(q: &Tensor, k: &Tensor, v: &Tensor, dout: &Tensor, scale: f32) -> [Vec<f32>; 3] {
    let d = dims("ref", q, k, v).unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0.0f64; q.numel()], vec![0.0f64; k.numel()], vec![0.0f64; k.numel()]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
    for b in 0..d.b {
        for h in 0..d.hq {
            let g = h / d.group();
            for i in 0..d.t {
                let qi = &q.data()[d.q_at(b, i, h)..][..d.hd];
                let doi = &dout.data()[d.q_at(b, i, h)..][..d.hd];
                let s: Vec<f64> =
                    (0..=i).map(|j| dot(qi, &k.data()[d.kv_at(b, j, g)..][..d.hd]) * scale as f64).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                let dp: Vec<f64> = (0..=i).map(|j| dot(doi, &v.data()[d.kv_at(b, j, g)..][..d.hd])).collect();
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - delta) * scale as f64;
                    let (ko, qo) = (d.kv_at(b, j, g), d.q_at(b, i, h));
                    for c in 0..d.hd {
                        dq[qo + c] += ds * k.data()[ko + c] as f64;
                        dk[ko + c] += ds * q.data()[qo + c] as f64;
                        dv[ko + c] += p[j] * dout.data()[qo + c] as f64;
                    }
                }
            }
        }
    }
    [dq, dk, dv].map(|x| x.into_iter().map(|v| v as f32).collect())
}

#[test]
fn matches_materialised_reference_mha_and_gqa() {
    // T crosses tile edges (tiles are 48 or 64 keys, NR 8–32 queries); hd below, at and above NR.
    let cases = [
        (2, 1, 2, 2, 8),
        (2, 70, 4, 4, 16),
        (1, 130, 4, 2, 8),
        (1, 33, 6, 1, 12),
        (1, 65, 2, 1, 64),
        (1, 97, 2, 2, 40),
    ];
    for isa in isas() {
        for &(b, t, hq, hkv, hd) in &cases {
            let (q, k, v) = inputs(b, t, hq, hkv, hd);
            let tag = format!("{} b={b} t={t} hq={hq} hkv={hkv} hd={hd}", isa.name());
            let (o, lse) = forward_with(isa, &q, &k, &v, 0.3).unwrap();
            assert_close(o.data(), &attention_reference(&q, &k, &v, 0.3), 1e-4, 1e-5, &format!("attention {tag}"));
            let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 4)).unwrap();
            let (dq, dk, dv) = backward_with(isa, &q, &k, &v, &o, &lse, &dout, 0.3).unwrap();
            let want = backward_reference(&q, &k, &v, &dout, 0.3);
            for (name, got, want) in [("dq", &dq, &want[0]), ("dk", &dk, &want[1]), ("dv", &dv, &want[2])] {
                assert_close(got.data(), want, 1e-3, 1e-4, &format!("{name} {tag}"));
            }
        }
    }
    let (q, _, v) = inputs(1, 4, 3, 2, 8);
    assert!(attention_forward(&q, &q, &v, 1.0).is_err());
}

#[test]
fn one_and_two_threads_same_bits() {
    let (q, k, v) = inputs(2, 100, 4, 2, 16);
    let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 9)).unwrap();
    let outs = run_threads(|| {
        let (o, l) = attention_forward(&q, &k, &v, 0.25).unwrap();
        let (a, b, c) = attention_backward(&q, &k, &v, &o, &l, &dout, 0.25).unwrap();
        [o, l, a, b, c].map(|t| t.data().to_vec())
    });
    for (i, (one, two)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert!(same_bits(one, two), "output {i}");
    }
}
