//! Typed errors of the routing spec, the router and the load statistics.

use thiserror::Error;

/// Everything that can go wrong when validating a [`RouterSpec`](crate::RouterSpec),
/// routing a batch, or feeding [`LoadStats`](crate::LoadStats) /
/// [`BiasBalancer`](crate::BiasBalancer).
///
/// ```
/// use hearth_moe::{MoeError, RouterSpec};
///
/// let err = RouterSpec::mixtral(8, 9).unwrap_err();
/// assert_eq!(err, MoeError::TopKExceedsExperts { top_k: 9, n_experts: 8 });
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MoeError {
    /// The spec has no experts.
    #[error("a router needs at least one expert")]
    ZeroExperts,
    /// `top_k` is zero.
    #[error("top_k must be at least 1")]
    ZeroTopK,
    /// `top_k` is larger than the number of experts.
    #[error("top_k ({top_k}) exceeds the number of experts ({n_experts})")]
    TopKExceedsExperts {
        /// Requested experts per token.
        top_k: usize,
        /// Experts in the layer.
        n_experts: usize,
    },
    /// `n_group` is zero or does not divide the number of experts.
    #[error("n_group ({n_group}) must be non-zero and divide the number of experts ({n_experts})")]
    GroupsDoNotDivideExperts {
        /// Number of expert groups.
        n_group: usize,
        /// Experts in the layer.
        n_experts: usize,
    },
    /// `topk_group` is zero or larger than `n_group`.
    #[error("topk_group ({topk_group}) must be in 1..={n_group}")]
    TopKGroupOutOfRange {
        /// Groups kept per token.
        topk_group: usize,
        /// Number of expert groups.
        n_group: usize,
    },
    /// The kept groups hold fewer experts than `top_k`.
    #[error(
        "top_k ({top_k}) exceeds the experts left after group limiting \
         (topk_group {topk_group} x {experts_per_group} experts per group)"
    )]
    TopKExceedsGroupCapacity {
        /// Requested experts per token.
        top_k: usize,
        /// Groups kept per token.
        topk_group: usize,
        /// Experts in each group.
        experts_per_group: usize,
    },
    /// `routed_scaling_factor` is not finite.
    #[error("routed_scaling_factor must be finite, got {0}")]
    InvalidScalingFactor(f32),
    /// The renormalisation epsilon is negative or not finite.
    #[error("renormalisation epsilon must be finite and >= 0, got {0}")]
    InvalidRenormEpsilon(f64),
    /// The logits slice is not `n_tokens * n_experts` long.
    #[error("router logits have {actual} values, expected {n_tokens} tokens x {n_experts} experts")]
    LogitsLength {
        /// Tokens the caller announced.
        n_tokens: usize,
        /// Experts in the spec.
        n_experts: usize,
        /// Length of the slice that was passed.
        actual: usize,
    },
    /// A logit is NaN or `+inf`.
    #[error("router logit for token {token}, expert {expert} is {value} (NaN or +inf)")]
    NonFiniteLogit {
        /// Token row.
        token: usize,
        /// Expert column.
        expert: usize,
        /// The offending value.
        value: f32,
    },
    /// Softmax scoring with every logit of a token equal to `-inf`.
    #[error("every router logit of token {token} is -inf; softmax is undefined")]
    NoFiniteLogit {
        /// Token row.
        token: usize,
    },
    /// The correction bias is not `n_experts` long.
    #[error("correction bias has {actual} values, expected {expected}")]
    BiasLength {
        /// Experts in the spec.
        expected: usize,
        /// Length of the slice that was passed.
        actual: usize,
    },
    /// A correction bias value is NaN or infinite.
    #[error("correction bias of expert {expert} is not finite ({value})")]
    NonFiniteBias {
        /// Expert index.
        expert: usize,
        /// The offending value.
        value: f32,
    },
    /// The spec uses a correction bias but none was passed.
    #[error("this router spec uses an e_score_correction_bias but none was passed")]
    MissingBias,
    /// A bias was passed to a spec without a correction bias.
    #[error("a correction bias was passed but this router spec does not use one")]
    UnexpectedBias,
    /// A routing / count vector has a different expert count than the consumer.
    #[error("expected data for {expected} experts, got {actual}")]
    ExpertCountMismatch {
        /// Experts the consumer was built for.
        expected: usize,
        /// Experts in the data that was passed.
        actual: usize,
    },
    /// An expert index in a hand-built top-k table is out of range.
    #[error("expert index {index} out of range for {n_experts} experts")]
    ExpertIndexOutOfRange {
        /// The offending index.
        index: usize,
        /// Experts in the layer.
        n_experts: usize,
    },
    /// Hand-built top-k tables whose lengths do not match `n_tokens * top_k`.
    #[error("top-k table lengths (experts {experts}, weights {weights}) are not equal multiples of top_k {top_k}")]
    TopKTableLength {
        /// Length of the expert table.
        experts: usize,
        /// Length of the weight table.
        weights: usize,
        /// Experts per token.
        top_k: usize,
    },
    /// A sliding window of zero calls.
    #[error("a load-statistics window must cover at least one call")]
    ZeroWindow,
    /// The balancer step is not finite and positive.
    #[error("bias update step gamma must be finite and > 0, got {0}")]
    InvalidGamma(f32),
}
