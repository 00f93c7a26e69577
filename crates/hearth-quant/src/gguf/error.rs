//! Typed errors for GGUF reading and writing.

use crate::types::GgmlType;

/// Everything that can go wrong reading or writing a GGUF file.
///
/// Parse errors name the field (e.g. `kv[3] "general.name" value` or
/// `tensor "blk.0.attn_q.weight" dims`) so a bad file can be diagnosed.
///
/// ```
/// use hearth_quant::gguf::{GgufError, GgufInfo};
/// let err = GgufInfo::parse(b"GGML\x03\0\0\0").unwrap_err();
/// assert!(matches!(err, GgufError::BadMagic(_)));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An I/O error opening, mapping or writing a file.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with `GGUF`.
    #[error("bad magic {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    /// Only versions 2 and 3 (little-endian) are supported.
    #[error("unsupported GGUF version {0} (supported: 2, 3 little-endian)")]
    UnsupportedVersion(u32),
    /// The file ends before a field is complete.
    #[error("truncated file: {field} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// The field being read.
        field: String,
        /// Byte offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A count or length is larger than the remaining bytes could possibly hold.
    #[error("{field}: count {count} cannot fit in the {remaining} remaining bytes")]
    CountTooLarge {
        /// The count field.
        field: String,
        /// The count read.
        count: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{field}: string is not valid UTF-8")]
    InvalidUtf8 {
        /// The string field.
        field: String,
    },
    /// A metadata value type id is unknown.
    #[error("{field}: unknown metadata value type {id}")]
    InvalidValueType {
        /// The value field.
        field: String,
        /// The type id read.
        id: u32,
    },
    /// A bool is neither 0 nor 1.
    #[error("{field}: invalid bool byte {value}")]
    InvalidBool {
        /// The value field.
        field: String,
        /// The byte read.
        value: u8,
    },
    /// Arrays are nested deeper than [`MAX_ARRAY_DEPTH`](crate::gguf::MAX_ARRAY_DEPTH).
    #[error("{field}: arrays nested deeper than {max}")]
    NestingTooDeep {
        /// The value field.
        field: String,
        /// The limit.
        max: usize,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    /// `general.alignment` is not a non-zero power-of-two u32.
    #[error("invalid general.alignment: {0}")]
    InvalidAlignment(String),
    /// A tensor has more than 4 dimensions.
    #[error("tensor {tensor:?}: {n_dims} dimensions (max 4)")]
    TooManyDims {
        /// Tensor name.
        tensor: String,
        /// Dimension count read.
        n_dims: u32,
    },
    /// A tensor's type id is unknown.
    #[error("tensor {tensor:?}: unknown ggml type id {id}")]
    UnknownType {
        /// Tensor name.
        tensor: String,
        /// Type id read.
        id: u32,
    },
    /// A tensor's shape is invalid (overflow, row not a whole number of blocks...).
    #[error("tensor {tensor:?}: invalid shape {dims:?} for {ty}: {reason}")]
    InvalidShape {
        /// Tensor name.
        tensor: String,
        /// Dimensions (ne order).
        dims: Vec<u64>,
        /// Tensor type.
        ty: GgmlType,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor's offset is not a multiple of the alignment.
    #[error("tensor {tensor:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Tensor name.
        tensor: String,
        /// Offset (relative to the data section).
        offset: u64,
        /// Alignment.
        alignment: u64,
    },
    /// A tensor's data extends past the end of the file.
    #[error("tensor {tensor:?}: data [{offset}, {offset}+{size}) is past the end of the {data_len}-byte data section")]
    TensorOutOfBounds {
        /// Tensor name.
        tensor: String,
        /// Offset (relative to the data section).
        offset: u64,
        /// Size in bytes.
        size: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors' data ranges overlap.
    #[error("tensors {first:?} and {second:?} overlap")]
    TensorOverlap {
        /// The tensor with the lower offset.
        first: String,
        /// The other tensor.
        second: String,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// Writer: tensor data length does not match its type and shape.
    #[error("tensor {tensor:?}: data has {got} bytes, its type and shape need {expected}")]
    DataLength {
        /// Tensor name.
        tensor: String,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// A dequantization error on tensor data.
    #[error("tensor {tensor:?}: {source}")]
    Quant {
        /// Tensor name.
        tensor: String,
        /// The underlying error.
        source: crate::QuantError,
    },
}
