//! Quantizer quality and API behaviour on synthetic data.

mod common;

use hearth_quant::{GgmlType, QuantError, dequantize, dequantize_to_vec, quantize, quantize_to_vec};

const ALL_CODECS: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    dequantize_to_vec(ty, &quantize_to_vec(ty, x).unwrap()).unwrap()
}

/// RMSE / sigma on N(0, 1) data, with upper bounds a little above llama.cpp's figures
/// for its reference (no imatrix) quantizers.
#[test]
fn rmse_on_normal_data() {
    let x = common::normal_samples(256 * 256, 42);
    let bounds = [
        (GgmlType::Q2_K, 0.40),
        (GgmlType::Q3_K, 0.22),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q4_1, 0.15),
        (GgmlType::Q4_K, 0.10),
        (GgmlType::Q5_0, 0.075),
        (GgmlType::Q5_1, 0.075),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q6_K, 0.025),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_K, 0.01),
        (GgmlType::BF16, 0.003),
        (GgmlType::F16, 0.0005),
    ];
    let mut rmse = std::collections::HashMap::new();
    for (ty, bound) in bounds {
        let e = common::rmse(&x, &round_trip(ty, &x));
        println!("{ty:>5}: rmse/sigma {e:.6} (bound {bound})");
        assert!(e < bound, "{ty}: rmse {e} >= {bound}");
        rmse.insert(ty, e);
    }
    use GgmlType::*;
    for pair in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K].windows(2) {
        assert!(
            rmse[&pair[0]] > rmse[&pair[1]],
            "{:?} should be worse than {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(rmse[&Q4_K] < rmse[&Q4_1] && rmse[&Q4_K] < rmse[&Q4_0]);
    assert!(rmse[&Q5_K] < rmse[&Q5_1] && rmse[&Q5_K] < rmse[&Q5_0]);
    assert!(rmse[&Q6_K] < rmse[&Q5_K]);
}

/// llama.cpp's test-quantize-fns check: data `0.1 + 2cos(i)`, error `sqrt(Σd²)/n` below
/// 0.002 (0.004 for 3-bit, 0.0075 for 2-bit).
#[test]
fn llama_cpp_quantize_fns_thresholds() {
    let n = 32 * 128;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    for ty in ALL_CODECS {
        let y = round_trip(ty, &x);
        let sum: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let err = sum.sqrt() / n as f64;
        let max = match ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        };
        println!("{ty:>5}: total error {err:.6} (max {max})");
        assert!(err < max, "{ty}: {err}");
    }
}

#[test]
fn zero_and_constant_blocks_round_trip() {
    for ty in ALL_CODECS {
        let n = ty.block_size().max(256);
        let zeros = vec![0f32; n];
        assert_eq!(round_trip(ty, &zeros), zeros, "{ty}: zeros");
        let c = vec![0.75f32; n];
        let y = round_trip(ty, &c);
        let e = common::rmse(&c, &y);
        assert!(e < 0.1, "{ty}: constant block rmse {e}");
    }
}

#[test]
fn dequant_of_quant_is_a_fixed_point_for_q8() {
    // requantizing an already-quantized Q8_0 tensor reproduces the same bytes
    let x = common::normal_samples(1024, 7);
    let q1 = quantize_to_vec(GgmlType::Q8_0, &x).unwrap();
    let y = dequantize_to_vec(GgmlType::Q8_0, &q1).unwrap();
    let q2 = quantize_to_vec(GgmlType::Q8_0, &y).unwrap();
    assert_eq!(q1, q2);
}

#[test]
fn q8_k_block_sums_are_stored() {
    let x = common::normal_samples(256, 3);
    let q = quantize_to_vec(GgmlType::Q8_K, &x).unwrap();
    for j in 0..16 {
        let sum: i32 = q[4 + 16 * j..4 + 16 * (j + 1)].iter().map(|&b| b as i8 as i32).sum();
        let stored = i16::from_le_bytes([q[260 + 2 * j], q[261 + 2 * j]]);
        assert_eq!(sum, stored as i32, "bsum {j}");
    }
}

#[test]
fn wrong_lengths_are_typed_errors() {
    let mut out = vec![0f32; 32];
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::BytesNotBlockMultiple {
            ty: GgmlType::Q4_0,
            len: 17,
            type_size: 18
        })
    );
    assert_eq!(
        dequantize(GgmlType::Q4_0, &[0u8; 36], &mut out),
        Err(QuantError::OutputLength {
            ty: GgmlType::Q4_0,
            expected: 64,
            got: 32,
            unit: "elements"
        })
    );
    assert_eq!(
        quantize(GgmlType::Q6_K, &[0f32; 100], &mut [0u8; 210]),
        Err(QuantError::ElementsNotBlockMultiple {
            ty: GgmlType::Q6_K,
            len: 100,
            block_size: 256
        })
    );
    assert_eq!(
        quantize(GgmlType::Q6_K, &[0f32; 256], &mut [0u8; 211]),
        Err(QuantError::OutputLength {
            ty: GgmlType::Q6_K,
            expected: 210,
            got: 211,
            unit: "bytes"
        })
    );
    assert!(matches!(
        dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0f32; 256]),
        Err(QuantError::Unsupported { .. })
    ));
    assert!(matches!(
        quantize_to_vec(GgmlType::MXFP4, &[0f32; 32]),
        Err(QuantError::Unsupported { .. })
    ));
}

#[test]
fn float_formats_convert_exactly() {
    let x = [1.0f32, -2.5, 65504.0, 1e-8, f32::INFINITY];
    let f16b = quantize_to_vec(GgmlType::F16, &x).unwrap();
    assert_eq!(&f16b[..2], &[0x00, 0x3c]);
    let y = dequantize_to_vec(GgmlType::F16, &f16b).unwrap();
    assert_eq!(&y[..3], &x[..3]);
    assert_eq!(y[4], f32::INFINITY);
    let bf = quantize_to_vec(GgmlType::BF16, &x).unwrap();
    assert_eq!(&bf[..2], &[0x80, 0x3f]);
    assert_eq!(
        dequantize_to_vec(GgmlType::F32, &quantize_to_vec(GgmlType::F32, &x).unwrap()).unwrap(),
        x
    );
}
