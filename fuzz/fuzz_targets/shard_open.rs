//! Shard::open on a file of arbitrary bytes, with and without `verify`: an error naming the file,
//! or a shard whose every document and token can then be read without a panic. Half the inputs
//! start from a valid shard with the fuzzer's bytes patched in, so the checks past the header
//! (sizes, document table, checksum, token range) are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sos_rs::belt::{Shard, ShardWriter, HEADER_BYTES};
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let d = base.join(format!("sos_fuzz_shard_{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn valid(vocab: u32) -> Vec<u8> {
    let p = dir().join(format!("valid_{vocab}.sos"));
    if !p.exists() {
        let mut w = ShardWriter::create(&p, vocab, 0).unwrap();
        let toks: Vec<u32> = (0..40u32).map(|i| if i % 7 == 6 { 0 } else { 1 + i % (vocab - 1) }).collect();
        w.push_documents(&toks, &[7, 7, 7, 7, 7, 5]).unwrap();
        w.finish().unwrap();
    }
    std::fs::read(p).unwrap()
}

fn exercise(s: &Shard) {
    let h = *s.header();
    let ends: Vec<u64> = s.doc_ends().collect();
    assert_eq!(ends.len() as u64, h.n_docs);
    let mut start = 0;
    for e in ends {
        let mut dst = vec![0u32; (e - start) as usize];
        s.copy_tokens(start, &mut dst);
        start = e;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 {
        // A valid shard (u16 or u32 tokens) with a patch: [offset lo, offset hi, bytes...].
        let mut b = valid(if mode & 2 == 2 { 70_000 } else { 300 });
        if rest.len() >= 2 {
            let at = u16::from_le_bytes([rest[0], rest[1]]) as usize % (b.len() + 1);
            for (i, &x) in rest[2..].iter().enumerate() {
                match b.get_mut(at + i) {
                    Some(y) => *y = x,
                    None => b.push(x),
                }
            }
            if mode & 4 == 4 {
                b.truncate(at.max(HEADER_BYTES / 2));
            }
        }
        b
    } else {
        rest.to_vec()
    };
    let p = dir().join("in.sos");
    std::fs::write(&p, &bytes).unwrap();
    for verify in [false, true] {
        match Shard::open(&p, verify) {
            Ok(s) => exercise(&s),
            Err(e) => assert!(e.to_string().contains("in.sos"), "error names the file: {e}"),
        }
    }
});
