//! The sparse MoE feed-forward block: router → grouped expert execution → shared experts.
//!
//! Routing is `hearth_moe::RouterSpec` (one spec for every family). A decode step (a few
//! tokens) hands every token's k experts to [`HearthBackend::moe_experts`] at once: on the
//! cubecl backends two launches per token, whatever k is. A prefill is grouped by expert: the
//! tokens routed to an expert are gathered, pass through that expert's MLP in one matmul
//! chain, are scaled by their routing weights and scatter-added back. Either way a step reads
//! only the selected experts' weights.

use crate::config::{ModelConfig, RouterKind};
use crate::error::ModelError;
use crate::layers::{Linear, Loader, Mlp, sigmoid};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use hearth_backend::{Expert, HearthBackend};
use hearth_moe::{LoadStats, RouterSpec, Routing, ScoringFunc};
use std::sync::{Arc, Mutex};

/// Tokens per forward up to which the routed experts go to [`HearthBackend::moe_experts`]
/// (decode steps; the cubecl backends' grouped kernels take up to 4 rows).
const GROUPED_TOKENS: usize = 4;

/// One MoE layer.
pub struct MoeBlock<B: HearthBackend> {
    pub(crate) gate: Linear<B>,
    pub(crate) correction_bias: Option<Vec<f32>>,
    pub(crate) spec: RouterSpec,
    pub(crate) experts: Vec<Mlp<B>>,
    pub(crate) shared: Option<Mlp<B>>,
    pub(crate) shared_gate: Option<Linear<B>>,
    pub(crate) stats: Arc<Mutex<LoadStats>>,
}

impl<B: HearthBackend> MoeBlock<B> {
    /// Loads a MoE block; expert tensor names follow the family's checkpoint layout.
    pub fn load(l: &Loader<B>, cfg: &ModelConfig, prefix: &str) -> Result<Self, ModelError> {
        use crate::config::Architecture as A;
        let m = cfg.moe.as_ref().expect("MoE config");
        let hid = cfg.hidden_size;
        let (block, names) = match cfg.arch {
            A::Mixtral => (format!("{prefix}.block_sparse_moe"), ["w1", "w3", "w2"]),
            _ => (format!("{prefix}.mlp"), ["gate_proj", "up_proj", "down_proj"]),
        };
        let experts = (0..m.num_experts)
            .map(|e| {
                l.mlp(
                    &format!("{block}.experts.{e}"),
                    hid,
                    m.expert_intermediate,
                    false,
                    names,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scoring = match m.router {
            RouterKind::Softmax => ScoringFunc::Softmax,
            RouterKind::SigmoidGrouped => ScoringFunc::Sigmoid,
        };
        let mut spec = RouterSpec::new(m.num_experts, m.top_k, scoring)
            .with_renormalize(m.norm_topk_prob)
            .with_routed_scaling_factor(m.routed_scaling_factor as f32);
        let mut correction_bias = None;
        if m.router == RouterKind::SigmoidGrouped {
            spec = spec.with_renorm_epsilon(1e-20);
            if m.n_group > 1 {
                spec = spec.with_group_limit(m.n_group, m.topk_group);
            }
            let name = format!("{block}.gate.e_score_correction_bias");
            if l.store.contains(&name) {
                spec = spec.with_correction_bias(true);
                correction_bias = Some(l.store.f32(&name, Some(&[m.num_experts]))?.0);
            }
        }
        spec.validate().map_err(|e| ModelError::Config {
            file: "config.json".into(),
            field: "num_experts_per_tok / n_group / topk_group".into(),
            reason: e.to_string(),
        })?;
        let shared_name = if cfg.arch == A::Qwen2Moe {
            "shared_expert"
        } else {
            "shared_experts"
        };
        let shared = match m.shared_intermediate {
            Some(si) => Some(l.mlp(&format!("{block}.{shared_name}"), hid, si, false, names)?),
            None => None,
        };
        let shared_gate = if m.shared_gate {
            Some(l.linear(&format!("{block}.shared_expert_gate"), hid, 1, false)?)
        } else {
            None
        };
        Ok(Self {
            gate: l.linear(&format!("{block}.gate"), hid, m.num_experts, false)?,
            correction_bias,
            spec,
            experts,
            shared,
            shared_gate,
            stats: Arc::new(Mutex::new(LoadStats::new(m.num_experts))),
        })
    }

    /// Bytes of all this block's weights: router, every expert, shared expert and its gate.
    pub fn weight_bytes(&self) -> usize {
        self.gate.weight_bytes()
            + self.experts.iter().map(Mlp::weight_bytes).sum::<usize>()
            + self.shared.as_ref().map_or(0, Mlp::weight_bytes)
            + self.shared_gate.as_ref().map_or(0, Linear::weight_bytes)
    }

    /// Bytes one token's decode reads: router, shared expert, and top-k routed experts.
    pub fn decode_weight_bytes(&self) -> usize {
        let per_expert = self.experts.first().map_or(0, Mlp::weight_bytes);
        self.gate.weight_bytes()
            + self.spec.top_k * per_expert
            + self.shared.as_ref().map_or(0, Mlp::weight_bytes)
            + self.shared_gate.as_ref().map_or(0, Linear::weight_bytes)
    }

    /// Expert load statistics of this layer since the last reset.
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Clears the load statistics.
    pub fn reset_stats(&self) {
        self.stats.lock().expect("stats lock").reset();
    }

    /// `x: [B, T, hidden]`; `valid[i]` tells whether flattened token `i` is real (not padding),
    /// which only matters for load statistics.
    pub fn forward(&self, x: Tensor<B, 3>, valid: &[bool], layer: usize) -> Result<Tensor<B, 3>, ModelError> {
        let [b, t, hid] = x.dims();
        let n = b * t;
        let x = x.reshape([n, hid]);
        let logits = self.gate.forward(x.clone());
        let logits_host = logits.into_data().convert::<f32>().to_vec::<f32>().expect("f32 logits");
        let routing = self
            .spec
            .route(&logits_host, n, self.correction_bias.as_deref())
            .map_err(|source| ModelError::Moe { layer, source })?;
        let mut counts = vec![0u64; self.experts.len()];
        for (tok, ok) in valid.iter().enumerate() {
            if *ok {
                for &e in routing.token_experts(tok) {
                    counts[e] += 1;
                }
            }
        }
        self.stats
            .lock()
            .expect("stats lock")
            .record_counts(&counts)
            .map_err(|source| ModelError::Moe { layer, source })?;

        let mut out = match self.routed_experts(&routing, n) {
            // a decode step: every token's experts at once (two launches per token on the
            // cubecl backends)
            Some((experts, weights)) => {
                B::moe_experts(x.clone(), &experts, &weights).map_err(|source| ModelError::Backend {
                    tensor: format!("layer {layer}: routed experts"),
                    source,
                })?
            }
            None => self.experts_by_group(x.clone(), &routing, hid),
        };
        if let Some(shared) = &self.shared {
            let mut s = shared.forward(x.clone());
            if let Some(gate) = &self.shared_gate {
                s = s * sigmoid(gate.forward(x));
            }
            out = out + s;
        }
        Ok(out.reshape([b, t, hid]))
    }

    /// Each token's experts as operands of [`HearthBackend::moe_experts`] (token-major, with
    /// their routing weights), for a forward of at most [`GROUPED_TOKENS`] tokens on a backend
    /// whose weights live on the device; `None` otherwise (prefill, host weights, biases).
    fn routed_experts(&self, routing: &Routing, n: usize) -> Option<(Vec<Expert<'_, B>>, Vec<f32>)> {
        if B::HOST_KERNELS || n > GROUPED_TOKENS {
            return None;
        }
        let mut experts = Vec::with_capacity(n * routing.top_k());
        let mut weights = Vec::with_capacity(n * routing.top_k());
        for tok in 0..n {
            for (e, w) in routing.token(tok) {
                let m = &self.experts[e];
                if [&m.gate, &m.up, &m.down].iter().any(|l| l.bias.is_some()) {
                    return None;
                }
                experts.push(Expert {
                    gate: m.gate.weight.as_weight()?,
                    up: m.up.weight.as_weight()?,
                    down: m.down.weight.as_weight()?,
                });
                weights.push(w);
            }
        }
        Some((experts, weights))
    }

    /// Expert by expert: the tokens routed to an expert are gathered, pass through its MLP in
    /// one matmul chain, are scaled by their routing weights and scatter-added back.
    fn experts_by_group(&self, x: Tensor<B, 2>, routing: &Routing, hid: usize) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let device = x.device();
        let mut out = Tensor::<B, 2>::zeros([n, hid], &device);
        for g in routing.expert_groups() {
            let idx: Vec<i64> = g.tokens.iter().map(|&i| i as i64).collect();
            let m = idx.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [m]), &device);
            let w = Tensor::<B, 2>::from_data(TensorData::new(g.weights.to_vec(), [m, 1]), &device);
            let y = self.experts[g.expert].forward(x.clone().select(0, idx.clone())) * w;
            out = out.select_assign(0, idx, y, IndexingUpdateOp::Add);
        }
        out
    }
}
