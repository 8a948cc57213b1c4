use super::*;
use crate::cpu::{self, Isa};
use rand::{Rng, SeedableRng};

fn points(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * d).map(|_| rng.gen::<f64>()).collect()
}

/// Warnock's formula as written, every pair visited, in f64.
fn reference(x: &[f64], n: usize, d: usize) -> f64 {
    let mut single = 0.0;
    let mut pairs = 0.0;
    for i in 0..n {
        single += (0..d).map(|k| 1.0 - x[i * d + k] * x[i * d + k]).product::<f64>();
        for j in 0..n {
            pairs += (0..d).map(|k| 1.0 - x[i * d + k].max(x[j * d + k])).product::<f64>();
        }
    }
    let nf = n as f64;
    3f64.powi(-(d as i32)) - 2f64.powi(1 - d as i32) / nf * single + pairs / (nf * nf)
}

#[test]
fn matches_the_formula() {
    for &(n, d) in &[(1, 1), (2, 1), (3, 2), (7, 3), (9, 5), (17, 8), (64, 2), (100, 33)] {
        let x = points(n, d, (n * 31 + d) as u64);
        let got = l2star_sq(&x, n, d).unwrap();
        let want = reference(&x, n, d);
        assert!((got - want).abs() <= 1e-12 * want.abs().max(1e-300), "N={n} d={d}: {got} vs {want}");
    }
}

#[test]
fn one_point_by_hand() {
    // N=1, d=1, x=0.5: the single term is (2^0/1)·(1 − 0.25) = 0.75, the pair term 1 − 0.5 = 0.5,
    // so D² = 1/3 − 0.75 + 0.5 = 1/12.
    let got = l2star_sq(&[0.5], 1, 1).unwrap();
    assert!((got - 1.0 / 12.0).abs() < 1e-15, "{got}");
}

#[test]
fn simd_matches_scalar_bit_for_bit() {
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !cpu::supports(isa) {
            eprintln!("SKIP l2star {}: not supported on this host", isa.name());
            continue;
        }
        for &(n, d) in &[(1, 1), (5, 3), (8, 8), (9, 2), (33, 17), (300, 16)] {
            let x = points(n, d, 7 + n as u64);
            let a = l2star_sq_with(Isa::Scalar, &x, n, d).unwrap();
            let b = l2star_sq_with(isa, &x, n, d).unwrap();
            assert_eq!(a.to_bits(), b.to_bits(), "N={n} d={d} {}", isa.name());
        }
    }
}

#[test]
fn same_bits_for_any_thread_count() {
    let (n, d) = (1000, 8); // 250 row blocks: 63 tasks, so the work really splits
    let x = points(n, d, 3);
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| l2star_sq(&x, n, d).unwrap());
    for t in [2, 3, 4] {
        let many =
            rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap().install(|| l2star_sq(&x, n, d).unwrap());
        assert_eq!(one.to_bits(), many.to_bits(), "{t} threads");
    }
}

#[test]
fn refuses_bad_points() {
    assert!(matches!(l2star_sq(&[], 0, 3), Err(Error::Value { .. })));
    assert!(matches!(l2star_sq(&[], 3, 0), Err(Error::Value { .. })));
    assert!(matches!(l2star_sq(&[0.5, 1.5], 2, 1), Err(Error::Value { .. })));
    assert!(matches!(l2star_sq(&[0.5, -0.1], 1, 2), Err(Error::Value { .. })));
    assert!(matches!(l2star_sq(&[0.5, f64::NAN], 1, 2), Err(Error::Value { .. })));
    assert!(matches!(l2star_sq(&[0.5, 0.5, 0.5], 2, 2), Err(Error::Shape { .. })));
}
