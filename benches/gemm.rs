//! Criterion benches named after model use: GEMM at the dense model's shapes and squares
//! (sos_rs vs the matrixmultiply crate, 1 and 2 threads; throughput in elements = flops, so
//! criterion's "Gelem/s" reads as GFLOP/s), and attention forward+backward at T = 256, 1024,
//! 4096 (B=1, H=8, hd=64; 7·B·H·T²·hd flops). Fractions of the FMA peak and the side-by-side
//! with numpy/torch: `cargo bench --bench table` and `scripts/bench_side_by_side.py`.
//!
//!   cargo bench --bench gemm [-- filter]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sos_rs::ops::{attention, matmul};
use sos_rs::Tensor;
use std::time::Duration;

mod common;
use common::{mm_sgemm, SHAPES};

fn gemm(c: &mut Criterion) {
    for &(name, m, n, k, ta, tb) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let mut out = vec![0.0f32; m * n];
        let mut g = c.benchmark_group(format!("gemm/{name}"));
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64))
            .sample_size(10)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300));
        for th in [1usize, 2] {
            sos_rs::threads::set_num_threads(th);
            g.bench_function(BenchmarkId::new("sos_rs", format!("{th}t")), |bch| {
                bch.iter(|| sos_rs::threads::install(|| matmul::gemm(m, n, k, &a, ta, &b, tb, &mut out, false)))
            });
            g.bench_function(BenchmarkId::new("matrixmultiply", format!("{th}t")), |bch| {
                bch.iter(|| mm_sgemm(m, n, k, &a, ta, &b, tb, &mut out, th))
            });
        }
        g.finish();
    }
}

fn attention_fwd_bwd(c: &mut Criterion) {
    let (b, h, hd) = (1usize, 8usize, 64usize);
    for t in [256usize, 1024, 4096] {
        let n = b * t * h * hd;
        let mk = |seed: usize| {
            Tensor::from_slice(
                &[b, t, h, hd],
                &(0..n).map(|i| ((i * 2654435761 + seed) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        let (q, k, v, dout) = (mk(1), mk(2), mk(3), mk(4));
        let scale = 1.0 / (hd as f32).sqrt();
        let mut g = c.benchmark_group(format!("attention/T{t}"));
        g.throughput(Throughput::Elements(7 * (b * h * t * t * hd) as u64))
            .sample_size(10)
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_millis(300));
        for th in [1usize, 2] {
            sos_rs::threads::set_num_threads(th);
            g.bench_function(BenchmarkId::new("fwd_bwd", format!("{th}t")), |bch| {
                bch.iter(|| {
                    sos_rs::threads::install(|| {
                        let (o, l) = attention::attention_forward(&q, &k, &v, scale, None).unwrap();
                        attention::attention_backward(&q, &k, &v, &o, &l, &dout, scale, None).unwrap()
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, gemm, attention_fwd_bwd);
criterion_main!(benches);
