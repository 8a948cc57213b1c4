use super::*;
use crate::cpu::Isa;
use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

/// First key query i of batch row b sees under `window` (None = 0, full causal) and within
/// its segment (walking back while the segment id is the same).
fn first_key(i: usize, window: Option<usize>, seg: Option<(&[i64], usize, usize)>) -> usize {
    let w = window.map_or(0, |w| (i + 1).saturating_sub(w));
    let s = seg.map_or(0, |(seg, b, t)| {
        let mut j = i;
        while j > 0 && seg[b * t + j - 1] == seg[b * t + i] {
            j -= 1;
        }
        j
    });
    w.max(s)
}

/// Materialised reference (B·H·T·T).
fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    window: Option<usize>,
    seg: Option<&[i64]>,
) -> Vec<f32> {
    let d = dims("attention", q, k, v).unwrap();
    let mut o = vec![0.0f32; q.numel()];
    for b in 0..d.b {
        for h in 0..d.hq {
            let g = h / d.group();
            for i in 0..d.t {
                let qi = &q.data()[d.q_at(b, i, h)..][..d.hd];
                let j1 = first_key(i, window, seg.map(|s| (s, b, d.t)));
                let s: Vec<f64> = (j1..=i)
                    .map(|j| {
                        let kj = &k.data()[d.kv_at(b, j, g)..][..d.hd];
                        qi.iter().zip(kj).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (j, sj) in (j1..).zip(s.iter()) {
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
fn backward_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
    scale: f32,
    window: Option<usize>,
    seg: Option<&[i64]>,
) -> [Vec<f32>; 3] {
    let d = dims("ref", q, k, v).unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0.0f64; q.numel()], vec![0.0f64; k.numel()], vec![0.0f64; k.numel()]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
    for b in 0..d.b {
        for h in 0..d.hq {
            let g = h / d.group();
            for i in 0..d.t {
                let qi = &q.data()[d.q_at(b, i, h)..][..d.hd];
                let doi = &dout.data()[d.q_at(b, i, h)..][..d.hd];
                let j1 = first_key(i, window, seg.map(|s| (s, b, d.t)));
                let s: Vec<f64> =
                    (j1..=i).map(|j| dot(qi, &k.data()[d.kv_at(b, j, g)..][..d.hd]) * scale as f64).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                let dp: Vec<f64> = (j1..=i).map(|j| dot(doi, &v.data()[d.kv_at(b, j, g)..][..d.hd])).collect();
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in j1..=i {
                    let ds = p[j - j1] * (dp[j - j1] - delta) * scale as f64;
                    let (ko, qo) = (d.kv_at(b, j, g), d.q_at(b, i, h));
                    for c in 0..d.hd {
                        dq[qo + c] += ds * k.data()[ko + c] as f64;
                        dk[ko + c] += ds * q.data()[qo + c] as f64;
                        dv[ko + c] += p[j - j1] * dout.data()[qo + c] as f64;
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
        // Row layout (hd a multiple of NR on AVX2 and scalar): hd 32 and 64, T off every strip
        // and block edge, GQA.
        (2, 131, 4, 2, 32),
        (1, 257, 2, 1, 64),
        // Row strides that crowd the L1 sets (tile::set_crowded): Q, dO and K, V as step
        // panels (H·hd 512 and 256), and Q, dO only (K, V rows 64 apart).
        (1, 131, 8, 4, 64),
        (1, 100, 8, 2, 32),
    ];
    for isa in isas() {
        for &(b, t, hq, hkv, hd) in &cases {
            let (q, k, v) = inputs(b, t, hq, hkv, hd);
            let tag = format!("{} b={b} t={t} hq={hq} hkv={hkv} hd={hd}", isa.name());
            check_against_reference(isa, &q, &k, &v, None, &tag);
        }
    }
    let (q, _, v) = inputs(1, 4, 3, 2, 8);
    assert!(attention_forward(&q, &q, &v, 1.0, None).is_err());
}

fn check_against_reference(isa: Isa, q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>, tag: &str) {
    check_masked(isa, q, k, v, window, None, tag)
}

fn check_masked(isa: Isa, q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>, seg: Option<&[i64]>, tag: &str) {
    let (o, lse) = forward_with(isa, q, k, v, 0.3, window, seg).unwrap();
    assert_close(o.data(), &attention_reference(q, k, v, 0.3, window, seg), 1e-4, 1e-5, &format!("attention {tag}"));
    let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 4)).unwrap();
    let (dq, dk, dv) = backward_with(isa, q, k, v, &o, &lse, &dout, 0.3, window, seg).unwrap();
    let want = backward_reference(q, k, v, &dout, 0.3, window, seg);
    for (name, got, want) in [("dq", &dq, &want[0]), ("dk", &dk, &want[1]), ("dv", &dv, &want[2])] {
        assert_close(got.data(), want, 1e-3, 1e-4, &format!("{name} {tag}"));
    }
}

#[test]
fn sliding_window_matches_materialised_reference() {
    // W = 1 (only itself), W not a multiple of any tile (5, 23, 77), W = one tile (64), W ≥ T;
    // T spans one to several key blocks, so whole blocks are skipped and partial ones masked.
    let cases = [
        (2, 1, 2, 2, 8),
        (1, 70, 4, 2, 16),
        (1, 130, 2, 1, 8),
        (1, 200, 2, 2, 40),
        (2, 33, 3, 1, 12),
        (1, 101, 2, 1, 32),
        (1, 101, 8, 4, 64),
    ];
    for isa in isas() {
        for &(b, t, hq, hkv, hd) in &cases {
            let (q, k, v) = inputs(b, t, hq, hkv, hd);
            for w in [1, 5, 23, 64, 77, t, t + 9] {
                let tag = format!("{} b={b} t={t} hq={hq} hkv={hkv} hd={hd} window={w}", isa.name());
                check_against_reference(isa, &q, &k, &v, Some(w), &tag);
            }
        }
    }
    let (q, k, v) = inputs(1, 4, 2, 2, 8);
    assert!(attention_forward(&q, &k, &v, 1.0, Some(0)).is_err());
    let (o, l) = attention_forward(&q, &k, &v, 1.0, None).unwrap();
    assert!(attention_backward(&q, &k, &v, &o, &l, &o, 1.0, Some(0)).is_err());
}

#[test]
fn window_at_least_t_is_full_causal_bit_for_bit() {
    let (q, k, v) = inputs(1, 90, 2, 1, 16);
    let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 5)).unwrap();
    let run = |w| {
        let (o, l) = attention_forward(&q, &k, &v, 0.3, w).unwrap();
        let (a, b, c) = attention_backward(&q, &k, &v, &o, &l, &dout, 0.3, w).unwrap();
        [o, l, a, b, c].map(|t| t.data().to_vec())
    };
    let (full, wide) = (run(None), run(Some(90)));
    for (i, (a, b)) in full.iter().zip(&wide).enumerate() {
        assert!(same_bits(a, b), "output {i}");
    }
}

#[test]
fn one_and_two_threads_same_bits() {
    // hd 16 and 32 take the row layout on AVX2, hd 12 the panel layout; 8 heads of 64 the row
    // layout with step panels (row strides that crowd the L1 sets).
    for (hq, hd) in [(4, 16), (4, 32), (4, 12), (8, 64)] {
        one_and_two_threads_same_bits_at(hq, hd);
    }
}

fn one_and_two_threads_same_bits_at(hq: usize, hd: usize) {
    let (q, k, v) = inputs(2, 100, hq, 2, hd);
    let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 9)).unwrap();
    for window in [None, Some(1), Some(37)] {
        let outs = run_threads(|| {
            let (o, l) = attention_forward(&q, &k, &v, 0.25, window).unwrap();
            let (a, b, c) = attention_backward(&q, &k, &v, &o, &l, &dout, 0.25, window).unwrap();
            [o, l, a, b, c].map(|t| t.data().to_vec())
        });
        for (i, (one, two)) in outs[0].iter().zip(&outs[1]).enumerate() {
            assert!(same_bits(one, two), "output {i}, window {window:?}");
        }
    }
}

/// Segment ids [B, T]: documents of the given lengths laid end to end in each row, numbered
/// from 0 (the last one cut at T), as the belt hands them out.
fn segments(b: usize, t: usize, lens: &[usize]) -> Vec<i64> {
    let mut out = Vec::with_capacity(b * t);
    for row in 0..b {
        let (mut id, mut left) = (0i64, lens[row % lens.len()]);
        for _ in 0..t {
            if left == 0 {
                id += 1;
                left = lens[(row + id as usize) % lens.len()];
            }
            out.push(id);
            left -= 1;
        }
    }
    out
}

#[test]
fn segments_match_block_diagonal_reference() {
    // Documents shorter than, equal to and longer than a tile; one-token documents; with and
    // without a window (the two masks compose: the later first key wins).
    let cases = [(2, 70, 4, 2, 16), (1, 130, 2, 1, 8), (2, 200, 2, 2, 40), (1, 33, 3, 1, 12), (1, 150, 2, 1, 32)];
    let lens: [&[usize]; 4] = [&[1, 5, 64, 3], &[17, 90, 1, 40], &[200], &[33, 2, 70]];
    for isa in isas() {
        for &(b, t, hq, hkv, hd) in &cases {
            let (q, k, v) = inputs(b, t, hq, hkv, hd);
            for l in lens {
                let seg = segments(b, t, l);
                for w in [None, Some(1), Some(23), Some(64)] {
                    let tag = format!("{} b={b} t={t} hq={hq} hd={hd} docs={l:?} window={w:?}", isa.name());
                    check_masked(isa, &q, &k, &v, w, Some(&seg), &tag);
                }
            }
        }
    }
}

#[test]
fn segments_of_one_document_are_unmasked_bit_for_bit_and_thread_invariant() {
    let (q, k, v) = inputs(2, 150, 4, 2, 16);
    let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 6)).unwrap();
    let run = |seg: Option<&[i64]>| {
        let (o, l) = attention_forward_segments(&q, &k, &v, 0.3, None, seg).unwrap();
        let (a, b, c) = attention_backward_segments(&q, &k, &v, &o, &l, &dout, 0.3, None, seg).unwrap();
        [o, l, a, b, c].map(|t| t.data().to_vec())
    };
    let zeros = vec![0i64; 2 * 150];
    for (i, (a, b)) in run(None).iter().zip(&run(Some(&zeros))).enumerate() {
        assert!(same_bits(a, b), "output {i}");
    }
    let seg = segments(2, 150, &[3, 40, 70, 1, 64]);
    let outs = run_threads(|| run(Some(&seg)));
    for (i, (one, two)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert!(same_bits(one, two), "output {i}");
    }
}

#[test]
fn bad_segments_are_errors() {
    let (q, k, v) = inputs(1, 4, 2, 2, 8);
    let e = attention_forward_segments(&q, &k, &v, 1.0, None, Some(&[0, 1, 0, 1])).unwrap_err();
    assert!(e.to_string().contains("must not decrease"), "{e}");
    assert!(attention_forward_segments(&q, &k, &v, 1.0, None, Some(&[0, 0, 0])).is_err());
    let (o, l) = attention_forward(&q, &k, &v, 1.0, None).unwrap();
    assert!(attention_backward_segments(&q, &k, &v, &o, &l, &o, 1.0, None, Some(&[0, 1, 1, 0])).is_err());
}

#[test]
fn empty_sequences_and_batches_give_empty_results() {
    // T = 0 once panicked (a zero chunk size while laying out per-query first keys).
    for (b, t) in [(1, 0), (0, 4), (2, 0)] {
        let (q, k, v) = inputs(b, t, 2, 1, 8);
        let seg = vec![0i64; b * t];
        for s in [None, Some(seg.as_slice())] {
            let (o, lse) = attention_forward_segments(&q, &k, &v, 0.5, None, s).unwrap();
            assert_eq!(o.shape(), q.shape());
            assert_eq!(lse.shape(), &[b, t, 2]);
            let (dq, dk, dv) = attention_backward_segments(&q, &k, &v, &o, &lse, &o, 0.5, None, s).unwrap();
            assert_eq!((dq.shape(), dk.shape(), dv.shape()), (q.shape(), k.shape(), v.shape()));
        }
    }
}
