//! Tests of metric attention: a materialised f64 reference, the tiled kernel against the direct
//! one, routed rows against the dense call, hard pruning, and thread-count determinism.
//! Central-difference gradient checks in f64 live in tests/test_gradcheck_sparse.py.

use super::*;
use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

struct Case {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    w: Tensor,
    kb: Tensor,
}

fn case(b: usize, t: usize, h: usize, hkv: usize, hd: usize) -> Case {
    let pos = |n: usize, s: u64| rand_vec(n, s).iter().map(|x| 0.2 + x.abs()).collect::<Vec<f32>>();
    Case {
        q: Tensor::from_slice(&[b, t, h, hd], &rand_vec(b * t * h * hd, 1)).unwrap(),
        k: Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 2)).unwrap(),
        v: Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 3)).unwrap(),
        alpha: Tensor::from_slice(&[h], &pos(h, 4)).unwrap(),
        w: Tensor::from_slice(&[h, hd], &pos(h * hd, 5)).unwrap(),
        kb: Tensor::from_slice(&[b, t, h], &rand_vec(b * t * h, 6)).unwrap(),
    }
}

impl Case {
    fn inputs(&self, kb: bool, hard: bool) -> MetricInputs<'_> {
        MetricInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            alpha: &self.alpha,
            w: &self.w,
            kb: kb.then_some(&self.kb),
            rows: None,
            hard,
        }
    }
}

/// Materialised f64 reference of the full score, -α Σ w (q - k)² + kb, with the same masking.
fn reference(c: &Case, kb: bool, hard: bool) -> Vec<f32> {
    let [b, t, h, hd] = [c.q.shape()[0], c.q.shape()[1], c.q.shape()[2], c.q.shape()[3]];
    let hkv = c.k.shape()[2];
    let mut o = vec![0.0f32; c.q.numel()];
    for bb in 0..b {
        for hh in 0..h {
            let g = hh / (h / hkv);
            for i in 0..t {
                let qi = &c.q.data()[((bb * t + i) * h + hh) * hd..][..hd];
                let mut s = Vec::new();
                for j in 0..=i {
                    let kj = &c.k.data()[((bb * t + j) * hkv + g) * hd..][..hd];
                    let bias = c.kb.data()[(bb * t + j) * h + hh] as f64;
                    if hard && j != i && bias < 0.0 {
                        continue;
                    }
                    let dist: f64 =
                        (0..hd).map(|x| c.w.data()[hh * hd + x] as f64 * (qi[x] as f64 - kj[x] as f64).powi(2)).sum();
                    s.push((j, -(c.alpha.data()[hh] as f64) * dist + if kb && !hard { bias } else { 0.0 }));
                }
                let m = s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x.1 - m).exp()).sum();
                for &(j, sj) in &s {
                    let vj = &c.v.data()[((bb * t + j) * hkv + g) * hd..][..hd];
                    for x in 0..hd {
                        o[((bb * t + i) * h + hh) * hd + x] += ((sj - m).exp() / z * vj[x] as f64) as f32;
                    }
                }
            }
        }
    }
    o
}

#[test]
fn matches_materialised_reference() {
    for &(b, t, h, hkv, hd) in
        &[(1, 1, 1, 1, 4), (2, 70, 2, 2, 8), (1, 130, 4, 1, 6), (2, 33, 4, 2, 16), (1, 65, 2, 1, 32)]
    {
        let c = case(b, t, h, hkv, hd);
        for (kb, hard) in [(false, false), (true, false), (true, true)] {
            let (o, _) = metric_attention_forward(c.inputs(kb, hard)).unwrap();
            assert_close(
                o.data(),
                &reference(&c, kb, hard),
                1e-4,
                1e-5,
                &format!("t={t} h={h} hkv={hkv} kb={kb} hard={hard}"),
            );
        }
    }
}

#[test]
fn routed_rows_equal_the_dense_rows() {
    // hd 8 takes the bias lane on AVX2, hd 32 the kernels' score bias (`biased`).
    for hd in [8, 32] {
        routed_rows_equal_the_dense_rows_at(hd);
    }
}

fn routed_rows_equal_the_dense_rows_at(hd: usize) {
    let (b, t, h, hkv) = (2, 50, 4, 1);
    let c = case(b, t, h, hkv, hd);
    let rows: Vec<u32> = (0..(b * t) as u32).filter(|r| r % 3 != 1).collect();
    let row = h * hd;
    let qsel: Vec<f32> =
        rows.iter().flat_map(|&r| c.q.data()[r as usize * row..(r as usize + 1) * row].to_vec()).collect();
    let qsel = Tensor::from_slice(&[rows.len(), h, hd], &qsel).unwrap();
    // dout is zero on unselected rows, so dense gradients of k, v, α, w, kb equal the routed ones.
    let mut dout = Tensor::from_slice(c.q.shape(), &rand_vec(c.q.numel(), 7)).unwrap();
    for r in 0..b * t {
        if !rows.contains(&(r as u32)) {
            dout.data_mut()[r * row..(r + 1) * row].fill(0.0);
        }
    }
    let dsel: Vec<f32> =
        rows.iter().flat_map(|&r| dout.data()[r as usize * row..(r as usize + 1) * row].to_vec()).collect();
    let dsel = Tensor::from_slice(qsel.shape(), &dsel).unwrap();
    for hard in [false, true] {
        let dense = c.inputs(true, hard);
        let routed = MetricInputs { q: &qsel, rows: Some(&rows), ..dense };
        let (od, ld) = metric_attention_forward(dense).unwrap();
        let (or, lr) = metric_attention_forward(routed).unwrap();
        let gd = metric_attention_backward(dense, &od, &ld, &dout).unwrap();
        let gr = metric_attention_backward(routed, &or, &lr, &dsel).unwrap();
        for (m, &r) in rows.iter().enumerate() {
            let r = r as usize;
            assert!(
                same_bits(&or.data()[m * row..(m + 1) * row], &od.data()[r * row..(r + 1) * row]),
                "o row {r} hd={hd}"
            );
            assert!(
                same_bits(&gr.dq.data()[m * row..(m + 1) * row], &gd.dq.data()[r * row..(r + 1) * row]),
                "dq row {r} hd={hd}"
            );
        }
        for (name, x, y) in [
            ("dk", &gr.dk, &gd.dk),
            ("dv", &gr.dv, &gd.dv),
            ("dkb", gr.dkb.as_ref().unwrap(), gd.dkb.as_ref().unwrap()),
        ] {
            assert!(same_bits(x.data(), y.data()), "{name} hard={hard} hd={hd}");
        }
        assert_close(gr.dalpha.data(), gd.dalpha.data(), 1e-5, 1e-6, "dalpha");
        assert_close(gr.dw.data(), gd.dw.data(), 1e-5, 1e-6, "dw");
    }
}

#[test]
fn hard_pruning_never_empties_a_row_and_has_no_kb_gradient() {
    let mut c = case(1, 20, 2, 2, 4);
    c.kb = Tensor::full(&[1, 20, 2], -1.0); // every key outside the ball: each query sees only itself
    let (o, l) = metric_attention_forward(c.inputs(true, true)).unwrap();
    let vrow = |t: usize, hh: usize| c.v.data()[(t * 2 + hh) * 4..][..4].to_vec();
    for t in 0..20 {
        for hh in 0..2 {
            assert_close(&o.data()[(t * 2 + hh) * 4..][..4], &vrow(t, hh), 1e-6, 1e-6, "o = own value");
        }
    }
    let g = metric_attention_backward(c.inputs(true, true), &o, &l, &o).unwrap();
    assert!(g.dkb.unwrap().data().iter().all(|&x| x == 0.0));
}

#[test]
fn bad_inputs_are_errors() {
    let c = case(1, 4, 2, 1, 4);
    let bad_rows = [2u32, 1];
    let q3 = c.q.clone().reshape(&[4, 2, 4]).unwrap();
    for a in [
        MetricInputs { alpha: &c.w, ..c.inputs(false, false) },
        MetricInputs { k: &c.q, ..c.inputs(false, false) },
        MetricInputs { kb: Some(&c.alpha), ..c.inputs(false, false) },
        MetricInputs { q: &q3, rows: Some(&bad_rows), ..c.inputs(false, false) },
    ] {
        assert!(metric_attention_forward(a).is_err());
    }
}

#[test]
fn one_and_two_threads_same_bits() {
    for hd in [8, 32] {
        one_and_two_threads_same_bits_at(hd);
    }
}

fn one_and_two_threads_same_bits_at(hd: usize) {
    let c = case(2, 45, 4, 2, hd);
    let dout = Tensor::from_slice(c.q.shape(), &rand_vec(c.q.numel(), 9)).unwrap();
    let outs = run_threads(|| {
        let (o, l) = metric_attention_forward(c.inputs(true, false)).unwrap();
        let g = metric_attention_backward(c.inputs(true, false), &o, &l, &dout).unwrap();
        [o, g.dq, g.dk, g.dv, g.dalpha, g.dw, g.dkb.unwrap()].map(|t| t.data().to_vec())
    });
    for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert!(same_bits(a, b), "output {i} hd={hd}");
    }
}

#[test]
fn tiled_matches_direct_forward_and_backward() {
    // hd 16 and 32 take the kernels' score bias on AVX2 and scalar, 6 and 8 the bias lane on AVX2.
    let cases = [
        (2, 33, 2, 2, 8, false),
        (1, 70, 4, 1, 16, true),
        (2, 20, 4, 2, 6, true),
        (2, 90, 4, 2, 32, false),
        (1, 75, 4, 1, 32, true),
    ];
    for &(b, t, h, hkv, hd, routed) in &cases {
        let c = case(b, t, h, hkv, hd);
        let rows: Vec<u32> = (0..(b * t) as u32).filter(|r| r % 3 != 2).collect();
        let qsel: Vec<f32> =
            rows.iter().flat_map(|&r| c.q.data()[r as usize * h * hd..(r as usize + 1) * h * hd].to_vec()).collect();
        let qsel = Tensor::from_slice(&[rows.len(), h, hd], &qsel).unwrap();
        for kb in [false, true] {
            let mut a = c.inputs(kb, false);
            if routed {
                a = MetricInputs { q: &qsel, rows: Some(&rows), ..a };
            }
            let what = format!("b={b} t={t} h={h} hkv={hkv} routed={routed} kb={kb}");
            let (o, l) = metric_attention_forward(a).unwrap();
            let (od, ld) = metric_attention_forward_direct(a).unwrap();
            assert_close(o.data(), od.data(), 1e-4, 1e-5, &format!("o {what}"));
            assert_close(l.data(), ld.data(), 1e-4, 1e-4, &format!("lse {what}"));
            let dout = Tensor::from_slice(a.q.shape(), &rand_vec(a.q.numel(), 8)).unwrap();
            let g = metric_attention_backward(a, &o, &l, &dout).unwrap();
            let gd = metric_attention_backward_direct(a, &od, &ld, &dout).unwrap();
            for (name, x, y) in [
                ("dq", &g.dq, &gd.dq),
                ("dk", &g.dk, &gd.dk),
                ("dv", &g.dv, &gd.dv),
                ("dalpha", &g.dalpha, &gd.dalpha),
                ("dw", &g.dw, &gd.dw),
            ] {
                assert_close(x.data(), y.data(), 2e-3, 2e-4, &format!("{name} {what}"));
            }
            if kb {
                assert_close(
                    g.dkb.as_ref().unwrap().data(),
                    gd.dkb.as_ref().unwrap().data(),
                    2e-3,
                    2e-4,
                    &format!("dkb {what}"),
                );
            }
        }
    }
}
