//! Token shards: one versioned file per (split, source) holding documents' tokens end to end.
//! `Shard` maps a file read-only and validates it before any token is read; `ShardWriter` writes
//! one in a single pass under a temporary name and renames it only when it is complete, so a
//! crashed writer never leaves a plausible-looking shard behind. Batching is not done here.
//!
//! Layout (integers little-endian):
//! ```text
//!   0  magic      8 bytes  b"SOSTOKEN"
//!   8  version    u32      1
//!  12  dtype      u32      bytes per token: 2 (uint16, vocab <= 65,535) or 4 (uint32)
//!  16  vocab_size u32
//!  20  eot_id     u32      the end-of-text token that closes each document
//!  24  n_tokens   u64
//!  32  n_docs     u64
//!  40  checksum   u32      CRC-32 (IEEE, as zlib) of the payload, then of this header with checksum 0
//!  44  reserved   20 bytes, zero
//!  64  tokens     n_tokens * dtype bytes, zero-padded to a multiple of 8
//!      doc_ends   n_docs * u64: exclusive end of each document, in tokens; non-decreasing; last = n_tokens
//! ```

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"SOSTOKEN";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;
/// Largest vocabulary stored as uint16 (SPEC §5).
pub const MAX_U16_VOCAB: u32 = 65_535;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype_bytes: u32,
    pub vocab_size: u32,
    pub eot_id: u32,
    pub n_tokens: u64,
    pub n_docs: u64,
    pub checksum: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.dtype_bytes.to_le_bytes());
        b[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.eot_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.n_tokens.to_le_bytes());
        b[32..40].copy_from_slice(&self.n_docs.to_le_bytes());
        b[40..44].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Parses and checks the fields that do not depend on the rest of the file.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_BYTES {
            return Err(Error::shard(
                path,
                format!("truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header", b.len()),
            ));
        }
        if b[0..8] != MAGIC {
            return Err(Error::shard(
                path,
                format!(
                    "bad magic {:?} (not a sos_rs token shard; expected {:?})",
                    String::from_utf8_lossy(&b[0..8]),
                    "SOSTOKEN"
                ),
            ));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(Error::shard(
                path,
                format!("unsupported version {version} (this build reads version {VERSION})"),
            ));
        }
        // Not covered by the checksum (computed over a re-encoded header), so checked here: a
        // damaged reserved area once loaded silently (found by fuzzing).
        if let Some(i) = b[44..HEADER_BYTES].iter().position(|&x| x != 0) {
            return Err(Error::shard(path, format!("corrupt header: reserved byte {} is not zero", 44 + i)));
        }
        let h = Header {
            dtype_bytes: u32_at(b, 12),
            vocab_size: u32_at(b, 16),
            eot_id: u32_at(b, 20),
            n_tokens: u64_at(b, 24),
            n_docs: u64_at(b, 32),
            checksum: u32_at(b, 40),
        };
        match h.dtype_bytes {
            2 if h.vocab_size > MAX_U16_VOCAB => {
                return Err(Error::shard(path, format!("dtype uint16 cannot hold vocabulary size {}", h.vocab_size)))
            }
            2 | 4 => {}
            d => {
                return Err(Error::shard(path, format!("bad token dtype code {d} (expected 2 = uint16 or 4 = uint32)")))
            }
        }
        if h.vocab_size == 0 || h.eot_id >= h.vocab_size {
            return Err(Error::shard(
                path,
                format!("end-of-text id {} is outside vocabulary size {}", h.eot_id, h.vocab_size),
            ));
        }
        Ok(h)
    }

    /// Bytes of the token area, padded to 8; None on overflow (a corrupt count).
    fn token_area(&self) -> Option<u64> {
        self.n_tokens.checked_mul(self.dtype_bytes as u64)?.checked_add(7).map(|x| x & !7)
    }

    /// The file length this header promises.
    pub fn file_len(&self) -> Option<u64> {
        self.token_area()?.checked_add(self.n_docs.checked_mul(8)?)?.checked_add(HEADER_BYTES as u64)
    }

    pub fn dtype_name(&self) -> &'static str {
        if self.dtype_bytes == 2 {
            "uint16"
        } else {
            "uint32"
        }
    }
}

/// The checksum stored in a header: CRC-32 over the payload, then over the header with 0 in
/// its checksum field (so the header's counts are covered too).
fn checksum(payload: &[u8], header: &Header) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(payload);
    h.update(&Header { checksum: 0, ..*header }.encode());
    h.finalize()
}

/// A validated, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    header: Header,
}

impl Shard {
    /// Maps and validates `path`. `verify` also checks the checksum and that every token is
    /// inside the vocabulary (one pass over the file); the layout and document table are
    /// always checked.
    pub fn open(path: &Path, verify: bool) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::shard(path, format!("cannot open: {e}")))?;
        let len = file.metadata().map_err(|e| Error::shard(path, format!("cannot stat: {e}")))?.len();
        if len < HEADER_BYTES as u64 {
            return Err(Error::shard(
                path,
                format!("truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header"),
            ));
        }
        // Another process truncating the file while it is mapped would fault on access; that is
        // the documented limit of mmap here.
        // SAFETY: the map is read-only and shards are immutable once written (the writer renames
        // a complete file into place and never reopens it).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::shard(path, format!("cannot map: {e}")))?;
        let header = Header::decode(path, &map)?;
        let want = header.file_len().ok_or_else(|| {
            Error::shard(
                path,
                format!(
                    "corrupt header: {} tokens and {} documents overflow a file size",
                    header.n_tokens, header.n_docs
                ),
            )
        })?;
        if len != want {
            let what = if len < want { "truncated" } else { "trailing bytes" };
            return Err(Error::shard(
                path,
                format!(
                    "{what}: the header promises {want} bytes ({} tokens, {} documents), the file has {len}",
                    header.n_tokens, header.n_docs
                ),
            ));
        }
        let shard = Shard { path: path.to_path_buf(), map, header };
        if verify {
            let stored = header.checksum;
            let got = checksum(&shard.map[HEADER_BYTES..], &header);
            if got != stored {
                return Err(Error::shard(
                    path,
                    format!("checksum mismatch: stored {stored:#010x}, computed {got:#010x} (the file is corrupt)"),
                ));
            }
            shard.check_token_range()?;
        }
        shard.check_doc_ends()?;
        Ok(shard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn token_bytes(&self) -> &[u8] {
        let n = self.header.n_tokens as usize * self.header.dtype_bytes as usize;
        &self.map[HEADER_BYTES..HEADER_BYTES + n]
    }

    /// Exclusive end of every document, in tokens.
    pub fn doc_ends(&self) -> impl Iterator<Item = u64> + '_ {
        let at = HEADER_BYTES + self.header.token_area().expect("checked at open") as usize;
        self.map[at..].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
    }

    fn check_doc_ends(&self) -> Result<()> {
        let (n, d) = (self.header.n_tokens, self.header.n_docs);
        let mut prev = 0u64;
        for (i, end) in self.doc_ends().enumerate() {
            if end < prev || end > n {
                return Err(Error::shard(
                    &self.path,
                    format!("document table corrupt: document {i} ends at {end}, after {prev}, with {n} tokens"),
                ));
            }
            prev = end;
        }
        if prev != n {
            return Err(Error::shard(
                &self.path,
                format!("document table corrupt: {d} documents cover {prev} of {n} tokens"),
            ));
        }
        Ok(())
    }

    fn check_token_range(&self) -> Result<()> {
        let v = self.header.vocab_size;
        let bad = match self.header.dtype_bytes {
            2 => {
                self.token_bytes().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).position(|t| t >= v)
            }
            _ => self
                .token_bytes()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .position(|t| t >= v),
        };
        match bad {
            Some(i) => Err(Error::shard(
                &self.path,
                format!("token {} at index {i} is outside vocabulary size {v}", self.token(i as u64)),
            )),
            None => Ok(()),
        }
    }

    pub fn token(&self, i: u64) -> u32 {
        let mut one = [0u32];
        self.copy_tokens(i, &mut one);
        one[0]
    }

    /// dst = tokens [start, start + dst.len()). The caller keeps the range inside the shard.
    pub fn copy_tokens(&self, start: u64, dst: &mut [u32]) {
        let w = self.header.dtype_bytes as usize;
        let src = &self.token_bytes()[start as usize * w..(start as usize + dst.len()) * w];
        if w == 2 {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = u16::from_le_bytes([c[0], c[1]]) as u32;
            }
        } else {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }
}

/// Writes one shard: documents are appended in order, then `finish` writes the document table
/// and the header and renames `<path>.tmp` to `path`. Dropped unfinished, it deletes the
/// temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    header: Header,
    doc_ends: Vec<u64>,
    buf: Vec<u8>,
}

impl ShardWriter {
    /// Tokens are uint16 when `vocab_size` <= 65,535, else uint32.
    pub fn create(path: &Path, vocab_size: u32, eot_id: u32) -> Result<ShardWriter> {
        if vocab_size == 0 || eot_id >= vocab_size {
            return Err(Error::value(
                "ShardWriter",
                format!("end-of-text id {eot_id} is outside vocabulary size {vocab_size}"),
            ));
        }
        let dtype_bytes = if vocab_size <= MAX_U16_VOCAB { 2 } else { 4 };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| Error::shard(&tmp, format!("cannot create: {e}")))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER_BYTES]).map_err(|e| Error::shard(&tmp, format!("cannot write: {e}")))?;
        let header = Header { dtype_bytes, vocab_size, eot_id, n_tokens: 0, n_docs: 0, checksum: 0 };
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            crc: crc32fast::Hasher::new(),
            header,
            doc_ends: Vec::new(),
            buf: Vec::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        let out = self.out.as_mut().ok_or_else(|| Error::value("ShardWriter", "the shard is already finished"))?;
        out.write_all(bytes).map_err(|e| Error::shard(&self.tmp, format!("cannot write: {e}")))
    }

    /// Appends documents given end to end in `tokens`, with their lengths in `lengths`.
    /// Nothing is written unless every id is inside the vocabulary and the lengths add up.
    pub fn push_documents(&mut self, tokens: &[u32], lengths: &[u64]) -> Result<()> {
        let total: u64 = lengths.iter().sum();
        if total != tokens.len() as u64 {
            return Err(Error::value(
                "ShardWriter",
                format!("document lengths add up to {total}, but {} tokens were given", tokens.len()),
            ));
        }
        crate::ops::embedding::check_ids("ShardWriter", tokens, self.header.vocab_size as usize)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if self.header.dtype_bytes == 2 {
            buf.extend(tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()));
        } else {
            buf.extend(tokens.iter().flat_map(|&t| t.to_le_bytes()));
        }
        let written = self.write(&buf);
        self.buf = buf;
        written?;
        for &n in lengths {
            self.header.n_tokens += n;
            self.doc_ends.push(self.header.n_tokens);
        }
        self.header.n_docs = self.doc_ends.len() as u64;
        Ok(())
    }

    /// Writes the document table and header, syncs, and moves the file into place.
    pub fn finish(mut self) -> Result<Header> {
        let done = self.finish_inner();
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }

    fn finish_inner(&mut self) -> Result<Header> {
        let pad = (8 - (self.header.n_tokens * self.header.dtype_bytes as u64) % 8) % 8;
        self.write(&vec![0u8; pad as usize])?;
        let table: Vec<u8> = self.doc_ends.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.write(&table)?;
        let mut crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new());
        crc.update(&Header { checksum: 0, ..self.header }.encode());
        self.header.checksum = crc.finalize();
        let tmp = self.tmp.clone();
        let io = |e: std::io::Error| Error::shard(&tmp, format!("cannot write: {e}"));
        let out = self.out.take().ok_or_else(|| Error::value("ShardWriter", "the shard is already finished"))?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.encode()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::shard(&self.path, format!("cannot rename {} into place: {e}", self.tmp.display())))?;
        Ok(self.header)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp); // unfinished: leave nothing that looks like a shard
        }
    }
}
