//! Header::decode on arbitrary bytes: an error or a header whose sizes do not overflow, never a
//! panic; a decoded header re-encodes to the bytes it came from.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sos_rs::belt::{Header, HEADER_BYTES};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(Path::new("fuzz.sos"), data) {
        let _ = h.file_len();
        let _ = h.dtype_name();
        let again = h.encode();
        assert_eq!(&again[..], &data[..HEADER_BYTES], "decode/encode round trip");
    }
});
