//! Block formats: scalar reference quantizers and dequantizers.
//!
//! The layouts and arithmetic follow ggml (`ggml-quants.c`) and gguf-py (`gguf/quants.py`):
//! dequantization is bit-exact with both, and the Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 quantizers are
//! byte-identical with gguf-py. The K-quant quantizers implement ggml's reference
//! (no importance matrix) error-minimising searches.

mod k;
mod legacy;

use crate::types::GgmlType;
use half::{bf16, f16};

pub use k::QK_K;

/// Errors from [`quantize`] and [`dequantize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no quantizer/dequantizer here (e.g. the i-quants).
    #[error("{op} is not supported for {ty}")]
    Unsupported {
        /// The type.
        ty: GgmlType,
        /// `"quantize"` or `"dequantize"`.
        op: &'static str,
    },
    /// The quantized byte slice is not a whole number of blocks.
    #[error("{ty}: {len} bytes is not a multiple of the {type_size}-byte block")]
    BytesNotBlockMultiple {
        /// The type.
        ty: GgmlType,
        /// Length of the byte slice.
        len: usize,
        /// Bytes per block.
        type_size: usize,
    },
    /// The float slice is not a whole number of blocks.
    #[error("{ty}: {len} elements is not a multiple of the {block_size}-element block")]
    ElementsNotBlockMultiple {
        /// The type.
        ty: GgmlType,
        /// Number of elements.
        len: usize,
        /// Elements per block.
        block_size: usize,
    },
    /// The output slice has the wrong length for the input.
    #[error("{ty}: output holds {got} {unit}, expected {expected}")]
    OutputLength {
        /// The type.
        ty: GgmlType,
        /// Required output length.
        expected: usize,
        /// Actual output length.
        got: usize,
        /// `"bytes"` or `"elements"`.
        unit: &'static str,
    },
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, which must hold exactly
/// `bytes.len() / ty.type_size() * ty.block_size()` floats.
///
/// ```
/// use hearth_quant::{dequantize, GgmlType};
/// // One Q8_0 block: f16 scale 0.5, then 32 int8 quants.
/// let mut block = vec![0u8; 34];
/// block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
/// block[2] = 4; // first quant = 4
/// block[3] = (-2i8) as u8;
/// let mut out = [0f32; 32];
/// dequantize(GgmlType::Q8_0, &block, &mut out).unwrap();
/// assert_eq!(&out[..3], &[2.0, -1.0, 0.0]);
/// assert!(dequantize(GgmlType::Q8_0, &block[..33], &mut out).is_err());
/// ```
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !ty.can_dequantize() {
        return Err(QuantError::Unsupported { ty, op: "dequantize" });
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !bytes.len().is_multiple_of(ts) {
        return Err(QuantError::BytesNotBlockMultiple {
            ty,
            len: bytes.len(),
            type_size: ts,
        });
    }
    let expected = bytes.len() / ts * bs;
    if out.len() != expected {
        return Err(QuantError::OutputLength {
            ty,
            expected,
            got: out.len(),
            unit: "elements",
        });
    }
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    use GgmlType::*;
    match ty {
        F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => blocks.for_each(|(b, o)| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        BF16 => blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Q4_0 => blocks.for_each(|(b, o)| legacy::dequant_q4_0(b, o)),
        Q4_1 => blocks.for_each(|(b, o)| legacy::dequant_q4_1(b, o)),
        Q5_0 => blocks.for_each(|(b, o)| legacy::dequant_q5_0(b, o)),
        Q5_1 => blocks.for_each(|(b, o)| legacy::dequant_q5_1(b, o)),
        Q8_0 => blocks.for_each(|(b, o)| legacy::dequant_q8_0(b, o)),
        Q2_K => blocks.for_each(|(b, o)| k::dequant_q2_k(b, o)),
        Q3_K => blocks.for_each(|(b, o)| k::dequant_q3_k(b, o)),
        Q4_K => blocks.for_each(|(b, o)| k::dequant_q4_k(b, o)),
        Q5_K => blocks.for_each(|(b, o)| k::dequant_q5_k(b, o)),
        Q6_K => blocks.for_each(|(b, o)| k::dequant_q6_k(b, o)),
        Q8_K => blocks.for_each(|(b, o)| k::dequant_q8_k(b, o)),
        _ => unreachable!("checked by can_dequantize"),
    }
    Ok(())
}

/// Dequantizes into a new vector.
///
/// ```
/// use hearth_quant::{dequantize_to_vec, GgmlType};
/// let bytes = 1.5f32.to_le_bytes();
/// assert_eq!(dequantize_to_vec(GgmlType::F32, &bytes).unwrap(), vec![1.5]);
/// ```
pub fn dequantize_to_vec(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let ts = ty.type_size();
    let n = (bytes.len() / ts).saturating_mul(ty.block_size());
    let mut out = vec![0f32; if bytes.len().is_multiple_of(ts) { n } else { 0 }];
    dequantize(ty, bytes, &mut out)?;
    Ok(out)
}

/// Quantizes `src` (a whole number of blocks) into `out`, which must hold exactly
/// `src.len() / ty.block_size() * ty.type_size()` bytes.
///
/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16 and F32 produce the same bytes as gguf-py;
/// the K-quants use ggml's reference searches.
///
/// ```
/// use hearth_quant::{quantize, dequantize, GgmlType};
/// let x: Vec<f32> = (0..32).map(|i| i as f32 / 8.0 - 2.0).collect();
/// let mut q = vec![0u8; 34];
/// quantize(GgmlType::Q8_0, &x, &mut q).unwrap();
/// let mut y = vec![0f32; 32];
/// dequantize(GgmlType::Q8_0, &q, &mut y).unwrap();
/// assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.01));
/// ```
pub fn quantize(ty: GgmlType, src: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    if !ty.can_quantize() {
        return Err(QuantError::Unsupported { ty, op: "quantize" });
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !src.len().is_multiple_of(bs) {
        return Err(QuantError::ElementsNotBlockMultiple {
            ty,
            len: src.len(),
            block_size: bs,
        });
    }
    let expected = src.len() / bs * ts;
    if out.len() != expected {
        return Err(QuantError::OutputLength {
            ty,
            expected,
            got: out.len(),
            unit: "bytes",
        });
    }
    let blocks = src.chunks_exact(bs).zip(out.chunks_exact_mut(ts));
    use GgmlType::*;
    match ty {
        F32 => blocks.for_each(|(x, o)| o.copy_from_slice(&x[0].to_le_bytes())),
        F16 => blocks.for_each(|(x, o)| o.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes())),
        BF16 => blocks.for_each(|(x, o)| o.copy_from_slice(&f32_to_bf16_bits(x[0]).to_le_bytes())),
        Q4_0 => blocks.for_each(|(x, o)| legacy::quant_q4_0(x, o)),
        Q4_1 => blocks.for_each(|(x, o)| legacy::quant_q4_1(x, o)),
        Q5_0 => blocks.for_each(|(x, o)| legacy::quant_q5_0(x, o)),
        Q5_1 => blocks.for_each(|(x, o)| legacy::quant_q5_1(x, o)),
        Q8_0 => blocks.for_each(|(x, o)| legacy::quant_q8_0(x, o)),
        Q2_K => blocks.for_each(|(x, o)| k::quant_q2_k(x, o)),
        Q3_K => blocks.for_each(|(x, o)| k::quant_q3_k(x, o)),
        Q4_K => blocks.for_each(|(x, o)| k::quant_q4_k(x, o)),
        Q5_K => blocks.for_each(|(x, o)| k::quant_q5_k(x, o)),
        Q6_K => blocks.for_each(|(x, o)| k::quant_q6_k(x, o)),
        Q8_K => blocks.for_each(|(x, o)| k::quant_q8_k(x, o)),
        _ => unreachable!("checked by can_quantize"),
    }
    Ok(())
}

/// Quantizes into a new vector.
///
/// ```
/// use hearth_quant::{quantize_to_vec, GgmlType};
/// let q = quantize_to_vec(GgmlType::Q4_K, &vec![0.25f32; 256]).unwrap();
/// assert_eq!(q.len(), 144);
/// ```
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let bs = ty.block_size();
    let n = if src.len().is_multiple_of(bs) {
        src.len() / bs * ty.type_size()
    } else {
        0
    };
    let mut out = vec![0u8; n];
    quantize(ty, src, &mut out)?;
    Ok(out)
}

/// f32 → bf16 bits exactly as ggml / gguf-py do it: NaNs are quieted, everything else is
/// rounded to nearest even.
fn f32_to_bf16_bits(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + 0x7fff + ((n as u64 >> 16) & 1)) >> 16) as u16
}

/// Reads a little-endian f16 at `b[i..i + 2]` as f32.
#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Writes `x` rounded to f16 (nearest even) at `b[i..i + 2]`.
#[inline]
fn put_f16(b: &mut [u8], i: usize, x: f32) {
    b[i..i + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
}

/// Round to nearest, ties to even, as ggml's `nearest_int` does (for |x| < 2^22).
#[inline]
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_ggml() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // halfway between two bf16 values: ties to even
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-0.4), 0);
    }
}
