//! Malformed GGUF files must give typed errors naming the field or tensor, never a panic
//! or an allocation sized by an untrusted count.

use hearth_quant::GgmlType;
use hearth_quant::gguf::{GgufError, GgufFile, GgufInfo, GgufWriter};

/// Hand-assembles GGUF bytes so each field can be corrupted precisely.
#[derive(Default)]
struct Raw {
    b: Vec<u8>,
}

impl Raw {
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw::default();
        r.b.extend_from_slice(b"GGUF");
        r.u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.b.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> &mut Self {
        let padded = self.b.len().div_ceil(32) * 32;
        self.b.resize(padded + n, 0xab);
        self
    }
    fn parse(&self) -> Result<GgufInfo, GgufError> {
        GgufInfo::parse(&self.b)
    }
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", "x").unwrap();
    w.add_metadata(
        "tok",
        hearth_quant::gguf::MetadataArray::String(vec!["a".into(), "bc".into()]),
    )
    .unwrap();
    w.add_tensor("a", GgmlType::F32, &[4, 2], vec![1u8; 32]).unwrap();
    w.add_tensor("b", GgmlType::Q8_0, &[32], vec![2u8; 34]).unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn control_valid_file_parses() {
    let info = Raw::header(1, 1)
        .kv_u32("k", 7)
        .tensor("t", &[8], 0, 0)
        .data(32)
        .parse()
        .unwrap();
    assert_eq!(info.tensors[0].size, 32);
    assert!(GgufInfo::parse(&valid_file()).is_ok());
}

#[test]
fn bad_magic() {
    let mut b = valid_file();
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(GgufInfo::parse(&b), Err(GgufError::BadMagic(m)) if &m == b"GGML"));
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 0x0300_0000] {
        let mut b = valid_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(
            matches!(GgufInfo::parse(&b), Err(GgufError::UnsupportedVersion(x)) if x == v),
            "{v}"
        );
    }
    let mut b = valid_file();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufInfo::parse(&b).unwrap().version, 2);
}

#[test]
fn every_truncation_is_an_error() {
    let b = valid_file();
    let info = GgufInfo::parse(&b).unwrap();
    let data_end = info.data_offset + info.tensors.iter().map(|t| t.offset + t.size).max().unwrap();
    // only the final tensor's padding may be cut
    assert!(GgufInfo::parse(&b[..data_end as usize]).is_ok());
    for len in 0..data_end as usize {
        let err = GgufInfo::parse(&b[..len]).expect_err(&format!("prefix of {len} bytes parsed"));
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. } | GgufError::CountTooLarge { .. } | GgufError::TensorOutOfBounds { .. }
            ),
            "len {len}: {err}"
        );
    }
    let err = GgufInfo::parse(&b[..10]).unwrap_err();
    assert!(
        matches!(&err, GgufError::Truncated { field, .. } if field == "tensor_count"),
        "{err}"
    );
}

#[test]
fn counts_past_the_end() {
    for count in [u64::MAX, 1 << 40, 1000] {
        let err = Raw::header(0, count).parse().unwrap_err();
        assert!(
            matches!(&err, GgufError::CountTooLarge { field, count: c, .. } if field == "metadata_kv_count" && *c == count),
            "{err}"
        );
        let err = Raw::header(count, 0).parse().unwrap_err();
        assert!(
            matches!(&err, GgufError::CountTooLarge { field, .. } if field == "tensor_count"),
            "{err}"
        );
    }
}

#[test]
fn huge_string_length() {
    // key length
    let mut r = Raw::header(0, 1);
    r.u64(u64::MAX - 3).u64(0);
    let err = r.parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::CountTooLarge { field, .. } if field == "kv[0] key"),
        "{err}"
    );
    // string value length
    let mut r = Raw::header(0, 1);
    r.str("general.name").u32(8).u64(1 << 62).u64(0);
    let err = r.parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::CountTooLarge { field, .. } if field.contains("general.name")),
        "{err}"
    );
    // tensor name length
    let mut r = Raw::header(1, 0);
    r.u64(1 << 50).u64(0).u64(0).u64(0);
    let err = r.parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::CountTooLarge { field, .. } if field == "tensor[0] name"),
        "{err}"
    );
}

#[test]
fn huge_array_counts() {
    for elem_ty in [0u32, 6, 8, 9, 12] {
        let mut r = Raw::header(0, 1);
        r.str("arr").u32(9).u32(elem_ty).u64(u64::MAX / 2).u64(0);
        let err = r.parse().unwrap_err();
        assert!(
            matches!(&err, GgufError::CountTooLarge { field, .. } if field.contains("\"arr\"")),
            "{elem_ty}: {err}"
        );
    }
}

#[test]
fn deeply_nested_arrays() {
    let mut r = Raw::header(0, 1);
    r.str("deep").u32(9);
    for _ in 0..10_000 {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(0);
    let err = r.parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::NestingTooDeep { field, .. } if field.contains("deep")),
        "{err}"
    );
}

#[test]
fn unknown_value_type() {
    let mut r = Raw::header(0, 1);
    r.str("k").u32(13).u64(0);
    let err = r.parse().unwrap_err();
    assert!(matches!(err, GgufError::InvalidValueType { id: 13, .. }), "{err}");
}

#[test]
fn invalid_bool_and_utf8() {
    let mut r = Raw::header(0, 1);
    r.str("flag").u32(7);
    r.b.push(2);
    assert!(matches!(r.parse(), Err(GgufError::InvalidBool { value: 2, .. })));
    let mut r = Raw::header(0, 1);
    r.u64(2);
    r.b.extend_from_slice(&[0xff, 0xfe]);
    r.u32(4).u32(0);
    assert!(matches!(r.parse(), Err(GgufError::InvalidUtf8 { field }) if field == "kv[0] key"));
}

#[test]
fn duplicate_key_and_tensor() {
    let err = Raw::header(0, 2).kv_u32("k", 1).kv_u32("k", 2).parse().unwrap_err();
    assert!(matches!(&err, GgufError::DuplicateKey(k) if k == "k"), "{err}");
    let err = Raw::header(2, 0)
        .tensor("t", &[8], 0, 0)
        .tensor("t", &[8], 0, 32)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(matches!(&err, GgufError::DuplicateTensor(t) if t == "t"), "{err}");
}

#[test]
fn unknown_tensor_type_id() {
    for id in [4u32, 5, 31, 38, 1000] {
        let err = Raw::header(1, 0)
            .tensor("w", &[32], id, 0)
            .data(64)
            .parse()
            .unwrap_err();
        assert!(
            matches!(&err, GgufError::UnknownType { tensor, id: i } if tensor == "w" && *i == id),
            "{id}: {err}"
        );
    }
}

#[test]
fn too_many_dims() {
    let err = Raw::header(1, 0)
        .tensor("w5", &[1, 1, 1, 1, 1], 0, 0)
        .data(4)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&err, GgufError::TooManyDims { tensor, n_dims: 5 } if tensor == "w5"),
        "{err}"
    );
    // a huge n_dims is rejected before any dims are read
    let mut r = Raw::header(1, 0);
    r.str("big").u32(u32::MAX).u64(0).u64(0);
    assert!(matches!(r.parse(), Err(GgufError::TooManyDims { .. })));
    // 4 is fine
    assert!(
        Raw::header(1, 0)
            .tensor("w4", &[1, 1, 1, 2], 0, 0)
            .data(8)
            .parse()
            .is_ok()
    );
}

#[test]
fn overlapping_tensor_data() {
    let err = Raw::header(2, 0)
        .tensor("first", &[16], 0, 0) // [0, 64)
        .tensor("second", &[8], 0, 32) // [32, 64)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorOverlap { first, second } if first == "first" && second == "second"),
        "{err}"
    );
    // same offset, declared in the other order
    let err = Raw::header(2, 0)
        .tensor("a", &[8], 0, 32)
        .tensor("b", &[16], 0, 0)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(matches!(err, GgufError::TensorOverlap { .. }), "{err}");
}

#[test]
fn tensor_data_past_the_end() {
    let err = Raw::header(1, 0).tensor("w", &[16], 0, 0).data(63).parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { tensor, size: 64, data_len: 63, .. } if tensor == "w"),
        "{err}"
    );
    let err = Raw::header(1, 0)
        .tensor("w", &[1], 0, u64::MAX - 31)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
}

#[test]
fn misaligned_offset() {
    let err = Raw::header(1, 0).tensor("w", &[1], 0, 4).data(64).parse().unwrap_err();
    assert!(
        matches!(&err, GgufError::MisalignedTensor { tensor, offset: 4, alignment: 32 } if tensor == "w"),
        "{err}"
    );
}

#[test]
fn bad_shapes() {
    let err = Raw::header(1, 0)
        .tensor("q", &[33], GgmlType::Q8_0.id(), 0)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&err, GgufError::InvalidShape { tensor, .. } if tensor == "q"),
        "{err}"
    );
    let err = Raw::header(1, 0)
        .tensor("big", &[1 << 40, 1 << 40], 0, 0)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&err, GgufError::InvalidShape { tensor, .. } if tensor == "big"),
        "{err}"
    );
    let err = Raw::header(1, 0)
        .tensor("big", &[1 << 62], 0, 0)
        .data(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::InvalidShape { .. } | GgufError::TensorOutOfBounds { .. }
        ),
        "{err}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let err = Raw::header(0, 1).kv_u32("general.alignment", a).parse().unwrap_err();
        assert!(matches!(err, GgufError::InvalidAlignment(_)), "{a}: {err}");
    }
    // wrong value type (u64)
    let err = Raw::header(0, 1)
        .str("general.alignment")
        .u32(10)
        .u64(64)
        .parse()
        .unwrap_err();
    assert!(matches!(err, GgufError::InvalidAlignment(_)), "{err}");
    // a valid custom alignment moves the data section
    let info = Raw::header(0, 1).kv_u32("general.alignment", 64).parse().unwrap();
    assert_eq!((info.alignment, info.data_offset), (64, 64));
}

#[test]
fn file_api_reports_errors_too() {
    let dir = std::env::temp_dir().join(format!("hearth-quant-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.gguf");
    let mut b = valid_file();
    let info = GgufInfo::parse(&b).unwrap();
    let last = info.tensors.last().unwrap();
    b.truncate((info.data_offset + last.offset + last.size - 1) as usize);
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.join("missing.gguf")),
        Err(GgufError::Io(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
