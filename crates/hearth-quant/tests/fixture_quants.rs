//! Bit-exactness against gguf-py, using shared/fixtures/components/gguf_quants.safetensors.

mod common;

use hearth_quant::{GgmlType, dequantize, quantize};
use safetensors::SafeTensors;

const TYPES: [&str; 10] = [
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
];
const GGUF_PY_QUANTIZED: [&str; 5] = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"];

struct Fixture {
    data: Vec<u8>,
    meta: serde_json::Value,
}

fn load() -> Fixture {
    let path = common::component_fixture("gguf_quants.safetensors");
    let json = common::component_fixture("gguf_quants.json");
    Fixture {
        data: std::fs::read(path).expect("read fixture"),
        meta: serde_json::from_slice(&std::fs::read(json).expect("read json")).expect("parse json"),
    }
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::U8, "{name}");
    t.data().to_vec()
}

#[test]
fn fixture_json_matches_type_table() {
    let fx = load();
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let m = &fx.meta[name];
        assert_eq!(m["block_size"].as_u64(), Some(ty.block_size() as u64), "{name}");
        assert_eq!(m["type_size"].as_u64(), Some(ty.type_size() as u64), "{name}");
    }
}

#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    let fx = load();
    let st = SafeTensors::deserialize(&fx.data).unwrap();
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let bytes = u8s(&st, &format!("{name}.bytes"));
        let want = f32s(&st, &format!("{name}.dequantized"));
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got).unwrap();
        let mismatches = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            mismatches,
            0,
            "{name}: {mismatches} of {} values differ in bits",
            want.len()
        );
        println!("{name}: {} values bit-exact", want.len());
    }
}

#[test]
fn legacy_quantize_matches_gguf_py_bytes() {
    let fx = load();
    let st = SafeTensors::deserialize(&fx.data).unwrap();
    let input = f32s(&st, "input");
    for name in GGUF_PY_QUANTIZED {
        assert_eq!(fx.meta[name]["bytes_from"], "gguf-py quantize", "{name}");
        let ty = GgmlType::from_name(name).unwrap();
        let want = u8s(&st, &format!("{name}.bytes"));
        let mut got = vec![0u8; want.len()];
        quantize(ty, &input, &mut got).unwrap();
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{name}: first differing byte");
    }
}

/// RMSE of our quantizers on the fixture input vs the error implied by the fixture
/// (gguf-py's own quantization for the legacy types). K-quant fixtures are random blocks,
/// so for those there is no implied error; their figures are reported and bounded.
#[test]
fn rmse_vs_fixture_implied_error() {
    let fx = load();
    let st = SafeTensors::deserialize(&fx.data).unwrap();
    let input = f32s(&st, "input");
    for name in GGUF_PY_QUANTIZED {
        let ty = GgmlType::from_name(name).unwrap();
        let reference = common::rmse(&input, &f32s(&st, &format!("{name}.dequantized")));
        let q = hearth_quant::quantize_to_vec(ty, &input).unwrap();
        let ours = common::rmse(&input, &hearth_quant::dequantize_to_vec(ty, &q).unwrap());
        println!(
            "{name}: rmse ours {ours:.6} fixture {reference:.6} ({:+.3}%)",
            100.0 * (ours / reference - 1.0)
        );
        assert!(ours <= reference * 1.02, "{name}: {ours} vs {reference}");
    }
    // rows 2.. hold plain N(0, 0.5²) data (row 0 has a zero block, row 1 a 40.0 outlier)
    let plain = &input[2 * 512..];
    let bounds = [
        (GgmlType::Q2_K, 0.33),
        (GgmlType::Q3_K, 0.17),
        (GgmlType::Q4_K, 0.08),
        (GgmlType::Q5_K, 0.04),
        (GgmlType::Q6_K, 0.02),
        (GgmlType::Q8_K, 0.008),
    ];
    for (ty, bound) in bounds {
        let rt = |x: &[f32]| {
            let q = hearth_quant::quantize_to_vec(ty, x).unwrap();
            common::rmse(x, &hearth_quant::dequantize_to_vec(ty, &q).unwrap())
        };
        let (all, rows) = (rt(&input), rt(plain));
        println!("{ty}: rmse on fixture input {all:.6} (rows 2..8: {rows:.6}, sigma 0.5)");
        assert!(rows < 0.5 * bound, "{ty}: {rows}");
    }
}

/// Our K-quant quantizers reproduce ggml's reference quantizers byte for byte on the
/// fixture input (reference bytes: tests/fixtures/llama_cpp_kquants, see its README).
#[test]
fn k_quants_match_llama_cpp_reference_bytes() {
    let fx = load();
    let st = SafeTensors::deserialize(&fx.data).unwrap();
    let input = f32s(&st, "input");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_cpp_kquants");
    for name in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"] {
        let ty = GgmlType::from_name(name).unwrap();
        let want = std::fs::read(dir.join(format!("{name}.bin"))).expect("reference bytes");
        let got = hearth_quant::quantize_to_vec(ty, &input).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let bad: Vec<usize> = got
            .chunks(ty.type_size())
            .zip(want.chunks(ty.type_size()))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        let ours = common::rmse(&input, &hearth_quant::dequantize_to_vec(ty, &got).unwrap());
        let reference = common::rmse(&input, &hearth_quant::dequantize_to_vec(ty, &want).unwrap());
        println!("{name}: rmse ours {ours:.6} llama.cpp {reference:.6}; differing blocks {bad:?}");
        assert!(ours <= reference * 1.02, "{name}: rmse {ours} vs llama.cpp {reference}");
        assert!(bad.is_empty(), "{name}: blocks {bad:?} differ from llama.cpp");
    }
}
