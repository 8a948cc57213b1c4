//! Tests of the per-key score bias (row layout): against the same math as a bias lane
//! (q̃ = [q, 1, 0…], k̃ = [k, bias, 0…] through the unbiased kernels), AVX2 against its scalar
//! twin, a zero bias against no bias bit for bit, thread-count determinism, and bad calls.

use super::*;
use crate::cpu::Isa;
use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

fn inputs(b: usize, t: usize, hq: usize, hkv: usize, hd: usize) -> [Tensor; 5] {
    let n = |s: &[usize], seed| Tensor::from_slice(s, &rand_vec(s.iter().product(), seed)).unwrap();
    [
        n(&[b, t, hq, hd], 11),
        n(&[b, t, hkv, hd], 12),
        n(&[b, t, hkv, hd], 13),
        // A bias of a few units, as metric attention's −α‖k‖² + kb.
        Tensor::from_slice(&[b, t, hq], &rand_vec(b * t * hq, 14).iter().map(|x| 3.0 * x).collect::<Vec<_>>()).unwrap(),
        n(&[b, t, hq, hd], 15),
    ]
}

/// Row-layout isas of this host for head size hd.
fn row_isas(hd: usize) -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2]
        .into_iter()
        .filter(|&isa| cpu::supports(isa) && row_layout(&Plan::new(isa, 0, hd)))
        .collect()
}

type Out = (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor);

/// (o, lse, dq, dk, dv, dbias) through the bias.
fn biased(isa: Isa, [q, k, v, bias, dout]: &[Tensor; 5], scale: f32) -> Out {
    let (o, l) = forward_impl(isa, q, k, v, scale, None, None, Some(bias)).unwrap();
    let (dq, dk, dv, db) = backward_impl(isa, q, k, v, &o, &l, dout, scale, None, None, Some(bias)).unwrap();
    (o, l, dq, dk, dv, db.unwrap())
}

/// The same through a bias lane: one key head per query head (the bias depends on it), hd + 1
/// lanes zero-padded to `ha`; gradients mapped back (dk summed over each group in head order).
fn lane(isa: Isa, [q, k, v, bias, dout]: &[Tensor; 5], scale: f32, ha: usize) -> Out {
    let (b, t, hq, hd, hkv) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3], k.shape()[2]);
    let grp = hq / hkv;
    let widen = |x: &Tensor, heads: usize, last: Option<&dyn Fn(usize) -> f32>| {
        let mut out = vec![0.0f32; b * t * hq * ha];
        for p in 0..b * t {
            for h in 0..hq {
                let src = &x.data()[(p * heads + h * heads / hq) * hd..][..hd];
                out[(p * hq + h) * ha..][..hd].copy_from_slice(src);
                if let Some(f) = last {
                    out[(p * hq + h) * ha + hd] = f(p * hq + h);
                }
            }
        }
        Tensor::from_slice(&[b, t, hq, ha], &out).unwrap()
    };
    let (qt, kt) = (widen(q, hq, Some(&|_| 1.0)), widen(k, hkv, Some(&|i| bias.data()[i])));
    let (vt, dt) = (widen(v, hkv, None), widen(dout, hq, None));
    let (ot, l) = forward_with(isa, &qt, &kt, &vt, scale, None, None).unwrap();
    let (dqt, dkt, dvt) = backward_with(isa, &qt, &kt, &vt, &ot, &l, &dt, scale, None, None).unwrap();
    let narrow = |x: &Tensor| -> Vec<f32> { x.data().chunks(ha).flat_map(|r| r[..hd].to_vec()).collect() };
    let sum_groups = |x: &Tensor| {
        let mut out = vec![0.0f32; b * t * hkv * hd];
        for p in 0..b * t {
            for h in 0..hq {
                let (dst, src) = ((p * hkv + h / grp) * hd, (p * hq + h) * ha);
                (0..hd).for_each(|c| out[dst + c] += x.data()[src + c]);
            }
        }
        Tensor::from_slice(k.shape(), &out).unwrap()
    };
    let db: Vec<f32> = dkt.data().chunks(ha).map(|r| r[hd]).collect();
    (
        Tensor::from_slice(q.shape(), &narrow(&ot)).unwrap(),
        l,
        Tensor::from_slice(q.shape(), &narrow(&dqt)).unwrap(),
        sum_groups(&dkt),
        sum_groups(&dvt),
        Tensor::from_slice(bias.shape(), &db).unwrap(),
    )
}

fn check_close(a: &Out, b: &Out, tag: &str) {
    let names = ["o", "lse", "dq", "dk", "dv", "dbias"];
    let (xs, ys) = ([&a.0, &a.1, &a.2, &a.3, &a.4, &a.5], [&b.0, &b.1, &b.2, &b.3, &b.4, &b.5]);
    for ((n, x), y) in names.iter().zip(xs).zip(ys) {
        assert_close(x.data(), y.data(), 1e-4, 1e-5, &format!("{tag} {n}"));
    }
}

#[test]
fn bias_matches_a_bias_lane_and_the_scalar_twin() {
    // T crosses the 48/64-key blocks; MHA and GQA; hd 16 and 32 (row layout on AVX2 and scalar).
    for &(b, t, hq, hkv, hd) in &[(1, 70, 2, 2, 16), (2, 100, 4, 2, 32), (1, 5, 4, 1, 32)] {
        let x = inputs(b, t, hq, hkv, hd);
        let isas = row_isas(hd);
        assert!(isas.contains(&Isa::Scalar));
        let outs: Vec<Out> = isas.iter().map(|&isa| biased(isa, &x, 0.7)).collect();
        for (&isa, out) in isas.iter().zip(&outs) {
            let nr = cpu::gemm_shape(isa).1;
            let want = lane(isa, &x, 0.7, (hd + 1).div_ceil(nr) * nr);
            check_close(out, &want, &format!("{} t={t} hq={hq} hkv={hkv} hd={hd} vs lane", isa.name()));
        }
        if outs.len() == 2 {
            check_close(&outs[1], &outs[0], &format!("avx2 vs scalar t={t} hq={hq} hkv={hkv} hd={hd}"));
        }
    }
}

#[test]
fn zero_bias_is_no_bias_bit_for_bit() {
    let mut x = inputs(2, 90, 4, 2, 32);
    x[3] = Tensor::zeros(x[3].shape());
    for isa in row_isas(32) {
        let got = biased(isa, &x, 0.3);
        let [q, k, v, _, dout] = &x;
        let (o, l) = forward_with(isa, q, k, v, 0.3, None, None).unwrap();
        let (dq, dk, dv) = backward_with(isa, q, k, v, &o, &l, dout, 0.3, None, None).unwrap();
        for (n, a, b) in
            [("o", &got.0, &o), ("lse", &got.1, &l), ("dq", &got.2, &dq), ("dk", &got.3, &dk), ("dv", &got.4, &dv)]
        {
            assert!(same_bits(a.data(), b.data()), "{} {n}", isa.name());
        }
    }
}

#[test]
fn bias_one_and_two_threads_same_bits() {
    let x = inputs(2, 130, 4, 1, 32);
    let outs = run_threads(|| {
        let o = biased(cpu::isa(), &x, 0.5);
        [o.0, o.1, o.2, o.3, o.4, o.5].map(|t| t.data().to_vec())
    });
    for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert!(same_bits(a, b), "output {i}");
    }
}

#[test]
fn bad_bias_is_an_error() {
    let [q, k, v, bias, dout] = inputs(1, 10, 2, 1, 16);
    let short = Tensor::zeros(&[1, 10, 1]);
    assert!(attention_forward_bias(&q, &k, &v, &short, 1.0).is_err());
    let (o, l) = attention_forward(&q, &k, &v, 1.0, None).unwrap();
    assert!(attention_backward_bias(&q, &k, &v, &short, &o, &l, &dout, 1.0).is_err());
    // Head sizes off the row layout take no bias (hd 12 is not a multiple of any NR).
    let [q, k, v, bias12, _] = inputs(1, 10, 2, 1, 12);
    assert!(!bias_supported(12));
    assert!(attention_forward_bias(&q, &k, &v, &bias12, 1.0).is_err());
    assert!(bias.shape() == [1, 10, 2]);
}
