//! Shared by the benches: the model-named GEMM shapes and a threaded matrixmultiply baseline.
#![allow(dead_code)]

/// (name, M, N, K, trans_a, trans_b) for d=512, T=256, B=8 (M = 2048 tokens), SwiGLU hidden
/// 1376, vocab 8192. Forward Linear layers are x[M,K] · W[N,K]ᵀ; `lm_head_dx`/`_dw` are the
/// backward products of the largest layer (dY·W and dYᵀ·X).
pub const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("qkv_proj", 2048, 1536, 512, false, true),
    ("attn_out", 2048, 512, 512, false, true),
    ("mlp_up", 2048, 1376, 512, false, true),
    ("mlp_down", 2048, 512, 1376, false, true),
    ("lm_head", 2048, 8192, 512, false, true),
    ("lm_head_dx", 2048, 512, 8192, false, false),
    ("lm_head_dw", 8192, 512, 2048, true, false),
    ("sq256", 256, 256, 256, false, false),
    ("sq512", 512, 512, 512, false, false),
    ("sq1024", 1024, 1024, 1024, false, false),
    ("sq2048", 2048, 2048, 2048, false, false),
];

/// matrixmultiply::sgemm, rows split across `threads` scoped threads.
pub fn mm_sgemm(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool, c: &mut [f32], threads: usize) {
    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let rows = m.div_ceil(threads);
    std::thread::scope(|s| {
        for (ci, cc) in c.chunks_mut(rows * n).enumerate() {
            let mi = cc.len() / n;
            let ap = a[ci * rows * rsa as usize..].as_ptr() as usize;
            let bp = b.as_ptr() as usize;
            s.spawn(move || {
                // SAFETY: rows [ci*rows, ci*rows+mi) of op(A), all of op(B) and this chunk of C
                // are inside their slices at the given strides.
                unsafe {
                    matrixmultiply::sgemm(
                        mi,
                        k,
                        n,
                        1.0,
                        ap as *const f32,
                        rsa,
                        csa,
                        bp as *const f32,
                        rsb,
                        csb,
                        0.0,
                        cc.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            });
        }
    });
}
