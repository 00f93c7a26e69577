//! Shared-expert specs (execution lives elsewhere).

/// How the shared-expert output is gated before it is added to the routed output.
///
/// ```
/// use hearth_moe::SharedExpertGate;
///
/// assert_eq!(SharedExpertGate::default(), SharedExpertGate::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SharedExpertGate {
    /// Added as is (DeepSeek-V3: `hidden + shared_experts(residuals)`).
    #[default]
    None,
    /// Scaled by `sigmoid(x @ w_gate.T)` with a `[1, hidden]` gate, per token (Qwen2-MoE's
    /// `shared_expert_gate`: `sigmoid(shared_expert_gate(x)) * shared_expert(x)`).
    Sigmoid,
}

/// Always-on experts that every token goes through, next to the routed ones.
///
/// transformers runs them as **one** MLP: Qwen2-MoE's `shared_expert` has
/// `shared_expert_intermediate_size`; DeepSeek-V3's `shared_experts` has
/// `moe_intermediate_size * n_shared_experts` (see [`SharedExpertSpec::fused_intermediate_size`]).
///
/// ```
/// use hearth_moe::{SharedExpertGate, SharedExpertSpec};
///
/// let q = SharedExpertSpec::qwen2_moe(5632);
/// assert_eq!((q.fused_intermediate_size(), q.gate), (5632, SharedExpertGate::Sigmoid));
/// let d = SharedExpertSpec::deepseek_v3(1, 2048);
/// assert_eq!(d.fused_intermediate_size(), 2048);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedExpertSpec {
    /// Number of shared experts (0 = none).
    pub n_shared_experts: usize,
    /// Intermediate size of one shared expert.
    pub intermediate_size: usize,
    /// Gate applied to the shared output.
    pub gate: SharedExpertGate,
}

impl SharedExpertSpec {
    /// Qwen2-MoE: one shared expert of `shared_expert_intermediate_size` with a sigmoid gate.
    ///
    /// ```
    /// let s = hearth_moe::SharedExpertSpec::qwen2_moe(5632);
    /// assert_eq!(s.n_shared_experts, 1);
    /// ```
    pub fn qwen2_moe(shared_expert_intermediate_size: usize) -> Self {
        Self {
            n_shared_experts: 1,
            intermediate_size: shared_expert_intermediate_size,
            gate: SharedExpertGate::Sigmoid,
        }
    }

    /// DeepSeek-V3: `n_shared_experts` experts of `moe_intermediate_size`, ungated.
    ///
    /// ```
    /// let s = hearth_moe::SharedExpertSpec::deepseek_v3(2, 1408);
    /// assert_eq!(s.fused_intermediate_size(), 2816);
    /// ```
    pub fn deepseek_v3(n_shared_experts: usize, moe_intermediate_size: usize) -> Self {
        Self {
            n_shared_experts,
            intermediate_size: moe_intermediate_size,
            gate: SharedExpertGate::None,
        }
    }

    /// Intermediate size of the single fused MLP that runs all shared experts.
    ///
    /// ```
    /// let s = hearth_moe::SharedExpertSpec::deepseek_v3(0, 1408);
    /// assert_eq!(s.fused_intermediate_size(), 0);
    /// ```
    pub fn fused_intermediate_size(&self) -> usize {
        self.n_shared_experts * self.intermediate_size
    }

    /// Whether there is any shared expert.
    ///
    /// ```
    /// assert!(hearth_moe::SharedExpertSpec::qwen2_moe(5632).is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.fused_intermediate_size() > 0
    }
}
