//! Belt::load_state with arbitrary states on a fixed valid corpus: refused with an error, or
//! accepted and then the next batches come out whole, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sos_rs::belt::{Belt, BeltConfig, BeltState, Cursor, ShardWriter};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

fn belt() -> &'static Mutex<Belt> {
    static B: OnceLock<Mutex<Belt>> = OnceLock::new();
    B.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sos_fuzz_belt_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p: PathBuf = d.join("a.sos");
        let mut w = ShardWriter::create(&p, 50, 0).unwrap();
        let lens = [3u64, 9, 1, 17, 4, 30, 2, 8];
        let toks: Vec<u32> =
            lens.iter().flat_map(|&l| (0..l).map(move |i| if i + 1 == l { 0 } else { 1 + (i as u32 % 49) })).collect();
        w.push_documents(&toks, &lens).unwrap();
        w.finish().unwrap();
        let mut cfg = BeltConfig::new(5, 2);
        cfg.prefetch = 0;
        Mutex::new(Belt::open(&[p], cfg).unwrap())
    })
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut b = belt().lock().unwrap();
    let real = b.state();
    let flags = data.first().copied().unwrap_or(0);
    let small = |v: u64| if flags & 0x40 != 0 { v } else { v % 64 };
    let st = BeltState {
        seed: u64_at(data, 1),
        shuffle: flags & 1 == 1,
        cursor: Cursor { epoch: small(u64_at(data, 2)), index: small(u64_at(data, 3)), offset: small(u64_at(data, 4)) },
        batches: u64_at(data, 5),
        // Mostly the corpus's own identity, so the cursor checks are reached.
        n_docs: if flags & 2 == 0 { real.n_docs } else { u64_at(data, 6) },
        n_tokens: if flags & 4 == 0 { real.n_tokens } else { u64_at(data, 7) },
        fingerprint: if flags & 8 == 0 { real.fingerprint } else { u64_at(data, 8) as u32 },
    };
    if b.load_state(&st).is_ok() {
        for _ in 0..3 {
            let batch = b.next_batch().expect("a belt that accepted a state makes batches");
            let _ = batch;
        }
    }
    b.load_state(&real).unwrap();
});
