//! GGUF reading of a gguf-py file, and writer → reader round trips.

use hearth_quant::gguf::{GgufFile, GgufInfo, GgufWriter, MetadataArray, MetadataValue};
use hearth_quant::{GgmlType, quantize_to_vec};
use serde_json::Value;

fn tiny_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json_matches(v: &MetadataValue, want: &Value) -> bool {
    use MetadataValue as M;
    match v {
        M::String(s) => want.as_str() == Some(s),
        M::Bool(b) => want.as_bool() == Some(*b),
        M::F32(x) => want.as_f64() == Some(f64::from(*x)),
        M::F64(x) => want.as_f64() == Some(*x),
        M::Array(a) => array_matches(a, want),
        _ => match (v.as_u64(), want.as_u64()) {
            (Some(a), Some(b)) => a == b,
            _ => int_of(v) == want.as_i64(),
        },
    }
}

fn int_of(v: &MetadataValue) -> Option<i64> {
    match *v {
        MetadataValue::I8(x) => Some(x.into()),
        MetadataValue::I16(x) => Some(x.into()),
        MetadataValue::I32(x) => Some(x.into()),
        MetadataValue::I64(x) => Some(x),
        _ => v.as_u64().and_then(|u| i64::try_from(u).ok()),
    }
}

fn array_matches(a: &MetadataArray, want: &Value) -> bool {
    let Some(w) = want.as_array() else {
        return false;
    };
    a.len() == w.len()
        && match a {
            MetadataArray::String(v) => v.iter().zip(w).all(|(s, j)| j.as_str() == Some(s)),
            MetadataArray::F32(v) => v.iter().zip(w).all(|(x, j)| j.as_f64() == Some(f64::from(*x))),
            MetadataArray::I32(v) => v.iter().zip(w).all(|(x, j)| j.as_i64() == Some(i64::from(*x))),
            MetadataArray::Array(v) => v.iter().zip(w).all(|(x, j)| array_matches(x, j)),
            other => panic!("unexpected array type {:?}", other.element_type()),
        }
}

#[test]
fn reads_file_written_by_gguf_py() {
    let dir = tiny_dir();
    let expected: Value = serde_json::from_slice(&std::fs::read(dir.join("tiny.json")).unwrap()).unwrap();
    let file = GgufFile::open(dir.join("tiny.gguf")).unwrap();
    let info = file.info();
    assert_eq!(info.version, 3);
    assert_eq!(info.alignment, 32);

    let want_meta = expected["metadata"].as_object().unwrap();
    assert_eq!(info.metadata.len(), want_meta.len());
    for (k, want) in want_meta {
        let v = file.get(k).unwrap_or_else(|| panic!("missing key {k}"));
        assert!(json_matches(v, want), "{k}: {v:?} vs {want}");
    }
    // value types as gguf-py writes them
    assert!(matches!(file.get("tiny.i8"), Some(MetadataValue::I8(-5))));
    assert!(matches!(file.get("tiny.u16"), Some(MetadataValue::U16(65535))));
    assert!(matches!(file.get("tiny.block_count"), Some(MetadataValue::U32(2))));
    assert!(matches!(file.get("tiny.u64"), Some(MetadataValue::U64(_))));
    assert!(matches!(file.get("tiny.f64"), Some(MetadataValue::F64(_))));
    assert_eq!(
        file.get("tiny.nested").unwrap().as_array().unwrap().element_type(),
        hearth_quant::gguf::ValueType::Array
    );

    let want_tensors = expected["tensors"].as_object().unwrap();
    assert_eq!(info.tensors.len(), want_tensors.len());
    for (name, want) in want_tensors {
        let t = file.tensor(name).unwrap_or_else(|| panic!("missing tensor {name}"));
        assert_eq!(t.info.ty.name(), want["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.info.dims, dims, "{name}");
        assert_eq!(t.info.offset % 32, 0);
        let values = t.dequantize().unwrap();
        let want_values: Vec<f32> = want["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(values, want_values, "{name}");
    }
    // tensor data lies inside the mapped file, at data_offset + offset
    let q8 = file.tensor("q8_0_2x64").unwrap();
    let start = (info.data_offset + q8.info.offset) as usize;
    assert_eq!(q8.info.size, 2 * 2 * 34);
    assert_eq!(q8.data, &file.as_bytes()[start..start + 136]);
}

fn sample_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("u8", 7u8).unwrap();
    w.add_metadata("i8", -7i8).unwrap();
    w.add_metadata("u16", 700u16).unwrap();
    w.add_metadata("i16", -700i16).unwrap();
    w.add_metadata("u32", 70000u32).unwrap();
    w.add_metadata("i32", -70000i32).unwrap();
    w.add_metadata("f32", 1.5f32).unwrap();
    w.add_metadata("bool", true).unwrap();
    w.add_metadata("u64", u64::MAX).unwrap();
    w.add_metadata("i64", i64::MIN).unwrap();
    w.add_metadata("f64", -0.1f64).unwrap();
    w.add_metadata("empty", MetadataArray::F32(vec![])).unwrap();
    w.add_metadata("bools", MetadataArray::Bool(vec![true, false])).unwrap();
    w.add_metadata("u64s", MetadataArray::U64(vec![1, u64::MAX])).unwrap();
    w.add_metadata("strs", MetadataArray::String(vec!["".into(), "ünï".into()]))
        .unwrap();
    w.add_metadata(
        "nested",
        MetadataArray::Array(vec![
            MetadataArray::I16(vec![-1, 2]),
            MetadataArray::Array(vec![MetadataArray::U8(vec![9])]),
        ]),
    )
    .unwrap();
    let x: Vec<f32> = (0..512).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    for (name, ty, dims) in [
        ("f32", GgmlType::F32, vec![512]),
        ("f16", GgmlType::F16, vec![256, 2]),
        ("q4_k", GgmlType::Q4_K, vec![256, 2]),
        ("q5_0", GgmlType::Q5_0, vec![32, 4, 2, 2]),
        ("q6_k", GgmlType::Q6_K, vec![512, 1, 1]),
    ] {
        w.add_tensor(name, ty, &dims, quantize_to_vec(ty, &x).unwrap()).unwrap();
    }
    w.add_tensor("empty", GgmlType::F32, &[0], Vec::new()).unwrap();
    w
}

#[test]
fn writer_output_reads_back() {
    let w = sample_writer();
    let bytes = w.to_bytes().unwrap();
    let file = GgufFile::from_bytes(bytes.clone()).unwrap();
    let info = file.info();
    assert_eq!(info.metadata.len(), 17);
    assert_eq!(file.get("u64"), Some(&MetadataValue::U64(u64::MAX)));
    assert_eq!(file.get("i64"), Some(&MetadataValue::I64(i64::MIN)));
    assert_eq!(file.get("f64"), Some(&MetadataValue::F64(-0.1)));
    assert_eq!(file.get("bool"), Some(&MetadataValue::Bool(true)));
    assert_eq!(
        file.get("nested"),
        Some(&MetadataValue::Array(MetadataArray::Array(vec![
            MetadataArray::I16(vec![-1, 2]),
            MetadataArray::Array(vec![MetadataArray::U8(vec![9])])
        ])))
    );
    assert_eq!(
        file.get("empty"),
        Some(&MetadataValue::Array(MetadataArray::F32(vec![])))
    );
    assert_eq!(info.data_offset % 32, 0);
    let x: Vec<f32> = (0..512).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    for t in file.tensors() {
        assert_eq!(t.info.offset % 32, 0, "{}", t.info.name);
        if t.info.name == "empty" {
            assert!(t.data.is_empty());
            continue;
        }
        assert_eq!(t.data, quantize_to_vec(t.info.ty, &x).unwrap(), "{}", t.info.name);
    }
    assert_eq!(file.tensor("q5_0").unwrap().info.dims, vec![32, 4, 2, 2]);
    // writing again gives the same bytes; the file length is what write_to reported
    let mut again = Vec::new();
    assert_eq!(w.write_to(&mut again).unwrap(), bytes.len() as u64);
    assert_eq!(again, bytes);
}

#[test]
fn custom_alignment_round_trip_via_file() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", 64u32).unwrap();
    w.add_tensor("a", GgmlType::I8, &[3], vec![1u8, 2, 3]).unwrap();
    w.add_tensor("b", GgmlType::I8, &[1], vec![4u8]).unwrap();
    let path = std::env::temp_dir().join(format!("hearth-quant-align-{}.gguf", std::process::id()));
    w.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.info().alignment, 64);
    assert_eq!(file.info().data_offset % 64, 0);
    assert_eq!(file.tensor("b").unwrap().info.offset, 64);
    assert_eq!(file.tensor("b").unwrap().data, &[4]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    assert!(
        w.add_tensor("five", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4])
            .is_err()
    );
    assert!(w.add_tensor("short", GgmlType::Q8_0, &[64], vec![0u8; 67]).is_err());
    w.add_tensor("ok", GgmlType::Q8_0, &[64], vec![0u8; 68]).unwrap();
    assert!(w.add_tensor("ok", GgmlType::Q8_0, &[64], vec![0u8; 68]).is_err());
    assert!(GgufInfo::parse(&w.to_bytes().unwrap()).is_ok());
}
