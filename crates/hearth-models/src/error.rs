//! Typed errors of config parsing, weight loading and the forward pass.

use std::path::Path;

/// Everything that can go wrong loading or running a model. Each variant names the file,
/// tensor or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// I/O failure on a file.
    #[error("cannot read {path}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A config field is missing or invalid.
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        /// File.
        file: String,
        /// Field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `model_type` is not one hearth implements.
    #[error(
        "{file}: unknown model_type `{model_type}` (supported: llama, mistral, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v3)"
    )]
    UnknownModelType {
        /// File.
        file: String,
        /// The value found.
        model_type: String,
    },
    /// The safetensors header is unreadable.
    #[error("{file}: bad safetensors header: {reason}")]
    BadHeader {
        /// File.
        file: String,
        /// Parser message.
        reason: String,
    },
    /// The file is shorter than its header says.
    #[error("{file}: truncated: header describes {expected} bytes, file has {actual}")]
    Truncated {
        /// File.
        file: String,
        /// Bytes the header needs.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A tensor the model needs is absent.
    #[error("missing tensor `{tensor}` (searched {files})")]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Files searched.
        files: String,
    },
    /// A tensor has the wrong shape.
    #[error("{file}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    Shape {
        /// File.
        file: String,
        /// Tensor name.
        tensor: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// A tensor's dtype cannot be converted.
    #[error("{file}: tensor `{tensor}` has unsupported dtype {dtype}")]
    Dtype {
        /// File.
        file: String,
        /// Tensor name.
        tensor: String,
        /// Dtype found.
        dtype: String,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary ({vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Position in the input.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// KV cache bookkeeping failed (e.g. the prompt is longer than the context).
    #[error(transparent)]
    Cache(#[from] hearth_attention::CacheError),
    /// MoE routing failed.
    #[error("layer {layer}: {source}")]
    Moe {
        /// Layer index.
        layer: usize,
        /// Cause.
        #[source]
        source: hearth_moe::MoeError,
    },
    /// The backend refused a weight (e.g. a packed upload whose bytes do not match its shape).
    #[error("tensor `{tensor}`: {source}")]
    Backend {
        /// Tensor name.
        tensor: String,
        /// Cause.
        #[source]
        source: hearth_backend::BackendError,
    },
    /// An empty batch or a row with no tokens.
    #[error("empty input: {0}")]
    EmptyInput(String),
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
