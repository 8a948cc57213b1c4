use super::*;
use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

/// Triple-loop reference, f64 accumulation: the specification `gemm` is tested against.
fn gemm_reference(m: usize, n: usize, k: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool) -> Vec<f32> {
    let (av, bv) = views(m, n, k, a, trans_a, b, trans_b);
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| av.at(i, p) as f64 * bv.at(p, j) as f64).sum();
            c[i * n + j] = s as f32;
        }
    }
    c
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    for isa in [Isa::Avx2, Isa::Avx512] {
        if cpu::supports(isa) {
            v.push(isa);
        } else {
            eprintln!("SKIP gemm {}: not supported on this host", isa.name());
        }
    }
    v
}

fn check(isa: Isa, m: usize, n: usize, k: usize, ta: bool, tb: bool) {
    let a = rand_vec(m * k, 1);
    let b = rand_vec(k * n, 2);
    let want = gemm_reference(m, n, k, &a, ta, &b, tb);
    let mut c = rand_vec(m * n, 3);
    gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, false);
    let tag = format!("gemm {} {m}x{n}x{k} ta={ta} tb={tb}", isa.name());
    assert_close(&c, &want, 1e-4, 1e-4, &tag);
    gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, true);
    let want2: Vec<f32> = want.iter().map(|w| 2.0 * w).collect();
    assert_close(&c, &want2, 1e-4, 1e-4, &format!("{tag} accumulate"));
}

#[test]
fn parity_every_dim_1_to_67_and_transposes() {
    // m, n and k each take every value 1..=67 (7 is coprime to 67), in all four transposes.
    for isa in isas() {
        for d in (1..=67).chain([127, 128, 129]) {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                check(isa, d, 68 - d.min(67), (d * 7) % 67 + 1, ta, tb);
            }
        }
        for &(m, n, k) in
            &[(0, 5, 3), (5, 0, 3), (5, 4, 0), (1, 1, 1), (300, 70, 513), (97, 1000, 33), (1, 333, 700), (250, 1, 300)]
        {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                check(isa, m, n, k, ta, tb);
            }
        }
    }
}

#[test]
fn one_and_two_threads_same_bits() {
    // Large enough to run in parallel, with several k blocks and edge tiles on every isa.
    let (m, n, k) = (257, 190, 600);
    let a = rand_vec(m * k, 4);
    let b = rand_vec(k * n, 5);
    for isa in isas() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let outs = run_threads(|| {
                let mut c = vec![0.0; m * n];
                gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, false);
                c
            });
            assert!(same_bits(&outs[0], &outs[1]), "{} ta={ta} tb={tb}", isa.name());
        }
    }
}

#[test]
fn two_core_groups_same_bits_as_one_thread() {
    // Two pools of two threads each (unpinned), so the GEMM takes its parallel path and splits
    // its rows across the groups (`threads::for_groups`); a pool of one thread would run serially.
    let topo = crate::threads::Topology {
        groups: vec![
            crate::threads::Group { cpus: vec![0, 2], cores: vec![0, 2] },
            crate::threads::Group { cpus: vec![1, 3], cores: vec![1, 3] },
        ],
        from_sysfs: false,
    };
    let pools = crate::threads::Pools::build(&topo, 4, false);
    assert_eq!(pools.cpus.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
    let (m, n, k) = (301, 150, 400);
    let a = rand_vec(m * k, 6);
    let b = rand_vec(k * n, 7);
    let mut want = vec![0.0; m * n];
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| gemm(m, n, k, &a, false, &b, true, &mut want, false));
    let mut got = vec![0.0; m * n];
    let splits = driver::GROUP_SPLITS.load(std::sync::atomic::Ordering::Relaxed);
    pools.install(|| gemm(m, n, k, &a, false, &b, true, &mut got, false));
    assert!(
        driver::GROUP_SPLITS.load(std::sync::atomic::Ordering::Relaxed) > splits,
        "the second core group ran no rows: the multi-group split did not happen"
    );
    assert!(same_bits(&want, &got));
}

#[test]
fn epilogue_bias_and_activations() {
    let (m, n, k) = (37, 45, 29);
    let a = rand_vec(m * k, 8);
    let b = rand_vec(n * k, 9);
    let bias = rand_vec(n, 10);
    let base = gemm_reference(m, n, k, &a, false, &b, true);
    let act = |x: f64, f: Activation| match f {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => 0.5 * x * (1.0 + (0.797_884_560_8 * (x + 0.044_715 * x * x * x)).tanh()),
    };
    for isa in isas() {
        for f in [Activation::Identity, Activation::Relu, Activation::Silu, Activation::Gelu] {
            for accumulate in [false, true] {
                let c0 = rand_vec(m * n, 11);
                let mut c = c0.clone();
                gemm_ex(
                    isa,
                    m,
                    n,
                    k,
                    &a,
                    false,
                    &b,
                    true,
                    &mut c,
                    accumulate,
                    &Epilogue { bias: Some(&bias), activation: f },
                );
                let want: Vec<f32> = (0..m * n)
                    .map(|x| {
                        let pre = base[x] as f64 + bias[x % n] as f64 + if accumulate { c0[x] as f64 } else { 0.0 };
                        act(pre, f) as f32
                    })
                    .collect();
                assert_close(&c, &want, 1e-4, 1e-4, &format!("epilogue {} {f:?} acc={accumulate}", isa.name()));
            }
        }
    }
}

#[test]
fn matmul_and_linear_shapes() {
    let a = Tensor::from_slice(&[2, 3, 4], &rand_vec(24, 6)).unwrap();
    let w = Tensor::from_slice(&[5, 4], &rand_vec(20, 7)).unwrap();
    assert_eq!(matmul(&a, &w, false, true).unwrap().shape(), &[2, 3, 5]);
    assert!(matmul(&a, &w, false, false).is_err());
    let dy = Tensor::from_slice(&[2, 3, 5], &rand_vec(30, 8)).unwrap();
    assert_eq!(matmul(&dy, &a.clone().reshape(&[6, 4]).unwrap(), true, false).unwrap().shape(), &[5, 4]);
    let bias = Tensor::from_slice(&[5], &rand_vec(5, 9)).unwrap();
    let y = linear(&a, &w, Some(&bias), Activation::Identity).unwrap();
    let y0 = matmul(&a, &w, false, true).unwrap();
    let want: Vec<f32> = y0.data().iter().enumerate().map(|(i, v)| v + bias.data()[i % 5]).collect();
    assert_close(y.data(), &want, 1e-6, 1e-6, "linear");
    assert!(linear(&a, &w, Some(&w), Activation::Relu).is_err());
    assert!(linear(&w, &a, None, Activation::Relu).is_err());
    // Found by fuzzing: an empty inner dimension kept the rows of the leading dims.
    let a = Tensor::zeros(&[5, 5, 0]);
    let c = matmul(&a, &Tensor::zeros(&[0, 3]), false, false).unwrap();
    assert_eq!(c.shape(), &[5, 5, 3]);
    assert!(c.data().iter().all(|&x| x == 0.0));
    let y = linear(&Tensor::zeros(&[2, 3, 0]), &Tensor::zeros(&[4, 0]), None, Activation::Identity).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4]);
}

#[test]
fn step_major_pack_matches_panel_pack() {
    // pack_panels_contig (B as stored) against pack_panel one panel at a time: full panels of the
    // microkernel widths, a short last panel, and a panel stride longer than the panel.
    let src = rand_vec(40 * 300, 12);
    for width in [4usize, 8, 16, 32] {
        for lanes in [1, width - 1, width, 3 * width + 5, 8 * width] {
            for kc in [1, 7, 33] {
                let (base, ps, stride) = (17, 300, kc * width + 3);
                let npan = lanes.div_ceil(width);
                let mut got = vec![f32::NAN; npan * stride];
                pack::pack_panels_contig(&src, base, ps, lanes, kc, width, stride, &mut got);
                for q in 0..npan {
                    let mut want = vec![f32::NAN; kc * width];
                    let l = width.min(lanes - q * width);
                    pack::pack_panel(&src, base + q * width, 1, ps, l, kc, width, &mut want);
                    let tag = format!("width {width} lanes {lanes} kc {kc} panel {q}");
                    assert!(same_bits(&got[q * stride..][..kc * width], &want), "{tag}");
                }
            }
        }
    }
}

#[test]
fn chunked_pack_matches_panel_pack() {
    // pack_panels_chunked (A transposed) against pack_panel one panel at a time: the panel widths
    // of every isa (MR 4, 6, 8), a short last panel, k not a multiple of the step chunk, and rows
    // a page apart.
    let src = rand_vec(1100 * 70, 15);
    for width in [4usize, 6, 8] {
        for lanes in [1, width - 1, width, 3 * width + 2, 8 * width] {
            for (kc, ps) in [(1, 70), (17, 70), (40, 1100), (1, 1024)] {
                let base = 3;
                let npan = lanes.div_ceil(width);
                let mut got = vec![f32::NAN; npan * kc * width];
                pack::pack_panels_chunked(&src, base, ps, lanes, kc, width, &mut got);
                for q in 0..npan {
                    let mut want = vec![f32::NAN; kc * width];
                    let l = width.min(lanes - q * width);
                    pack::pack_panel(&src, base + q * width, 1, ps, l, kc, width, &mut want);
                    let tag = format!("width {width} lanes {lanes} kc {kc} ps {ps} panel {q}");
                    assert!(same_bits(&got[q * kc * width..][..kc * width], &want), "{tag}");
                }
            }
        }
    }
}

#[test]
fn wide_b_in_pack_pieces_parity_and_same_bits() {
    // n spans several B pack pieces (PACK_PANELS panels each) with a short last piece and a short
    // last panel; B as stored takes the step-major pack, B transposed the transposing one.
    let (m, n, k) = (70, 8 * 32 + 8 * 32 + 45, 300);
    for isa in isas() {
        for (ta, tb) in [(false, false), (true, false), (false, true)] {
            check(isa, m, n, k, ta, tb);
        }
    }
    let (m, n, k) = (203, 601, 450);
    let a = rand_vec(m * k, 13);
    let b = rand_vec(k * n, 14);
    for isa in isas() {
        for (ta, tb) in [(false, false), (true, false)] {
            let outs = run_threads(|| {
                let mut c = vec![0.0; m * n];
                gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, false);
                c
            });
            assert!(same_bits(&outs[0], &outs[1]), "{} ta={ta} tb={tb}", isa.name());
        }
    }
}
