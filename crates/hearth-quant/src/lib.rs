//! hearth-quant: GGUF-compatible block formats, GGUF files, quantize/dequantize and CPU kernels.
//!
//! - [`GgmlType`]: ggml tensor types with GGUF ids, block size and type size.
//! - [`dequantize`] / [`quantize`]: scalar reference codecs for F32/F16/BF16, Q4_0, Q4_1,
//!   Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K (bit-exact with ggml/gguf-py
//!   dequantization; legacy quantizers byte-identical with gguf-py).
//! - [`gguf`]: GGUF reader ([`gguf::GgufFile`]) and writer ([`gguf::GgufWriter`]).
//!
//! ```
//! use hearth_quant::{GgmlType, quantize_to_vec, dequantize_to_vec};
//! let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
//! let q = quantize_to_vec(GgmlType::Q6_K, &x).unwrap();
//! let y = dequantize_to_vec(GgmlType::Q6_K, &q).unwrap();
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.05));
//! ```

pub mod blocks;
pub mod bytes;
pub mod gguf;
pub mod kernels;
pub mod types;

pub use blocks::{QuantError, dequantize, dequantize_to_vec, quantize, quantize_to_vec};
pub use bytes::{AlignedBytes, WeightBytes};
pub use types::GgmlType;
