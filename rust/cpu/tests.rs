//! Every SIMD primitive against its scalar twin over sizes 0..70, 127, 128, 129, 1000.
//! A path the host lacks is skipped with a printed reason.

use super::*;
use crate::ops::testutil::{assert_close, rand_vec, sizes};

type Unary = unsafe fn(&[f32], &mut [f32]);
type Binary = unsafe fn(&[f32], &[f32], &mut [f32]);
type UnaryRef = fn(&[f32], &mut [f32]);
type BinaryRef = fn(&[f32], &[f32], &mut [f32]);

fn paths() -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if supports(isa) {
            v.push(isa);
        } else {
            eprintln!("SKIP {} kernels: the host CPU lacks them", isa.name());
        }
    }
    v
}

#[test]
#[cfg(target_arch = "x86_64")]
fn simd_matches_scalar() {
    for isa in paths() {
        for n in sizes() {
            let a: Vec<f32> = rand_vec(n, 1).iter().map(|x| x * 4.0).collect();
            let b = rand_vec(n, 2);
            let tag = |k: &str| format!("{k} {} n={n}", isa.name());
            // SAFETY: `paths()` only yields instruction sets the host supports.
            unsafe {
                let (d, ax, es) = match isa {
                    Isa::Avx512 => (
                        avx512::dot(&a, &b),
                        {
                            let mut y = b.clone();
                            avx512::axpy(0.7, &a, &mut y);
                            y
                        },
                        {
                            let mut o = vec![0.0; n];
                            let s = avx512::exp_shift_sum(&a, 0.5, &mut o);
                            (s, o)
                        },
                    ),
                    _ => (
                        avx2::dot(&a, &b),
                        {
                            let mut y = b.clone();
                            avx2::axpy(0.7, &a, &mut y);
                            y
                        },
                        {
                            let mut o = vec![0.0; n];
                            let s = avx2::exp_shift_sum(&a, 0.5, &mut o);
                            (s, o)
                        },
                    ),
                };
                assert_close(&[d], &[scalar::dot(&a, &b)], 1e-5, 1e-5, &tag("dot"));
                let mut y = b.clone();
                scalar::axpy(0.7, &a, &mut y);
                assert_close(&ax, &y, 1e-6, 1e-6, &tag("axpy"));
                let mut o = vec![0.0; n];
                let s = scalar::exp_shift_sum(&a, 0.5, &mut o);
                assert_close(&es.1, &o, 2e-6, 0.0, &tag("exp"));
                assert_close(&[es.0], &[s], 1e-5, 0.0, &tag("exp sum"));

                let unary: [(&str, Unary, UnaryRef); 2] =
                    [("silu", avx2::silu, scalar::silu), ("gelu", avx2::gelu, scalar::gelu)];
                for (name, simd, reference) in unary {
                    let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                    simd(&a, &mut o1);
                    reference(&a, &mut o2);
                    assert_close(&o1, &o2, 1e-5, 1e-6, &tag(name));
                }
                let binary: [(&str, Binary, BinaryRef); 4] = [
                    ("add", avx2::add, scalar::add),
                    ("mul", avx2::mul, scalar::mul),
                    ("silu_backward", avx2::silu_backward, scalar::silu_backward),
                    ("gelu_backward", avx2::gelu_backward, scalar::gelu_backward),
                ];
                for (name, simd, reference) in binary {
                    let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                    simd(&a, &b, &mut o1);
                    reference(&a, &b, &mut o2);
                    assert_close(&o1, &o2, 1e-5, 1e-6, &tag(name));
                }
                let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                avx2::scale(-1.5, &a, &mut o1);
                scalar::scale(-1.5, &a, &mut o2);
                assert_close(&o1, &o2, 0.0, 0.0, &tag("scale"));
                avx2::scale_mul(0.3, &a, &b, &mut o1);
                scalar::scale_mul(0.3, &a, &b, &mut o2);
                assert_close(&o1, &o2, 1e-6, 0.0, &tag("scale_mul"));
                assert_close(&[avx2::sum(&a)], &[scalar::sum(&a)], 1e-5, 1e-5, &tag("sum"));
                assert_close(&[avx2::sumsq(&a)], &[scalar::sumsq(&a)], 1e-5, 1e-5, &tag("sumsq"));
                assert_eq!(avx2::max(&a), scalar::max(&a), "{}", tag("max"));

                let h = AdamParams {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    bias1: 0.19,
                    bias2_sqrt: 0.3,
                };
                let (mut p1, mut m1, mut v1) = (a.clone(), b.clone(), b.iter().map(|x| x * x).collect::<Vec<_>>());
                let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), v1.clone());
                avx2::adamw(&mut p1, &b, &mut m1, &mut v1, &h);
                scalar::adamw(&mut p2, &b, &mut m2, &mut v2, &h);
                assert_close(&p1, &p2, 1e-6, 1e-7, &tag("adamw p"));
                assert_close(&m1, &m2, 1e-6, 1e-7, &tag("adamw m"));
                assert_close(&v1, &v2, 1e-6, 1e-7, &tag("adamw v"));
            }
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn exp_sub_matches_scalar() {
    for isa in paths() {
        for n in sizes() {
            let x: Vec<f32> = rand_vec(n, 3).iter().map(|v| v * 20.0).collect();
            let s: Vec<f32> = rand_vec(n, 4).iter().map(|v| v * 5.0).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            // SAFETY: `paths()` only yields instruction sets the host supports.
            unsafe {
                match isa {
                    Isa::Avx512 => avx512::exp_sub(&mut a, &s),
                    _ => avx2::exp_sub(&mut a, &s),
                }
            }
            scalar::exp_sub(&mut b, &s);
            assert_close(&a, &b, 1e-6, 0.0, &format!("exp_sub {} n={n}", isa.name()));
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn transpose8x8_matches_scalar() {
    if !supports(Isa::Avx2) {
        eprintln!("SKIP transpose8x8: no AVX2");
        return;
    }
    let src = rand_vec(8 * 11, 5);
    let (mut a, mut b) = (vec![0.0; 8 * 13], vec![0.0; 8 * 13]);
    // SAFETY: AVX2 support checked above.
    unsafe { avx2::transpose8x8(&src, 11, &mut a, 13, 0.5) };
    scalar::transpose8x8(&src, 11, &mut b, 13, 0.5);
    assert_eq!(a, b);
    assert_eq!(b[3 * 13 + 5], 0.5 * src[5 * 11 + 3]);
}

#[test]
fn exp_kernel_limits() {
    // -inf gives exactly 0 on every path; large inputs saturate instead of producing NaN.
    let x = [f32::NEG_INFINITY, -100.0, 0.0, 80.0];
    let mut o = [0.0; 4];
    exp_shift_sum(&x, 0.0, &mut o);
    assert_eq!(o[0], 0.0);
    assert!(o[1] < 1e-37 && (o[2] - 1.0).abs() < 1e-6 && o[3].is_finite());
}

#[test]
#[cfg(target_arch = "x86_64")]
fn attention_softmax_step_and_ds_row_match_scalar() {
    for isa in paths() {
        let nr = gemm_shape(isa).1;
        for rows in [1, 3, 8] {
            // Scores with −∞ (masked) entries, one column wholly masked, and running m, l.
            let mut st: Vec<f32> = rand_vec(rows * nr, 5).iter().map(|v| v * 8.0).collect();
            for (i, x) in st.iter_mut().enumerate() {
                if i % nr == 1 || i % 7 == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
            let mut m: Vec<f32> = rand_vec(nr, 6).iter().map(|v| v * 4.0).collect();
            m[1] = f32::NEG_INFINITY;
            let l0: Vec<f32> = rand_vec(nr, 7).iter().map(|v| v.abs() * 3.0).collect();
            let (mut st2, mut m2, mut l, mut l2) = (st.clone(), m.clone(), l0.clone(), l0.clone());
            let (mut c, mut c2) = (vec![0.0; nr], vec![0.0; nr]);
            // SAFETY: `paths()` only yields instruction sets the host supports.
            unsafe { softmax_step(isa, &mut st, nr, &mut m, &mut l, &mut c) };
            scalar::softmax_step(&mut st2, nr, &mut m2, &mut l2, &mut c2);
            let tag = format!("softmax_step {} rows={rows}", isa.name());
            assert_close(&st, &st2, 1e-6, 0.0, &tag);
            assert_close(&c, &c2, 1e-6, 0.0, &tag);
            assert_close(&l, &l2, 1e-5, 0.0, &tag);
            assert_eq!(m, m2, "{tag}");
            assert!(c[1] == 0.0 && st.chunks_exact(nr).all(|r| r[1] == 0.0), "{tag}: a masked column stays 0");
        }
        let n = 4 * nr;
        let s0: Vec<f32> = rand_vec(n, 8).iter().map(|v| v * 6.0).collect();
        let dp0 = rand_vec(n, 9);
        let (mut s, mut dp, mut s2, mut dp2) = (s0.clone(), dp0.clone(), s0.clone(), dp0.clone());
        // SAFETY: as above.
        unsafe { attn_ds_row(isa, &mut s, &mut dp, 1.5, 0.25, 0.125) };
        scalar::attn_ds_row(&mut s2, &mut dp2, 1.5, 0.25, 0.125);
        assert_close(&s, &s2, 1e-6, 0.0, &format!("attn_ds_row P {}", isa.name()));
        assert_close(&dp, &dp2, 1e-6, 1e-7, &format!("attn_ds_row dS {}", isa.name()));
    }
}
