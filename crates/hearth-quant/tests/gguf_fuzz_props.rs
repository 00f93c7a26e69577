//! The parser never panics on random or mutated input (a stable-Rust stand-in for the
//! cargo-fuzz target in fuzz/).

use hearth_quant::GgmlType;
use hearth_quant::gguf::{GgufFile, GgufInfo, GgufWriter, MetadataArray};
use proptest::prelude::*;

fn seed_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", "seed").unwrap();
    w.add_metadata("n", 3u32).unwrap();
    w.add_metadata("toks", MetadataArray::String(vec!["a".into(), "b".into()]))
        .unwrap();
    w.add_metadata("nested", MetadataArray::Array(vec![MetadataArray::F32(vec![1.0])]))
        .unwrap();
    w.add_tensor("w", GgmlType::Q8_0, &[32, 2], vec![0u8; 68]).unwrap();
    w.add_tensor("b", GgmlType::F32, &[4], vec![0u8; 16]).unwrap();
    w.to_bytes().unwrap()
}

/// Parses and, if that succeeds, touches every tensor the way a loader would.
fn exercise(bytes: Vec<u8>) {
    if let Ok(info) = GgufInfo::parse(&bytes) {
        for t in &info.tensors {
            let end = info.data_offset + t.offset + t.size;
            assert!(t.size == 0 || end <= bytes.len() as u64, "{} escapes the file", t.name);
        }
        let file = GgufFile::from_bytes(bytes).expect("parse is deterministic");
        for t in file.tensors() {
            assert_eq!(t.data.len() as u64, t.info.size);
            if t.info.ty.can_dequantize() {
                t.dequantize().expect("validated tensors dequantize");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), gguf_prefix in any::<bool>()) {
        if gguf_prefix && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(b"GGUF\x03\0\0\0");
        }
        exercise(bytes);
    }

    #[test]
    fn mutated_valid_file_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        words in proptest::collection::vec((any::<prop::sample::Index>(), prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 40), 0u64..64]), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut b = seed_file();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        for (i, w) in words {
            let i = i.index(b.len() - 8);
            b[i..i + 8].copy_from_slice(&w.to_le_bytes());
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        exercise(b);
    }
}
