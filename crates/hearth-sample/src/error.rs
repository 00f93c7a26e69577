//! Typed errors returned by validation and sampling.

use crate::ProcessorKind;

/// Everything that can go wrong when validating [`SamplingParams`](crate::SamplingParams)
/// or sampling a row of logits. Sampling never panics on bad input; it returns one of these.
///
/// The `Display` text names the offending field and value:
///
/// ```
/// use hearth_sample::{SampleError, SamplingParams};
/// let params = SamplingParams { temperature: -1.0, ..Default::default() };
/// let err = params.validate().unwrap_err();
/// assert_eq!(err, SampleError::InvalidTemperature(-1.0));
/// assert!(err.to_string().contains("temperature"));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// `temperature` is negative, NaN or infinite (0.0 means greedy).
    #[error("invalid temperature {0}: must be finite and >= 0 (0 means greedy)")]
    InvalidTemperature(f32),
    /// `top_k` is `Some(0)`.
    #[error("invalid top_k 0: must be >= 1 (use None to disable)")]
    InvalidTopK,
    /// `top_p` is outside `(0, 1]` or NaN.
    #[error("invalid top_p {0}: must be in (0, 1]")]
    InvalidTopP(f32),
    /// `min_p` is outside `[0, 1]` or NaN.
    #[error("invalid min_p {0}: must be in [0, 1]")]
    InvalidMinP(f32),
    /// `typical_p` is outside `(0, 1]` or NaN.
    #[error("invalid typical_p {0}: must be in (0, 1]")]
    InvalidTypicalP(f32),
    /// `repetition_penalty` is not a finite number > 0.
    #[error("invalid repetition_penalty {0}: must be finite and > 0")]
    InvalidRepetitionPenalty(f32),
    /// `presence_penalty` or `frequency_penalty` is NaN or infinite.
    #[error("invalid {name} {value}: must be finite")]
    InvalidPenalty {
        /// Field name (`"presence_penalty"` or `"frequency_penalty"`).
        name: &'static str,
        /// The rejected value.
        value: f32,
    },
    /// A `logit_bias` entry is NaN or `+inf` (`-inf` is allowed and bans the token).
    #[error("invalid logit_bias for token {token}: {bias} (must not be NaN or +inf)")]
    InvalidLogitBias {
        /// Token id of the bad entry.
        token: u32,
        /// The rejected bias.
        bias: f32,
    },
    /// `no_repeat_ngram_size` is `Some(0)`.
    #[error("invalid no_repeat_ngram_size 0: must be >= 1 (use None to disable)")]
    InvalidNoRepeatNgramSize,
    /// `banned_sequences[index]` is empty.
    #[error("banned_sequences[{index}] is empty")]
    EmptyBannedSequence {
        /// Position in `banned_sequences`.
        index: usize,
    },
    /// The custom processor order names a processor twice.
    #[error("processor order lists {0:?} more than once")]
    DuplicateProcessor(ProcessorKind),
    /// The logits row is empty.
    #[error("logits row is empty")]
    EmptyLogits,
    /// The logits contain a NaN.
    #[error("logits contain NaN at index {index}")]
    NanLogit {
        /// First NaN position.
        index: usize,
    },
    /// The logits contain `+inf`, which makes the distribution undefined.
    #[error("logits contain +inf at index {index}")]
    PositiveInfiniteLogit {
        /// First `+inf` position.
        index: usize,
    },
    /// Every logit is `-inf` (before or after processing): there is nothing to sample.
    #[error("all logits are -inf (nothing left to sample)")]
    AllLogitsMasked,
    /// A token id (in the history or in `logit_bias`) is outside the vocabulary.
    #[error("token id {token} is out of range for vocabulary size {vocab_size}")]
    TokenOutOfRange {
        /// The bad id.
        token: u32,
        /// `logits.len()`.
        vocab_size: usize,
    },
    /// `n_prompt` is larger than the token history.
    #[error("n_prompt {n_prompt} exceeds history length {len}")]
    PromptLengthOutOfRange {
        /// Given prompt length.
        n_prompt: usize,
        /// Length of `prompt_and_generated`.
        len: usize,
    },
}
