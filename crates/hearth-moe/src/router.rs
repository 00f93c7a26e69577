//! The typed routing spec ([`RouterSpec`]), the host router ([`RouterSpec::route`]) and its
//! output ([`Routing`]).
//!
//! # The routing pipeline
//!
//! For every token (one row of `router_logits`, computed by the caller as `hidden @ gate.T`):
//!
//! 1. **Scores** `s = softmax(logits)` or `s = sigmoid(logits)` ([`ScoringFunc`]), computed in
//!    `f64` (softmax: max-subtracted, denominator accumulated in `f64`).
//! 2. **Selection scores** `c = s + bias` when the spec uses an `e_score_correction_bias`
//!    ([`RouterSpec::correction_bias`]), else `c = s`. The bias only ever affects *which*
//!    experts are chosen, never their weights.
//! 3. **Group limiting** (optional, [`GroupLimit`]): experts are split into `n_group`
//!    contiguous groups; a group's score is the sum of its two largest selection scores; the
//!    `topk_group` best groups are kept and every expert of the other groups is excluded.
//! 4. **Top-k** over the selection scores of the remaining experts.
//! 5. **Weights** are the *unbiased* scores `s` of the chosen experts, optionally renormalised
//!    to sum to one (`w / (Σw + renorm_epsilon)`) and finally multiplied by
//!    `routed_scaling_factor`.
//!
//! # Tie-breaking
//!
//! Every top-k in this module (groups and experts) is *stable*: among equal values the lower
//! index wins, which is what `torch.topk` on CPU returns in practice. Per token the chosen
//! experts are listed in descending selection score (ties: lower expert index first), like
//! `torch.topk(..., sorted=True)`. DeepSeek-V3 in transformers calls `topk(sorted=False)`, so
//! its order is unspecified there; the *set* is the same.
//!
//! For softmax scoring without a bias and without group limiting, selection is done on the
//! logits themselves; softmax is strictly monotone, so this is the exact top-k of the
//! probabilities. (torch selects on rounded `f32` probabilities and can therefore break
//! near-ties that collapse in `f32` differently; that is the only expected divergence.)

use crate::MoeError;

/// How raw router logits become per-expert scores.
///
/// ```
/// use hearth_moe::ScoringFunc;
///
/// assert_ne!(ScoringFunc::Softmax, ScoringFunc::Sigmoid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoringFunc {
    /// Softmax over all experts of the token (Mixtral, Qwen2/3-MoE, OLMoE).
    Softmax,
    /// Element-wise logistic sigmoid (DeepSeek-V3).
    Sigmoid,
}

/// DeepSeek-V3 group-limited selection: experts `[g * n / n_group, (g + 1) * n / n_group)` form
/// group `g`; only the `topk_group` groups with the largest sum of their top-2 selection scores
/// are eligible for the final top-k.
///
/// A group of a single expert scores that expert alone (transformers would fail in
/// `topk(2)`).
///
/// ```
/// use hearth_moe::GroupLimit;
///
/// let g = GroupLimit { n_group: 8, topk_group: 4 };
/// assert_eq!(g.experts_per_group(256), 32);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupLimit {
    /// Number of expert groups (`config.n_group`).
    pub n_group: usize,
    /// Groups kept per token (`config.topk_group`).
    pub topk_group: usize,
}

impl GroupLimit {
    /// Experts per group for a layer of `n_experts` experts (assumes the spec validated).
    ///
    /// ```
    /// use hearth_moe::GroupLimit;
    ///
    /// assert_eq!(GroupLimit { n_group: 4, topk_group: 2 }.experts_per_group(64), 16);
    /// ```
    pub fn experts_per_group(&self, n_experts: usize) -> usize {
        n_experts.checked_div(self.n_group).unwrap_or(0)
    }
}

/// Config-class defaults of HF transformers 5.x, for documentation and for callers that build a
/// spec without a `config.json` (always prefer the value in the checkpoint's `config.json`).
pub mod hf_defaults {
    /// `MixtralConfig.num_local_experts`.
    pub const MIXTRAL_NUM_EXPERTS: usize = 8;
    /// `MixtralConfig.num_experts_per_tok`.
    pub const MIXTRAL_TOP_K: usize = 2;
    /// `Qwen2MoeConfig.num_experts`.
    pub const QWEN2_MOE_NUM_EXPERTS: usize = 60;
    /// `Qwen2MoeConfig.num_experts_per_tok`.
    pub const QWEN2_MOE_TOP_K: usize = 4;
    /// `Qwen2MoeConfig.norm_topk_prob`.
    pub const QWEN2_MOE_NORM_TOPK_PROB: bool = false;
    /// `Qwen2MoeConfig.shared_expert_intermediate_size`.
    pub const QWEN2_MOE_SHARED_EXPERT_INTERMEDIATE_SIZE: usize = 5632;
    /// `Qwen3MoeConfig.num_experts`.
    pub const QWEN3_MOE_NUM_EXPERTS: usize = 128;
    /// `Qwen3MoeConfig.num_experts_per_tok`.
    pub const QWEN3_MOE_TOP_K: usize = 8;
    /// `Qwen3MoeConfig.norm_topk_prob`: **`false`** in the config class (transformers 4.51 and
    /// 5.x), although released Qwen3-MoE checkpoints set it to `true` in `config.json`.
    pub const QWEN3_MOE_NORM_TOPK_PROB: bool = false;
    /// `OlmoeConfig.num_experts`.
    pub const OLMOE_NUM_EXPERTS: usize = 64;
    /// `OlmoeConfig.num_experts_per_tok`.
    pub const OLMOE_TOP_K: usize = 8;
    /// `OlmoeConfig.norm_topk_prob`.
    pub const OLMOE_NORM_TOPK_PROB: bool = false;
    /// `DeepseekV3Config.n_routed_experts`.
    pub const DEEPSEEK_V3_NUM_EXPERTS: usize = 256;
    /// `DeepseekV3Config.num_experts_per_tok`.
    pub const DEEPSEEK_V3_TOP_K: usize = 8;
    /// `DeepseekV3Config.n_group`.
    pub const DEEPSEEK_V3_N_GROUP: usize = 8;
    /// `DeepseekV3Config.topk_group`.
    pub const DEEPSEEK_V3_TOPK_GROUP: usize = 4;
    /// `DeepseekV3Config.norm_topk_prob`.
    pub const DEEPSEEK_V3_NORM_TOPK_PROB: bool = true;
    /// `DeepseekV3Config.routed_scaling_factor`.
    pub const DEEPSEEK_V3_ROUTED_SCALING_FACTOR: f32 = 2.5;
    /// `DeepseekV3Config.n_shared_experts`.
    pub const DEEPSEEK_V3_N_SHARED_EXPERTS: usize = 1;
    /// `DeepseekV3Config.moe_intermediate_size`.
    pub const DEEPSEEK_V3_MOE_INTERMEDIATE_SIZE: usize = 2048;
    /// The constant transformers' `DeepseekV3MoE.route_tokens_to_experts` adds to the
    /// renormalisation denominator.
    pub const DEEPSEEK_V3_RENORM_EPSILON: f64 = 1e-20;
}

/// One typed description of how a MoE layer routes tokens to experts, covering Mixtral,
/// Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 (see the family constructors).
///
/// Fields are public so that any combination can be expressed; [`RouterSpec::validate`]
/// (called by the constructors and by every [`RouterSpec::route`]) rejects inconsistent ones.
///
/// ```
/// use hearth_moe::{RouterSpec, ScoringFunc};
///
/// let spec = RouterSpec::new(16, 2, ScoringFunc::Sigmoid)
///     .with_group_limit(4, 2)
///     .with_renormalize(true)
///     .with_routed_scaling_factor(2.0);
/// spec.validate()?;
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RouterSpec {
    /// Routed experts in the layer.
    pub n_experts: usize,
    /// Experts per token (`num_experts_per_tok`).
    pub top_k: usize,
    /// Score function applied to the logits.
    pub scoring: ScoringFunc,
    /// Whether the layer has an `e_score_correction_bias` (selection only). When `true`,
    /// [`RouterSpec::route`] requires a bias; when `false` it rejects one.
    pub correction_bias: bool,
    /// Optional group-limited selection.
    pub group_limit: Option<GroupLimit>,
    /// Renormalise the kept weights to sum to one (`norm_topk_prob`).
    pub renormalize: bool,
    /// Added to the renormalisation denominator (`0` except DeepSeek-V3: `1e-20`).
    pub renorm_epsilon: f64,
    /// Final multiplier of the weights (`routed_scaling_factor`, `1` except DeepSeek).
    pub routed_scaling_factor: f32,
}

impl RouterSpec {
    /// A plain spec: given scoring, no bias, no groups, no renormalisation, scale 1.
    /// Not validated; chain the `with_*` builders and call [`RouterSpec::validate`].
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// let spec = RouterSpec::new(8, 2, ScoringFunc::Softmax);
    /// assert!(!spec.renormalize && spec.group_limit.is_none());
    /// ```
    pub fn new(n_experts: usize, top_k: usize, scoring: ScoringFunc) -> Self {
        Self {
            n_experts,
            top_k,
            scoring,
            correction_bias: false,
            group_limit: None,
            renormalize: false,
            renorm_epsilon: 0.0,
            routed_scaling_factor: 1.0,
        }
    }

    /// Sets whether an `e_score_correction_bias` is used for selection.
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// assert!(RouterSpec::new(8, 2, ScoringFunc::Softmax).with_correction_bias(true).correction_bias);
    /// ```
    pub fn with_correction_bias(mut self, on: bool) -> Self {
        self.correction_bias = on;
        self
    }

    /// Enables DeepSeek-V3 group-limited selection.
    ///
    /// ```
    /// use hearth_moe::{GroupLimit, RouterSpec, ScoringFunc};
    ///
    /// let spec = RouterSpec::new(16, 2, ScoringFunc::Sigmoid).with_group_limit(4, 2);
    /// assert_eq!(spec.group_limit, Some(GroupLimit { n_group: 4, topk_group: 2 }));
    /// ```
    pub fn with_group_limit(mut self, n_group: usize, topk_group: usize) -> Self {
        self.group_limit = Some(GroupLimit { n_group, topk_group });
        self
    }

    /// Sets `norm_topk_prob`.
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// assert!(RouterSpec::new(8, 2, ScoringFunc::Softmax).with_renormalize(true).renormalize);
    /// ```
    pub fn with_renormalize(mut self, on: bool) -> Self {
        self.renormalize = on;
        self
    }

    /// Sets the constant added to the renormalisation denominator.
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// let spec = RouterSpec::new(8, 2, ScoringFunc::Sigmoid).with_renorm_epsilon(1e-20);
    /// assert_eq!(spec.renorm_epsilon, 1e-20);
    /// ```
    pub fn with_renorm_epsilon(mut self, eps: f64) -> Self {
        self.renorm_epsilon = eps;
        self
    }

    /// Sets `routed_scaling_factor`.
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// let spec = RouterSpec::new(8, 2, ScoringFunc::Sigmoid).with_routed_scaling_factor(2.5);
    /// assert_eq!(spec.routed_scaling_factor, 2.5);
    /// ```
    pub fn with_routed_scaling_factor(mut self, factor: f32) -> Self {
        self.routed_scaling_factor = factor;
        self
    }

    /// Mixtral. transformers 5.x `MixtralTopKRouter.forward`:
    /// `softmax(router_logits.float())`, `torch.topk(probs, top_k)` and **always**
    /// `router_top_value /= router_top_value.sum(-1)` (there is no `norm_topk_prob` switch).
    /// No bias, no groups, no scaling.
    ///
    /// ```
    /// use hearth_moe::RouterSpec;
    ///
    /// let spec = RouterSpec::mixtral(8, 2)?;
    /// let r = spec.route(&[0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0], 1, None)?;
    /// assert_eq!(r.token_experts(0), &[2, 1]);
    /// assert!((r.token_weights(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn mixtral(n_experts: usize, top_k: usize) -> Result<Self, MoeError> {
        let spec = Self::new(n_experts, top_k, ScoringFunc::Softmax).with_renormalize(true);
        spec.validate()?;
        Ok(spec)
    }

    /// Mixtral with the `MixtralConfig` defaults (8 experts, top-2).
    ///
    /// ```
    /// assert_eq!(hearth_moe::RouterSpec::mixtral_default().n_experts, 8);
    /// ```
    pub fn mixtral_default() -> Self {
        Self::new(
            hf_defaults::MIXTRAL_NUM_EXPERTS,
            hf_defaults::MIXTRAL_TOP_K,
            ScoringFunc::Softmax,
        )
        .with_renormalize(true)
    }

    /// Qwen2-MoE. transformers 5.x `Qwen2MoeTopKRouter.forward`:
    /// `softmax(router_logits, dtype=float)`, `torch.topk(.., top_k)`, and
    /// `router_top_value /= sum` **only if** `config.norm_topk_prob`
    /// (`Qwen2MoeConfig` default: `false`). The shared expert and its sigmoid gate are
    /// described by [`SharedExpertSpec::qwen2_moe`](crate::SharedExpertSpec::qwen2_moe).
    ///
    /// ```
    /// use hearth_moe::RouterSpec;
    ///
    /// let spec = RouterSpec::qwen2_moe(60, 4, false)?;
    /// assert!(!spec.renormalize);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn qwen2_moe(n_experts: usize, top_k: usize, norm_topk_prob: bool) -> Result<Self, MoeError> {
        let spec = Self::new(n_experts, top_k, ScoringFunc::Softmax).with_renormalize(norm_topk_prob);
        spec.validate()?;
        Ok(spec)
    }

    /// Qwen2-MoE with the `Qwen2MoeConfig` defaults (60 experts, top-4, no renormalisation).
    ///
    /// ```
    /// assert!(!hearth_moe::RouterSpec::qwen2_moe_default().renormalize);
    /// ```
    pub fn qwen2_moe_default() -> Self {
        Self::new(
            hf_defaults::QWEN2_MOE_NUM_EXPERTS,
            hf_defaults::QWEN2_MOE_TOP_K,
            ScoringFunc::Softmax,
        )
        .with_renormalize(hf_defaults::QWEN2_MOE_NORM_TOPK_PROB)
    }

    /// Qwen3-MoE. transformers 5.x `Qwen3MoeSparseMoeBlock` uses the Qwen2-MoE router
    /// (softmax, top-k, renormalise iff `config.norm_topk_prob`) and has no shared expert.
    ///
    /// Beware: the `Qwen3MoeConfig` class default of `norm_topk_prob` is **`false`**
    /// (checked in transformers 4.51 and 5.x), while released Qwen3-MoE checkpoints set it to
    /// `true` in `config.json`; always pass the checkpoint's value.
    ///
    /// ```
    /// use hearth_moe::RouterSpec;
    ///
    /// let spec = RouterSpec::qwen3_moe(128, 8, true)?; // as in Qwen3-30B-A3B's config.json
    /// assert!(spec.renormalize);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn qwen3_moe(n_experts: usize, top_k: usize, norm_topk_prob: bool) -> Result<Self, MoeError> {
        Self::qwen2_moe(n_experts, top_k, norm_topk_prob)
    }

    /// Qwen3-MoE with the `Qwen3MoeConfig` class defaults (128 experts, top-8,
    /// `norm_topk_prob = false`; see [`RouterSpec::qwen3_moe`] for the caveat).
    ///
    /// ```
    /// assert_eq!(hearth_moe::RouterSpec::qwen3_moe_default().top_k, 8);
    /// ```
    pub fn qwen3_moe_default() -> Self {
        Self::new(
            hf_defaults::QWEN3_MOE_NUM_EXPERTS,
            hf_defaults::QWEN3_MOE_TOP_K,
            ScoringFunc::Softmax,
        )
        .with_renormalize(hf_defaults::QWEN3_MOE_NORM_TOPK_PROB)
    }

    /// OLMoE. transformers 5.x `OlmoeTopKRouter` is `Qwen2MoeTopKRouter` (softmax, top-k,
    /// renormalise iff `config.norm_topk_prob`, `OlmoeConfig` default `false`).
    ///
    /// ```
    /// use hearth_moe::RouterSpec;
    ///
    /// assert!(!RouterSpec::olmoe(64, 8, false)?.renormalize);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn olmoe(n_experts: usize, top_k: usize, norm_topk_prob: bool) -> Result<Self, MoeError> {
        Self::qwen2_moe(n_experts, top_k, norm_topk_prob)
    }

    /// OLMoE with the `OlmoeConfig` defaults (64 experts, top-8, no renormalisation).
    ///
    /// ```
    /// assert_eq!(hearth_moe::RouterSpec::olmoe_default().n_experts, 64);
    /// ```
    pub fn olmoe_default() -> Self {
        Self::new(
            hf_defaults::OLMOE_NUM_EXPERTS,
            hf_defaults::OLMOE_TOP_K,
            ScoringFunc::Softmax,
        )
        .with_renormalize(hf_defaults::OLMOE_NORM_TOPK_PROB)
    }

    /// DeepSeek-V3. transformers 5.x `DeepseekV3MoE.route_tokens_to_experts`:
    /// `scores = sigmoid(logits)`; `choice = scores + e_score_correction_bias`;
    /// group score = `choice.view(n_group, -1).topk(2).sum()`; keep `topk(group_scores,
    /// topk_group)` groups; `scores_for_choice = choice.masked_fill(~mask, 0.0)`;
    /// `topk_indices = topk(scores_for_choice, top_k)`; weights `= scores.gather(topk_indices)`
    /// (unbiased); if `norm_topk_prob`: `weights /= weights.sum() + 1e-20`; finally
    /// `weights *= routed_scaling_factor`.
    ///
    /// One deliberate difference: hearth excludes the experts of dropped groups outright,
    /// whereas transformers fills them with `0.0`. The two agree whenever the kept experts'
    /// biased scores are `>= 0` (the `top_k <= topk_group * experts_per_group` check rules out
    /// the other case for non-negative scores); with negative biased scores transformers could
    /// pick an expert from a dropped group, contradicting group-limited routing (DeepSeek's own
    /// reference code masks with `-inf`, as hearth does).
    ///
    /// ```
    /// use hearth_moe::RouterSpec;
    ///
    /// let spec = RouterSpec::deepseek_v3(256, 8, 8, 4, true, 2.5)?;
    /// let logits = vec![0.0f32; 256];
    /// let bias = vec![0.0f32; 256];
    /// let r = spec.route(&logits, 1, Some(&bias))?;
    /// // all scores tie: groups 0..4 are kept, and the lowest indices win
    /// assert_eq!(r.token_experts(0), &[0, 1, 2, 3, 4, 5, 6, 7]);
    /// assert!((r.token_weights(0).iter().sum::<f32>() - 2.5).abs() < 1e-6);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn deepseek_v3(
        n_experts: usize,
        top_k: usize,
        n_group: usize,
        topk_group: usize,
        norm_topk_prob: bool,
        routed_scaling_factor: f32,
    ) -> Result<Self, MoeError> {
        let spec = Self::new(n_experts, top_k, ScoringFunc::Sigmoid)
            .with_correction_bias(true)
            .with_group_limit(n_group, topk_group)
            .with_renormalize(norm_topk_prob)
            .with_renorm_epsilon(hf_defaults::DEEPSEEK_V3_RENORM_EPSILON)
            .with_routed_scaling_factor(routed_scaling_factor);
        spec.validate()?;
        Ok(spec)
    }

    /// DeepSeek-V3 with the `DeepseekV3Config` defaults (256 experts, top-8, 8 groups, keep 4,
    /// renormalise, scale 2.5).
    ///
    /// ```
    /// let spec = hearth_moe::RouterSpec::deepseek_v3_default();
    /// assert_eq!(spec.routed_scaling_factor, 2.5);
    /// ```
    pub fn deepseek_v3_default() -> Self {
        Self::new(
            hf_defaults::DEEPSEEK_V3_NUM_EXPERTS,
            hf_defaults::DEEPSEEK_V3_TOP_K,
            ScoringFunc::Sigmoid,
        )
        .with_correction_bias(true)
        .with_group_limit(hf_defaults::DEEPSEEK_V3_N_GROUP, hf_defaults::DEEPSEEK_V3_TOPK_GROUP)
        .with_renormalize(hf_defaults::DEEPSEEK_V3_NORM_TOPK_PROB)
        .with_renorm_epsilon(hf_defaults::DEEPSEEK_V3_RENORM_EPSILON)
        .with_routed_scaling_factor(hf_defaults::DEEPSEEK_V3_ROUTED_SCALING_FACTOR)
    }

    /// Checks the spec for consistency.
    ///
    /// ```
    /// use hearth_moe::{MoeError, RouterSpec, ScoringFunc};
    ///
    /// let bad = RouterSpec::new(10, 2, ScoringFunc::Sigmoid).with_group_limit(3, 1);
    /// assert_eq!(
    ///     bad.validate(),
    ///     Err(MoeError::GroupsDoNotDivideExperts { n_group: 3, n_experts: 10 })
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), MoeError> {
        if self.n_experts == 0 {
            return Err(MoeError::ZeroExperts);
        }
        if self.top_k == 0 {
            return Err(MoeError::ZeroTopK);
        }
        if self.top_k > self.n_experts {
            return Err(MoeError::TopKExceedsExperts {
                top_k: self.top_k,
                n_experts: self.n_experts,
            });
        }
        if let Some(g) = self.group_limit {
            if g.n_group == 0 || !self.n_experts.is_multiple_of(g.n_group) {
                return Err(MoeError::GroupsDoNotDivideExperts {
                    n_group: g.n_group,
                    n_experts: self.n_experts,
                });
            }
            if g.topk_group == 0 || g.topk_group > g.n_group {
                return Err(MoeError::TopKGroupOutOfRange {
                    topk_group: g.topk_group,
                    n_group: g.n_group,
                });
            }
            let per_group = g.experts_per_group(self.n_experts);
            if self.top_k > g.topk_group * per_group {
                return Err(MoeError::TopKExceedsGroupCapacity {
                    top_k: self.top_k,
                    topk_group: g.topk_group,
                    experts_per_group: per_group,
                });
            }
        }
        if !self.routed_scaling_factor.is_finite() {
            return Err(MoeError::InvalidScalingFactor(self.routed_scaling_factor));
        }
        if !(self.renorm_epsilon.is_finite() && self.renorm_epsilon >= 0.0) {
            return Err(MoeError::InvalidRenormEpsilon(self.renorm_epsilon));
        }
        Ok(())
    }

    /// Routes `n_tokens` tokens. `router_logits` is row-major `[n_tokens, n_experts]`
    /// (`hidden @ gate.T`, in `f32`); `bias` is the `e_score_correction_bias`
    /// (`[n_experts]`), required iff [`RouterSpec::correction_bias`].
    ///
    /// Scores are computed in `f64` and the weights rounded to `f32` at the end; they match an
    /// `f64` evaluation of the transformers formulas to ~1e-7. See the [module
    /// docs](crate::router) for the pipeline and tie-breaking.
    ///
    /// # Errors
    /// An invalid spec ([`RouterSpec::validate`]), a logits slice of the wrong length, a NaN or
    /// `+inf` logit, a softmax row that is entirely `-inf`, a missing / unexpected / wrong-length /
    /// non-finite bias.
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, ScoringFunc};
    ///
    /// let spec = RouterSpec::new(4, 1, ScoringFunc::Sigmoid).with_correction_bias(true);
    /// let logits = [0.0, 1.0, 0.0, 0.0, /* token 1 */ 2.0, 0.0, 0.0, 0.0];
    /// // the bias pulls token 0 to expert 3, but the weight stays sigmoid(0) = 0.5
    /// let r = spec.route(&logits, 2, Some(&[0.0, 0.0, 0.0, 1.0]))?;
    /// assert_eq!(r.token_experts(0), &[3]);
    /// assert_eq!(r.token_weights(0), &[0.5]);
    /// assert_eq!(r.token_experts(1), &[3]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn route(&self, router_logits: &[f32], n_tokens: usize, bias: Option<&[f32]>) -> Result<Routing, MoeError> {
        let mut buf = RoutingBuffers::new();
        self.route_into(router_logits, n_tokens, bias, &mut buf)?;
        Ok(buf.routing)
    }

    /// [`Self::route`] into reusable buffers: the same result, and once the buffers have seen
    /// a batch this large, no allocation (a decode loop routes every step into one
    /// [`RoutingBuffers`]).
    ///
    /// ```
    /// use hearth_moe::{RouterSpec, RoutingBuffers};
    /// let spec = RouterSpec::mixtral(4, 2)?;
    /// let logits = [3.0, 2.0, 0.0, 0.0];
    /// let mut buf = RoutingBuffers::new();
    /// let r = spec.route_into(&logits, 1, None, &mut buf)?;
    /// assert_eq!(r.token_experts(0), &[0, 1]);
    /// assert_eq!(*r, spec.route(&logits, 1, None)?);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn route_into<'b>(
        &self,
        router_logits: &[f32],
        n_tokens: usize,
        bias: Option<&[f32]>,
        buf: &'b mut RoutingBuffers,
    ) -> Result<&'b Routing, MoeError> {
        self.validate()?;
        let n = self.n_experts;
        let k = self.top_k;
        let length_error = MoeError::LogitsLength {
            n_tokens,
            n_experts: n,
            actual: router_logits.len(),
        };
        match n_tokens.checked_mul(n) {
            Some(len) if len == router_logits.len() => {}
            _ => return Err(length_error),
        }
        let bias = self.check_bias(bias)?;

        let RoutingBuffers {
            scratch,
            routing,
            start,
        } = buf;
        let (mut experts, mut weights) = routing.take_tables();
        for (t, row) in router_logits.chunks_exact(n).enumerate() {
            if let Err(e) = self.route_row(t, row, bias, scratch) {
                routing.topk_experts = experts;
                routing.topk_weights = weights;
                return Err(e);
            }
            experts.extend_from_slice(&scratch.selected);
            weights.extend_from_slice(&scratch.weights);
        }
        routing.rebuild(n, k, experts, weights, start);
        Ok(routing)
    }

    fn check_bias<'a>(&self, bias: Option<&'a [f32]>) -> Result<Option<&'a [f32]>, MoeError> {
        match (self.correction_bias, bias) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(MoeError::UnexpectedBias),
            (true, None) => Err(MoeError::MissingBias),
            (true, Some(b)) => {
                if b.len() != self.n_experts {
                    return Err(MoeError::BiasLength {
                        expected: self.n_experts,
                        actual: b.len(),
                    });
                }
                if let Some((expert, &value)) = b.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(MoeError::NonFiniteBias { expert, value });
                }
                Ok(Some(b))
            }
        }
    }

    /// Routes one validated row into `scratch.selected` / `scratch.weights`.
    fn route_row(&self, token: usize, row: &[f32], bias: Option<&[f32]>, s: &mut Scratch) -> Result<(), MoeError> {
        if let Some((expert, &value)) = row.iter().enumerate().find(|(_, x)| x.is_nan() || **x == f32::INFINITY) {
            return Err(MoeError::NonFiniteLogit { token, expert, value });
        }
        let k = self.top_k;
        s.selected.clear();
        s.weights.clear();

        let plain_softmax = self.scoring == ScoringFunc::Softmax && bias.is_none() && self.group_limit.is_none();
        if plain_softmax {
            // Softmax is strictly monotone: select on the logits, then evaluate only what the
            // weights need.
            top_k_stable(row.len(), |e| f64::from(row[e]), |_| true, k, &mut s.top);
            let max = f64::from(row[s.top[0].1]);
            if max == f64::NEG_INFINITY {
                return Err(MoeError::NoFiniteLogit { token });
            }
            let need_full_denominator = !self.renormalize || self.renorm_epsilon != 0.0;
            let z = if need_full_denominator {
                row.iter().map(|&x| (f64::from(x) - max).exp()).sum()
            } else {
                1.0
            };
            s.raw.clear();
            s.raw.extend(s.top.iter().map(|&(v, _)| (v - max).exp() / z));
        } else {
            self.compute_scores(token, row, &mut s.scores)?;
            // selection scores
            s.choice.clear();
            match bias {
                Some(b) => s
                    .choice
                    .extend(s.scores.iter().zip(b).map(|(&sc, &bi)| sc + f64::from(bi))),
                None => s.choice.extend_from_slice(&s.scores),
            }
            let choice = &s.choice;
            match self.group_limit {
                Some(g) => {
                    let per = g.experts_per_group(self.n_experts);
                    s.group_scores.clear();
                    s.group_scores.extend(choice.chunks_exact(per).map(sum_of_top2));
                    let gs = &s.group_scores;
                    top_k_stable(g.n_group, |i| gs[i], |_| true, g.topk_group, &mut s.group_top);
                    s.group_kept.clear();
                    s.group_kept.resize(g.n_group, false);
                    for &(_, gi) in &s.group_top {
                        s.group_kept[gi] = true;
                    }
                    let kept = &s.group_kept;
                    top_k_stable(self.n_experts, |e| choice[e], |e| kept[e / per], k, &mut s.top);
                }
                None => top_k_stable(self.n_experts, |e| choice[e], |_| true, k, &mut s.top),
            }
            s.raw.clear();
            let scores = &s.scores;
            s.raw.extend(s.top.iter().map(|&(_, e)| scores[e]));
        }

        s.selected.extend(s.top.iter().map(|&(_, e)| e));
        let denom = if self.renormalize {
            s.raw.iter().sum::<f64>() + self.renorm_epsilon
        } else {
            1.0
        };
        let scale = f64::from(self.routed_scaling_factor);
        s.weights.extend(s.raw.iter().map(|&w| (w / denom * scale) as f32));
        Ok(())
    }

    /// Unbiased per-expert scores of one row, in `f64`.
    fn compute_scores(&self, token: usize, row: &[f32], out: &mut Vec<f64>) -> Result<(), MoeError> {
        out.clear();
        match self.scoring {
            ScoringFunc::Softmax => {
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                if max == f64::NEG_INFINITY {
                    return Err(MoeError::NoFiniteLogit { token });
                }
                out.extend(row.iter().map(|&x| (f64::from(x) - max).exp()));
                let z: f64 = out.iter().sum();
                out.iter_mut().for_each(|p| *p /= z);
            }
            ScoringFunc::Sigmoid => {
                out.extend(row.iter().map(|&x| 1.0 / (1.0 + (-f64::from(x)).exp())));
            }
        }
        Ok(())
    }
}

/// Sum of the two largest values (the single value for a one-element group).
fn sum_of_top2(values: &[f64]) -> f64 {
    let mut a = f64::NEG_INFINITY;
    let mut b = f64::NEG_INFINITY;
    for &v in values {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    if values.len() < 2 { a } else { a + b }
}

/// Stable top-k: the `k` largest `value(i)` among `i in 0..n` with `allowed(i)`, in
/// descending order; among equal values the lower index ranks first. Values must not be NaN.
fn top_k_stable(
    n: usize,
    value: impl Fn(usize) -> f64,
    allowed: impl Fn(usize) -> bool,
    k: usize,
    out: &mut Vec<(f64, usize)>,
) {
    out.clear();
    for i in 0..n {
        if !allowed(i) {
            continue;
        }
        let v = value(i);
        if out.len() == k {
            // strictly greater needed to displace an earlier (lower-index) equal value
            match out.last() {
                Some(&(last, _)) if v > last => {
                    out.pop();
                }
                _ => continue,
            }
        }
        // insert after every element >= v, so earlier indices stay ahead among ties
        let pos = out.partition_point(|&(w, _)| w >= v);
        out.insert(pos, (v, i));
    }
}

/// Reusable buffers of [`RouterSpec::route_into`]: the routing of the last call and the
/// per-token scratch it was computed with.
///
/// ```
/// let buf = hearth_moe::RoutingBuffers::new();
/// assert_eq!(buf.routing().n_tokens(), 0);
/// ```
#[derive(Debug, Default)]
pub struct RoutingBuffers {
    scratch: Scratch,
    routing: Routing,
    start: Vec<usize>,
}

impl RoutingBuffers {
    /// Empty buffers (they grow on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// The routing of the last successful [`RouterSpec::route_into`] call (empty before).
    pub fn routing(&self) -> &Routing {
        &self.routing
    }
}

/// Per-call scratch buffers, reused across the tokens of one `route` call.
#[derive(Debug, Default)]
struct Scratch {
    scores: Vec<f64>,
    choice: Vec<f64>,
    group_scores: Vec<f64>,
    group_top: Vec<(f64, usize)>,
    group_kept: Vec<bool>,
    top: Vec<(f64, usize)>,
    raw: Vec<f64>,
    selected: Vec<usize>,
    weights: Vec<f32>,
}

/// The tokens (and their weights) routed to one expert: the unit of grouped dispatch
/// (gather `tokens`, run the expert once, scale by `weights`, scatter-add back).
///
/// ```
/// use hearth_moe::RouterSpec;
///
/// let r = RouterSpec::mixtral(4, 1)?.route(&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0], 2, None)?;
/// let g = r.expert_group(0).unwrap();
/// assert_eq!((g.expert, g.tokens, g.weights), (0, &[0usize, 1][..], &[1.0f32, 1.0][..]));
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertGroup<'a> {
    /// Expert index.
    pub expert: usize,
    /// Token indices routed to this expert, ascending.
    pub tokens: &'a [usize],
    /// The routing weight of each of those tokens (same order).
    pub weights: &'a [f32],
}

/// The result of routing a batch: per token the `top_k` (expert, weight) pairs, and the same
/// assignments grouped by expert (CSR layout over the active experts).
///
/// ```
/// use hearth_moe::RouterSpec;
///
/// let spec = RouterSpec::mixtral(4, 2)?;
/// let logits = [3.0, 2.0, 0.0, 0.0, /* token 1 */ 0.0, 2.0, 3.0, 0.0];
/// let r = spec.route(&logits, 2, None)?;
/// assert_eq!(r.token_experts(1), &[2, 1]);
/// assert_eq!(r.active_experts(), &[0, 1, 2]);
/// assert_eq!(r.expert_group(1).unwrap().tokens, &[0, 1]);
/// assert_eq!(r.expert_counts(), vec![1, 2, 1, 0]);
/// # Ok::<(), hearth_moe::MoeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routing {
    n_tokens: usize,
    n_experts: usize,
    top_k: usize,
    topk_experts: Vec<usize>,
    topk_weights: Vec<f32>,
    active_experts: Vec<usize>,
    offsets: Vec<usize>,
    expert_tokens: Vec<usize>,
    expert_weights: Vec<f32>,
}

impl Routing {
    /// Builds a routing from row-major `[n_tokens, top_k]` expert and weight tables (e.g. a
    /// top-k computed on a device), validating indices and lengths.
    ///
    /// ```
    /// use hearth_moe::Routing;
    ///
    /// let r = Routing::from_topk(4, 2, vec![0, 3, 3, 1], vec![0.7, 0.3, 0.6, 0.4])?;
    /// assert_eq!(r.n_tokens(), 2);
    /// assert_eq!(r.expert_group(3).unwrap().tokens, &[0, 1]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn from_topk(n_experts: usize, top_k: usize, experts: Vec<usize>, weights: Vec<f32>) -> Result<Self, MoeError> {
        if top_k == 0 || experts.len() != weights.len() || !experts.len().is_multiple_of(top_k) {
            return Err(MoeError::TopKTableLength {
                experts: experts.len(),
                weights: weights.len(),
                top_k,
            });
        }
        if let Some(&index) = experts.iter().find(|&&e| e >= n_experts) {
            return Err(MoeError::ExpertIndexOutOfRange { index, n_experts });
        }
        let mut r = Routing::default();
        r.rebuild(n_experts, top_k, experts, weights, &mut Vec::new());
        Ok(r)
    }

    /// The top-k tables, emptied, to be refilled and handed back to [`Self::rebuild`].
    fn take_tables(&mut self) -> (Vec<usize>, Vec<f32>) {
        let mut e = std::mem::take(&mut self.topk_experts);
        let mut w = std::mem::take(&mut self.topk_weights);
        e.clear();
        w.clear();
        (e, w)
    }

    /// Sets this routing to the given top-k tables (validated by the caller) and groups them by
    /// expert, reusing every buffer (`start`: scratch of at least `n_experts + 1` entries).
    fn rebuild(
        &mut self,
        n_experts: usize,
        top_k: usize,
        experts: Vec<usize>,
        weights: Vec<f32>,
        start: &mut Vec<usize>,
    ) {
        let len = experts.len();
        self.n_tokens = len / top_k;
        self.n_experts = n_experts;
        self.top_k = top_k;
        // counting sort by expert; tokens stay ascending inside each expert
        start.clear();
        start.resize(n_experts + 1, 0);
        for &e in &experts {
            start[e + 1] += 1;
        }
        for e in 0..n_experts {
            start[e + 1] += start[e];
        }
        self.active_experts.clear();
        self.offsets.clear();
        for e in 0..n_experts {
            if start[e + 1] > start[e] {
                self.active_experts.push(e);
                self.offsets.push(start[e]);
            }
        }
        self.offsets.push(len);
        // `start[e]` becomes the cursor of expert e
        self.expert_tokens.clear();
        self.expert_tokens.resize(len, 0);
        self.expert_weights.clear();
        self.expert_weights.resize(len, 0.0);
        for (slot, (&e, &w)) in experts.iter().zip(&weights).enumerate() {
            let at = start[e];
            self.expert_tokens[at] = slot / top_k;
            self.expert_weights[at] = w;
            start[e] += 1;
        }
        self.topk_experts = experts;
        self.topk_weights = weights;
    }

    /// Number of routed tokens.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(2, 1)?.route(&[0.0; 6], 3, None)?;
    /// assert_eq!(r.n_tokens(), 3);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Number of experts of the layer.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(2, 1)?.route(&[0.0; 6], 3, None)?;
    /// assert_eq!(r.n_experts(), 2);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    /// Experts per token.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(2, 1)?.route(&[0.0; 6], 3, None)?;
    /// assert_eq!(r.top_k(), 1);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Row-major `[n_tokens, top_k]` expert indices.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(2, 1)?.route(&[0.0, 1.0, 1.0, 0.0], 2, None)?;
    /// assert_eq!(r.topk_experts(), &[1, 0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn topk_experts(&self) -> &[usize] {
        &self.topk_experts
    }

    /// Row-major `[n_tokens, top_k]` weights (aligned with [`Routing::topk_experts`]).
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(2, 1)?.route(&[0.0, 1.0, 1.0, 0.0], 2, None)?;
    /// assert_eq!(r.topk_weights(), &[1.0, 1.0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn topk_weights(&self) -> &[f32] {
        &self.topk_weights
    }

    /// The experts chosen for `token`, best first. Panics if `token >= n_tokens`.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 2)?.route(&[0.0, 2.0, 1.0], 1, None)?;
    /// assert_eq!(r.token_experts(0), &[1, 2]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn token_experts(&self, token: usize) -> &[usize] {
        &self.topk_experts[token * self.top_k..(token + 1) * self.top_k]
    }

    /// The weights of the experts chosen for `token`. Panics if `token >= n_tokens`.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 2)?.route(&[0.0, 2.0, 2.0], 1, None)?;
    /// assert_eq!(r.token_weights(0), &[0.5, 0.5]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn token_weights(&self, token: usize) -> &[f32] {
        &self.topk_weights[token * self.top_k..(token + 1) * self.top_k]
    }

    /// The `(expert, weight)` pairs of `token`. Panics if `token >= n_tokens`.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 1)?.route(&[0.0, 2.0, 1.0], 1, None)?;
    /// assert_eq!(r.token(0).collect::<Vec<_>>(), vec![(1, 1.0)]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn token(&self, token: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.token_experts(token)
            .iter()
            .copied()
            .zip(self.token_weights(token).iter().copied())
    }

    /// Experts that received at least one token, ascending.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 1)?.route(&[0.0, 2.0, 1.0], 1, None)?;
    /// assert_eq!(r.active_experts(), &[1]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn active_experts(&self) -> &[usize] {
        &self.active_experts
    }

    /// The per-active-expert groups, in ascending expert order.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 1)?.route(&[0.0, 2.0, 1.0, 5.0, 0.0, 0.0], 2, None)?;
    /// let experts: Vec<usize> = r.expert_groups().map(|g| g.expert).collect();
    /// assert_eq!(experts, vec![0, 1]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn expert_groups(&self) -> impl ExactSizeIterator<Item = ExpertGroup<'_>> + '_ {
        (0..self.active_experts.len()).map(move |i| self.group_at(i))
    }

    /// The group of `expert`, or `None` when no token was routed to it.
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 1)?.route(&[0.0, 2.0, 1.0], 1, None)?;
    /// assert!(r.expert_group(0).is_none());
    /// assert_eq!(r.expert_group(1).unwrap().tokens, &[0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn expert_group(&self, expert: usize) -> Option<ExpertGroup<'_>> {
        self.active_experts
            .binary_search(&expert)
            .ok()
            .map(|i| self.group_at(i))
    }

    fn group_at(&self, i: usize) -> ExpertGroup<'_> {
        let range = self.offsets[i]..self.offsets[i + 1];
        ExpertGroup {
            expert: self.active_experts[i],
            tokens: &self.expert_tokens[range.clone()],
            weights: &self.expert_weights[range],
        }
    }

    /// Token-expert assignments per expert (length `n_experts`).
    ///
    /// ```
    /// let r = hearth_moe::RouterSpec::mixtral(3, 1)?.route(&[0.0, 2.0, 1.0, 0.0, 3.0, 0.0], 2, None)?;
    /// assert_eq!(r.expert_counts(), vec![0, 2, 0]);
    /// # Ok::<(), hearth_moe::MoeError>(())
    /// ```
    pub fn expert_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.n_experts];
        for (i, &e) in self.active_experts.iter().enumerate() {
            counts[e] = self.offsets[i + 1] - self.offsets[i];
        }
        counts
    }
}
