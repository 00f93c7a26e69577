//! Fuzz target: the GGUF parser must return Ok or a typed error for any input, and
//! every tensor of an accepted file must be readable and dequantizable.
//!
//! Run with `cargo +nightly fuzz run gguf_parse` from `crates/hearth-quant`.
#![no_main]

use hearth_quant::gguf::{GgufFile, GgufInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if GgufInfo::parse(data).is_ok() {
        let file = GgufFile::from_bytes(data.to_vec()).expect("parse is deterministic");
        for t in file.tensors() {
            assert_eq!(t.data.len() as u64, t.info.size);
            if t.info.ty.can_dequantize() {
                t.dequantize().expect("validated tensor dequantizes");
            }
        }
    }
});
