//! Engine errors.

/// Errors of tokenization, templating and generation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Model loading or forward failure.
    #[error(transparent)]
    Model(#[from] hearth_models::ModelError),
    /// Invalid sampling parameters, NaN logits, ...
    #[error(transparent)]
    Sample(#[from] hearth_sample::SampleError),
    /// A tokenizer file could not be read or used.
    #[error("{file}: tokenizer: {reason}")]
    Tokenizer {
        /// File.
        file: String,
        /// Cause.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The checkpoint has no chat template.
    #[error("{0} has no chat_template")]
    NoChatTemplate(String),
    /// The tokenizer's vocabulary does not fit the model's.
    #[error("tokenizer has {tokenizer} tokens but the model's vocab_size is {model}")]
    VocabMismatch {
        /// Tokens in the tokenizer.
        tokenizer: usize,
        /// Model vocabulary.
        model: usize,
    },
    /// The prompt does not leave room for a single new token.
    #[error("prompt of {prompt} tokens does not fit the context of {context} tokens")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        context: usize,
    },
    /// The prompt is empty.
    #[error("empty prompt")]
    EmptyPrompt,
    /// A GGUF file's tokenizer metadata is missing, invalid or unsupported.
    #[error(transparent)]
    GgufTokenizer(#[from] crate::gguf_tokenizer::GgufTokenizerError),
    /// The default model could not be downloaded.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}
