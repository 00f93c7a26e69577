//! GGUF files: a bounds-checked, memory-mapped reader and a v3 writer.
//!
//! Layout (little-endian): `"GGUF"`, u32 version, u64 tensor count, u64 metadata count,
//! metadata key/values, tensor infos (name, u32 n_dims, u64 dims\[n_dims\] with ne\[0\]
//! innermost, u32 type, u64 offset), padding to the alignment, then tensor data.

mod error;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, GgufInfo, TensorInfo, TensorView};
pub use value::{MetadataArray, MetadataValue, ValueType};
pub use writer::GgufWriter;

/// The four magic bytes every GGUF file starts with.
///
/// ```
/// assert_eq!(&hearth_quant::gguf::GGUF_MAGIC, b"GGUF");
/// ```
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Data alignment used when `general.alignment` is absent.
///
/// ```
/// assert_eq!(hearth_quant::gguf::DEFAULT_ALIGNMENT, 32);
/// ```
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
///
/// ```
/// assert_eq!(hearth_quant::gguf::MAX_DIMS, 4);
/// ```
pub const MAX_DIMS: usize = 4;

/// Deepest nesting of metadata arrays the reader accepts (guards the stack).
///
/// ```
/// assert!(hearth_quant::gguf::MAX_ARRAY_DEPTH >= 2);
/// ```
pub const MAX_ARRAY_DEPTH: usize = 16;
