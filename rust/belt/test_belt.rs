//! Belt properties over random corpora (document lengths: empty, one token, short, several rows
//! long): every token of every document exactly once per epoch, in the epoch's document order,
//! with no padding; resumed == uninterrupted; rank slices == one process with the global batch;
//! positions restart at document starts; mixtures follow their weights.

use super::belt::{Belt, BeltConfig};
use super::corpus::Corpus;
use super::mixture::Mixture;
use super::testutil::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn cfg(t: usize, b: usize, prefetch: usize) -> BeltConfig {
    BeltConfig { prefetch, ..BeltConfig::new(t, b) }
}

/// The rows of a batch, T+1 tokens each, rebuilt from ids and targets (and checked to agree).
fn rows(ids: &[i64], targets: &[i64], t: usize) -> Vec<Vec<u32>> {
    ids.chunks(t)
        .zip(targets.chunks(t))
        .map(|(i, g)| {
            assert_eq!(&i[1..], &g[..t - 1], "targets are the ids shifted by one");
            i.iter().chain(g.last()).map(|&x| x as u32).collect()
        })
        .collect()
}

/// Concatenated rows of `n` batches.
fn stream(belt: &mut Belt, n: usize) -> Vec<u32> {
    let t = belt.config().seq_len;
    (0..n)
        .flat_map(|_| {
            let b = belt.next_batch().unwrap();
            rows(&b.ids, &b.targets, t).concat()
        })
        .collect()
}

/// The stream a belt must produce: each epoch's documents in that epoch's order, end to end.
fn expected_stream(paths: &[std::path::PathBuf], docs: &[Vec<u32>], seed: u64, shuffle: bool, len: usize) -> Vec<u32> {
    let corpus = Corpus::open(paths, true, None).unwrap();
    let mut out = Vec::new();
    let mut epoch = 0;
    while out.len() < len {
        for &d in &corpus.order(seed, epoch, shuffle) {
            out.extend(&docs[d as usize]);
        }
        epoch += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn every_token_exactly_once_per_epoch_in_order_without_padding() {
    for case in 0..24u64 {
        let dir = TempDir::new("once");
        let (t, b) = (1 + (case as usize * 7) % 13, 1 + (case as usize) % 4);
        let (paths, docs) =
            random_corpus(&dir, case, 5 + case as usize * 3, 1 + case as usize % 3, t + 1, case % 5 == 0);
        let n_tokens: usize = docs.iter().map(Vec::len).sum();
        let shuffle = case % 4 != 3;
        let mut belt = Belt::open(&paths, BeltConfig { seed: case, shuffle, ..cfg(t, b, case as usize % 3) }).unwrap();
        let per_batch = b * (t + 1);
        let n_batches = (3 * n_tokens).div_ceil(per_batch) + 1; // a little over three epochs
        let got = stream(&mut belt, n_batches);
        assert_eq!(got, expected_stream(&paths, &docs, case, shuffle, got.len()), "case {case}: stream differs");
        // Tokens are numbered 1..=n_tokens, so each epoch's slice holds each exactly once.
        for e in 0..3 {
            let mut epoch: Vec<u32> = got[e * n_tokens..(e + 1) * n_tokens].to_vec();
            epoch.sort_unstable();
            assert!(
                epoch.iter().copied().eq(1..=n_tokens as u32),
                "case {case} epoch {e}: a token is missing, repeated or padding"
            );
        }
        assert_eq!(belt.epoch() as usize, got.len() / n_tokens, "case {case}: epoch counter");
    }
}

#[test]
fn resumed_stream_equals_uninterrupted_stream() {
    let dir = TempDir::new("resume");
    let (paths, _) = random_corpus(&dir, 11, 40, 3, 9, false);
    for prefetch in [0, 1, 3] {
        for (t, b) in [(8, 2), (5, 3), (16, 1)] {
            let mut straight = Belt::open(&paths, BeltConfig { seed: 4, ..cfg(t, b, prefetch) }).unwrap();
            let want = stream(&mut straight, 30);
            for k in [0, 1, 7, 19, 29] {
                let mut first = Belt::open(&paths, BeltConfig { seed: 4, ..cfg(t, b, prefetch) }).unwrap();
                let mut got = stream(&mut first, k);
                let st = first.state();
                drop(first);
                // A fresh belt with another seed and prefetch depth: the state carries the seed.
                let mut resumed =
                    Belt::open(&paths, BeltConfig { seed: 99, ..cfg(t, b, 2 - prefetch.min(2)) }).unwrap();
                stream(&mut resumed, 3); // its own position must not matter
                resumed.load_state(&st).unwrap();
                assert_eq!(resumed.state(), st);
                got.extend(stream(&mut resumed, 30 - k));
                assert_eq!(got, want, "prefetch {prefetch} (T={t}, B={b}) resumed after {k}");
            }
        }
    }
}

#[test]
fn rank_slices_are_disjoint_cover_and_equal_the_global_batch() {
    let dir = TempDir::new("ranks");
    let (paths, _) = random_corpus(&dir, 5, 60, 2, 7, false);
    for world in [2usize, 3, 4] {
        let (t, b) = (6, 2);
        let mut global = Belt::open(&paths, BeltConfig { seed: 1, ..cfg(t, b * world, 0) }).unwrap();
        let mut ranks: Vec<Belt> = (0..world)
            .map(|r| Belt::open(&paths, BeltConfig { seed: 1, rank: r, world, ..cfg(t, b, r % 2) }).unwrap())
            .collect();
        for step in 0..25 {
            let g = global.next_batch().unwrap();
            let mut joined = Vec::new();
            for belt in ranks.iter_mut() {
                let x = belt.next_batch().unwrap();
                assert_eq!(x.cursor, g.cursor, "every rank keeps the global cursor");
                joined.extend(rows(&x.ids, &x.targets, t));
            }
            assert_eq!(joined, rows(&g.ids, &g.targets, t), "world {world} step {step}");
        }
    }
}

#[test]
fn positions_and_segments_restart_at_document_starts() {
    let dir = TempDir::new("mask");
    let (paths, docs) = random_corpus(&dir, 8, 50, 2, 6, false);
    // token -> (document, offset inside it)
    let at: HashMap<u32, (usize, usize)> =
        docs.iter().enumerate().flat_map(|(d, doc)| doc.iter().enumerate().map(move |(o, &x)| (x, (d, o)))).collect();
    let (t, b) = (5, 3);
    let mut belt = Belt::open(&paths, BeltConfig { doc_mask: true, seed: 2, ..cfg(t, b, 1) }).unwrap();
    for _ in 0..40 {
        let x = belt.next_batch().unwrap();
        let (pos, seg) = (x.positions.unwrap(), x.segments.unwrap());
        for r in 0..b {
            for i in 0..t {
                let off = at[&(x.ids[r * t + i] as u32)].1;
                // A position counts from the document start, or from the row start if later.
                assert_eq!(pos[r * t + i], off.min(i) as i64);
                // A document begins where the token does not continue its predecessor's document
                // (which also catches one document ending an epoch and starting the next).
                let begins = (1..=i)
                    .filter(|&j| {
                        let (d0, o0) = at[&(x.ids[r * t + j - 1] as u32)];
                        at[&(x.ids[r * t + j] as u32)] != (d0, o0 + 1)
                    })
                    .count();
                assert_eq!(seg[r * t + i], begins as i64, "segment = documents begun earlier in this row");
            }
        }
    }
    let mut plain = Belt::open(&paths, cfg(t, b, 0)).unwrap();
    assert!(plain.next_batch().unwrap().positions.is_none());
}

#[test]
fn order_is_a_seeded_permutation_per_epoch() {
    let dir = TempDir::new("order");
    let (paths, _) = random_corpus(&dir, 3, 200, 1, 4, false);
    let c = Corpus::open(&paths, true, None).unwrap();
    let o = c.order(7, 0, true);
    let mut sorted = o.clone();
    sorted.sort_unstable();
    assert!(sorted.iter().copied().eq(0..200u32));
    assert_eq!(o, c.order(7, 0, true), "same (seed, epoch): same order");
    assert_ne!(o, c.order(7, 1, true), "a new epoch reshuffles");
    assert_ne!(o, c.order(8, 0, true), "another seed, another order");
    assert!(c.order(7, 3, false).iter().copied().eq(0..200u32), "shuffle off keeps file order");
}

#[test]
fn bad_configuration_and_foreign_state_are_refused() {
    let dir = TempDir::new("badcfg");
    let (paths, _) = random_corpus(&dir, 1, 10, 1, 4, false);
    let other_dir = TempDir::new("other");
    let (other, _) = random_corpus(&other_dir, 2, 10, 1, 4, false);
    for (c, needle) in [
        (cfg(0, 1, 0), "must be positive"),
        (cfg(4, 0, 0), "must be positive"),
        (BeltConfig { rank: 2, world: 2, ..cfg(4, 1, 0) }, "rank 2 is not in 0..world=2"),
        (BeltConfig { world: 0, ..cfg(4, 1, 0) }, "world=0"),
    ] {
        let e = Belt::open(&paths, c).err().unwrap().to_string();
        assert!(e.contains(needle), "{e}");
    }
    let mut a = Belt::open(&paths, cfg(4, 1, 0)).unwrap();
    let b = Belt::open(&other, cfg(4, 1, 0)).unwrap();
    let e = a.load_state(&b.state()).unwrap_err().to_string();
    assert!(e.contains("other data"), "{e}");
    let mut st = a.state();
    st.cursor.index = 10;
    assert!(a.load_state(&st).unwrap_err().to_string().contains("past the 10 documents"));
}

#[test]
fn mixture_follows_weights_and_resumes() {
    let dir = TempDir::new("mix");
    let (pa, _) = random_corpus(&dir, 1, 30, 1, 5, false);
    let dir_b = TempDir::new("mixb");
    let (pb, _) = random_corpus(&dir_b, 2, 30, 1, 5, false);
    let open = |p: &[std::path::PathBuf], pf| Arc::new(Mutex::new(Belt::open(p, cfg(4, 2, pf)).unwrap()));
    let mut mix = Mixture::new(vec![(open(&pa, 0), 0.7), (open(&pb, 1), 0.3)], 5).unwrap();
    let n = 4000;
    let picks: Vec<usize> = (0..n).map(|_| mix.next_batch().unwrap().0).collect();
    let share = picks.iter().filter(|&&i| i == 0).count() as f64 / n as f64;
    assert!((share - 0.7).abs() < 0.03, "share of belt 0 is {share}, weight 0.7");
    // Resume: a fresh mixture (other seed, prefetch depths) over fresh belts continues exactly.
    let st = mix.state().unwrap();
    let next: Vec<(usize, Vec<i64>)> = (0..50)
        .map(|_| {
            let (i, b) = mix.next_batch().unwrap();
            (i, b.ids)
        })
        .collect();
    let mut resumed = Mixture::new(vec![(open(&pa, 2), 0.7), (open(&pb, 0), 0.3)], 0).unwrap();
    resumed.load_state(&st).unwrap();
    let got: Vec<(usize, Vec<i64>)> = (0..50)
        .map(|_| {
            let (i, b) = resumed.next_batch().unwrap();
            (i, b.ids)
        })
        .collect();
    assert_eq!(got, next);
    // Errors: bad weight, mismatched shapes.
    assert!(Mixture::new(vec![(open(&pa, 0), 0.0)], 0).err().unwrap().to_string().contains("weight 0"));
    let wide = Arc::new(Mutex::new(Belt::open(&pb, cfg(8, 2, 0)).unwrap()));
    assert!(Mixture::new(vec![(open(&pa, 0), 1.0), (wide, 1.0)], 0).err().unwrap().to_string().contains("seq_len"));
}
