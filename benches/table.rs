//! GEMM side-by-side without criterion: sos_rs (AVX2 and AVX-512 paths) and the matrixmultiply
//! crate, 1 and 2 threads, at model-named shapes and squares. Every repetition measures the FMA
//! peak right before the GEMMs, so each fraction of peak compares numbers taken moments apart on
//! this (shared, noisy) machine; the table shows medians over repetitions.
//!
//!   cargo bench --bench table [-- [--json] [--reps N] [name filters...]]

use sos_rs::cpu::{peak, Isa};
use sos_rs::ops::{attention, matmul};
use sos_rs::Tensor;
use std::time::Instant;

mod common;
use common::{mm_sgemm, SHAPES};

/// A field of /proc/self/status in bytes (VmRSS, VmHWM); 0 where unavailable.
fn status_bytes(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// GFLOP/s of `f`, timed over enough calls to last ~`ms` milliseconds.
fn gflops(flops: f64, ms: f64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64();
    let inner = ((ms / 1e3 / one.max(1e-7)) as usize).max(1);
    let t = Instant::now();
    for _ in 0..inner {
        f();
    }
    flops * inner as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Attention forward+backward, B=1, H=8, hd=64: GFLOP/s (7·B·H·T²·hd flops: forward 2, backward
/// 5 products over the causal half), fraction of the peak, and the resident-memory growth
/// during one call.
fn attention_rows(reps: usize, json: bool) {
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
        let flops = 7.0 * (b * h * t * t * hd) as f64;
        let run = || {
            let (o, l) = attention::attention_forward(&q, &k, &v, scale, None).unwrap();
            attention::attention_backward(&q, &k, &v, &o, &l, &dout, scale, None).unwrap();
        };
        for th in [1usize, 2] {
            // A fresh pool: its threads allocate their scratch during the first call, so the
            // resident-memory peak over that call (VmHWM, reset first) covers every buffer
            // attention keeps, heap or mapped.
            sos_rs::threads::set_num_threads(th);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let base = status_bytes("VmRSS:");
            sos_rs::threads::install(run);
            let extra = status_bytes("VmHWM:").saturating_sub(base);
            let inputs = 4 * n * 4;
            let mut rows = Vec::new();
            for _ in 0..reps {
                let p = peak::fma_peak_gflops(Isa::Avx512.min(sos_rs::cpu::isa()), th, 1, 30);
                let g = gflops(flops, 200.0, || sos_rs::threads::install(run));
                rows.push([p, g, g / p]);
            }
            let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
            if json {
                println!(
                    "{{\"shape\":\"attention_T{t}\",\"t\":{t},\"threads\":{th},\"peak\":{:.2},\"sos\":{:.2},\
                     \"frac\":{:.4},\"extra_bytes\":{extra},\"input_bytes\":{inputs}}}",
                    col(0),
                    col(1),
                    col(2)
                );
            } else {
                println!(
                    "{:12} {:>3} {:9.1} {:9.1} {:9.3}   peak RSS growth over first fwd+bwd {:.1} MB (inputs {:.1} MB)",
                    format!("attn T={t}"),
                    th,
                    col(0),
                    col(1),
                    col(2),
                    extra as f64 / 1e6,
                    inputs as f64 / 1e6
                );
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let reps = args.iter().position(|a| a == "--reps").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(5usize);
    let filters: Vec<&String> =
        args.iter().filter(|a| !a.starts_with('-') && a.parse::<usize>().is_err() && *a != "--bench").collect();
    if filters.iter().any(|f| f.as_str() == "attention") {
        return attention_rows(reps, json);
    }
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512].into_iter().filter(|i| sos_rs::cpu::supports(*i)).collect();
    if !json {
        println!(
            "{:12} {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "shape", "thr", "peak512", "sos512", "frac", "sos256", "frac256", "mmul"
        );
    }
    for &(name, m, n, k, ta, tb) in SHAPES {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        for th in [1usize, 2] {
            sos_rs::threads::set_num_threads(th);
            // per rep: [peak512, peak256, sos512, sos256, mm]
            let mut rows: Vec<[f64; 5]> = Vec::new();
            for _ in 0..reps {
                let p512 = peak::fma_peak_gflops(Isa::Avx512, th, 1, 30);
                let p256 = peak::fma_peak_gflops(Isa::Avx2, th, 1, 30);
                let mut sos = [0.0; 2];
                for (s, &isa) in sos.iter_mut().zip(isas.iter().rev()) {
                    *s = gflops(flops, 100.0, || {
                        sos_rs::threads::install(|| matmul::gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, false))
                    });
                }
                let mm = gflops(flops, 100.0, || mm_sgemm(m, n, k, &a, ta, &b, tb, &mut c, th));
                rows.push([p512, p256, sos[0], sos[1], mm]);
            }
            let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
            let frac = |i: usize, p: usize| median(rows.iter().map(|r| r[i] / r[p]).collect());
            if json {
                println!(
                    "{{\"shape\":\"{name}\",\"m\":{m},\"n\":{n},\"k\":{k},\"threads\":{th},\"peak512\":{:.2},\
                     \"peak256\":{:.2},\"sos512\":{:.2},\"sos256\":{:.2},\"frac512\":{:.4},\"frac256\":{:.4},\
                     \"matrixmultiply\":{:.2},\"mm_ratio\":{:.4}}}",
                    col(0),
                    col(1),
                    col(2),
                    col(3),
                    frac(2, 0),
                    frac(3, 1),
                    col(4),
                    median(rows.iter().map(|r| r[2] / r[4]).collect())
                );
            } else {
                println!(
                    "{:12} {:>3} {:9.1} {:9.1} {:9.3} {:9.1} {:9.3} {:9.1}",
                    name,
                    th,
                    col(0),
                    col(2),
                    frac(2, 0),
                    col(3),
                    frac(3, 1),
                    col(4)
                );
            }
        }
    }
}
