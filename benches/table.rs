//! Side-by-side GEMM table (no criterion): sos_rs vs matrixmultiply, 1 and 2 threads, as GFLOP/s
//! and as a fraction of the FMA peak measured in the same run. `--json` prints machine-readable
//! rows for scripts/bench_side_by_side.py.
use std::time::Instant;
use sos_rs::cpu::{self, peak, Isa};
use sos_rs::ops::matmul;

fn median(mut v: Vec<f64>) -> f64 { v.sort_by(f64::total_cmp); v[v.len() / 2] }

fn time_gflops(flops: f64, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now(); f(); let one = t.elapsed().as_secs_f64();
    let inner = ((0.05 / one.max(1e-6)) as usize).max(1);
    median((0..reps).map(|_| { let t = Instant::now(); for _ in 0..inner { f(); } flops * inner as f64 / t.elapsed().as_secs_f64() / 1e9 }).collect())
}

fn mm_sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    // a [m,k] row-major, b stored [n,k] (x·Wᵀ): strides rsb=1, csb=k.
    let rows = m.div_ceil(threads);
    std::thread::scope(|s| {
        for (ci, cc) in c.chunks_mut(rows * n).enumerate() {
            let mi = cc.len() / n;
            let ap = &a[ci * rows * k..];
            s.spawn(move || unsafe { matrixmultiply::sgemm(mi, k, n, 1.0, ap.as_ptr(), k as isize, 1, b.as_ptr(), 1, k as isize, 0.0, cc.as_mut_ptr(), n as isize, 1) });
        }
    });
}

fn main() {
    let shapes: Vec<(&str, usize, usize, usize)> = vec![
        ("qkv_proj", 2048, 1536, 512), ("attn_out", 2048, 512, 512), ("mlp_up", 2048, 1376, 512),
        ("mlp_down", 2048, 512, 1376), ("lm_head", 2048, 8192, 512),
        ("sq256", 256, 256, 256), ("sq512", 512, 512, 512), ("sq1024", 1024, 1024, 1024), ("sq2048", 2048, 2048, 2048)];
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for isa in [Isa::Avx2, Isa::Avx512] {
        for th in [1, 2] { println!("peak {} {}t: {:.1}", isa.name(), th, peak::fma_peak_gflops(isa, th, 5, 100)); }
    }
    for (name, m, n, k) in shapes {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) { continue; }
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        for th in [1, 2] {
            sos_rs::par::set_num_threads(th);
            let mut row = format!("{name:10} {th}t");
            for isa in [Isa::Avx2, Isa::Avx512] {
                let g = time_gflops(flops, 5, || sos_rs::par::install(|| matmul::gemm_with(isa, m, n, k, &a, false, &b, true, &mut c, false)));
                row += &format!("  sos-{}: {:6.1}", isa.name(), g);
            }
            let g = time_gflops(flops, 5, || mm_sgemm(m, n, k, &a, &b, &mut c, th));
            row += &format!("  matrixmultiply: {:6.1}", g);
            println!("{row}");
        }
    }
    let _ = cpu::isa();
}
