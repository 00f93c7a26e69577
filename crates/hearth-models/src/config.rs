//! HuggingFace `config.json` → [`ModelConfig`].
//!
//! One typed config covers every family hearth runs; per-family defaults follow the
//! transformers 5.x config classes. Unknown `model_type`s are rejected with a typed error.

use crate::error::ModelError;
use hearth_attention::{RopeConfig, RopeLayout};
use serde_json::Value;
use std::path::Path;

/// The model families hearth implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`
    Llama,
    /// `mistral`
    Mistral,
    /// `qwen2`
    Qwen2,
    /// `qwen3`
    Qwen3,
    /// `mixtral`
    Mixtral,
    /// `qwen2_moe`
    Qwen2Moe,
    /// `qwen3_moe`
    Qwen3Moe,
    /// `olmoe`
    Olmoe,
    /// `deepseek_v3`
    DeepseekV3,
}

impl Architecture {
    /// Parses a HF `model_type`.
    pub fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "mixtral" => Self::Mixtral,
            "qwen2_moe" => Self::Qwen2Moe,
            "qwen3_moe" => Self::Qwen3Moe,
            "olmoe" => Self::Olmoe,
            "deepseek_v3" => Self::DeepseekV3,
            _ => return None,
        })
    }

    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Mixtral => "mixtral",
            Self::Qwen2Moe => "qwen2_moe",
            Self::Qwen3Moe => "qwen3_moe",
            Self::Olmoe => "olmoe",
            Self::DeepseekV3 => "deepseek_v3",
        }
    }
}

/// Where query/key RMSNorm sits, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// No q/k norm (Llama, Mistral, Qwen2, Mixtral).
    None,
    /// RMSNorm over each head's `head_dim` (Qwen3, Qwen3-MoE).
    PerHead,
    /// RMSNorm over the whole projection, before splitting heads (OLMoE).
    Full,
}

/// Multi-head latent attention (DeepSeek-V2/V3) dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query compression; `None` = plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed KV latent.
    pub kv_lora_rank: usize,
    /// Per-head query/key width without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head width of the decoupled RoPE query/key.
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
}

/// How a MoE layer routes (see `hearth_moe::RouterSpec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterKind {
    /// Softmax over all experts then top-k (Mixtral, Qwen-MoE, OLMoE).
    Softmax,
    /// Sigmoid scores, correction bias and group-limited top-k (DeepSeek-V3).
    SigmoidGrouped,
}

/// Mixture-of-experts settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Intermediate width of one routed expert.
    pub expert_intermediate: usize,
    /// Renormalise the kept weights.
    pub norm_topk_prob: bool,
    /// Scoring family.
    pub router: RouterKind,
    /// Expert groups (DeepSeek `n_group`).
    pub n_group: usize,
    /// Groups kept (DeepSeek `topk_group`).
    pub topk_group: usize,
    /// Multiplier on routed weights.
    pub routed_scaling_factor: f64,
    /// Intermediate width of the (fused) shared expert, if any.
    pub shared_intermediate: Option<usize>,
    /// Whether the shared expert has a sigmoid gate (Qwen2-MoE).
    pub shared_gate: bool,
    /// Which layers are sparse.
    pub sparse_layers: Vec<bool>,
}

/// Everything needed to build a decoder, parsed from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Family.
    pub arch: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RoPE.
    pub rope: RopeConfig,
    /// Pair layout of RoPE inside a head.
    pub rope_layout: RopeLayout,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// q/k norm placement.
    pub qk_norm: QkNorm,
    /// Sliding window per layer (`None` = full attention).
    pub sliding_window: Vec<Option<usize>>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
    /// EOS ids (config and generation_config merged).
    pub eos_token_ids: Vec<u32>,
    /// MoE settings.
    pub moe: Option<MoeConfig>,
    /// MLA settings.
    pub mla: Option<MlaConfig>,
    /// Softmax scale of attention scores.
    pub attention_scale: f64,
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

struct Fields<'a> {
    v: &'a Value,
    file: String,
}

impl Fields<'_> {
    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::Config {
            file: self.file.clone(),
            field: key.to_string(),
            reason: "missing".into(),
        })
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| ModelError::Config {
                file: self.file.clone(),
                field: key.to_string(),
                reason: format!("expected a non-negative integer, got {x}"),
            }),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.v.get(key).and_then(Value::as_f64).unwrap_or(default)
    }
    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.v.get(key).and_then(Value::as_bool).unwrap_or(default)
    }
}

impl ModelConfig {
    /// Reads `config.json` (and `generation_config.json` beside it, if present) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: path.display().to_string(),
            field: "<json>".into(),
            reason: e.to_string(),
        })?;
        let mut cfg = Self::from_json(&v, &path.display().to_string())?;
        let gpath = dir.join("generation_config.json");
        if let Ok(gtext) = std::fs::read_to_string(&gpath) {
            let g: Value = serde_json::from_str(&gtext).map_err(|e| ModelError::Config {
                file: gpath.display().to_string(),
                field: "<json>".into(),
                reason: e.to_string(),
            })?;
            for id in ids(g.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses a config object; `file` names it in errors.
    ///
    /// ```
    /// let v = serde_json::json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 8,
    ///   "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2});
    /// let c = hearth_models::ModelConfig::from_json(&v, "config.json").unwrap();
    /// assert_eq!((c.head_dim, c.num_kv_heads), (4, 2));
    /// let bad = serde_json::json!({"model_type": "gpt9"});
    /// assert!(hearth_models::ModelConfig::from_json(&bad, "config.json").is_err());
    /// ```
    pub fn from_json(v: &Value, file: &str) -> Result<Self, ModelError> {
        let f = Fields {
            v,
            file: file.to_string(),
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("<missing>");
        let arch = Architecture::from_model_type(model_type).ok_or_else(|| ModelError::UnknownModelType {
            file: file.to_string(),
            model_type: model_type.to_string(),
        })?;
        use Architecture as A;
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_layers = f.usize("num_hidden_layers")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(ModelError::Config {
                file: file.into(),
                field: "num_attention_heads".into(),
                reason: "must be positive".into(),
            });
        }
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::Config {
                file: file.into(),
                field: "num_key_value_heads".into(),
                reason: format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            });
        }
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        let max_pos = f.opt_usize("max_position_embeddings")?.unwrap_or(4096);
        let mla = if arch == A::DeepseekV3 {
            Some(MlaConfig {
                q_lora_rank: f.opt_usize("q_lora_rank")?,
                kv_lora_rank: f.usize("kv_lora_rank")?,
                qk_nope_head_dim: f.usize("qk_nope_head_dim")?,
                qk_rope_head_dim: f.usize("qk_rope_head_dim")?,
                v_head_dim: f.usize("v_head_dim")?,
            })
        } else {
            None
        };
        let rope_dim = match &mla {
            Some(m) => m.qk_rope_head_dim,
            None => (head_dim as f64 * f.f64_or("partial_rotary_factor", 1.0)) as usize,
        };
        let rope = RopeConfig::from_hf(v, rope_dim, max_pos).map_err(|e| ModelError::Config {
            file: file.into(),
            field: "rope_scaling".into(),
            reason: e.to_string(),
        })?;
        // DeepSeek's MLA defaults to interleaved pairs; other families use HF's rotate-half
        // unless the config says otherwise (GGUF `llama` files read without un-permuting
        // their Q/K rows, see `GgufSource::keep_rope_permutation`)
        let rope_layout = if f.bool_or("rope_interleave", mla.is_some()) {
            RopeLayout::Interleaved
        } else {
            RopeLayout::Half
        };
        let attention_bias = f.bool_or("attention_bias", false);
        let (qkv_bias, o_bias) = match arch {
            A::Qwen2 => (true, false),
            A::Qwen2Moe => (f.bool_or("qkv_bias", true), false),
            A::Mistral | A::Mixtral => (false, false),
            A::DeepseekV3 => (false, false),
            _ => (attention_bias, attention_bias),
        };
        let qk_norm = match arch {
            A::Qwen3 | A::Qwen3Moe => QkNorm::PerHead,
            A::Olmoe => QkNorm::Full,
            _ => QkNorm::None,
        };
        // Sliding window: transformers v5 `layer_types`, else per-family rules.
        let window = f.opt_usize("sliding_window")?.filter(|&w| w > 0);
        let layer_types: Option<Vec<String>> = v.get("layer_types").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("full_attention").to_string())
                .collect()
        });
        let sliding_window = (0..num_layers)
            .map(|i| match (&layer_types, arch) {
                (Some(t), _) => window.filter(|_| t.get(i).is_some_and(|s| s == "sliding_attention")),
                (None, A::Mistral | A::Mixtral) => window,
                (None, A::Qwen2 | A::Qwen3 | A::Qwen2Moe | A::Qwen3Moe) => {
                    let use_sw = f.bool_or("use_sliding_window", false);
                    let mwl = f.opt_usize("max_window_layers").ok().flatten().unwrap_or(num_layers);
                    window.filter(|_| use_sw && i >= mwl)
                }
                _ => None,
            })
            .collect();
        let moe = parse_moe(&f, arch, num_layers)?;
        let attention_scale = match &mla {
            Some(m) => {
                let qk = (m.qk_nope_head_dim + m.qk_rope_head_dim) as f64;
                let mut s = qk.powf(-0.5);
                if let hearth_attention::RopeScaling::Yarn {
                    mscale_all_dim: Some(ma),
                    factor,
                    ..
                } = rope.scaling
                    && ma != 0.0
                {
                    let m = if factor <= 1.0 {
                        1.0
                    } else {
                        0.1 * ma * factor.ln() + 1.0
                    };
                    s *= m * m;
                }
                s
            }
            None => (head_dim as f64).powf(-0.5),
        };
        let intermediate_size = f.opt_usize("intermediate_size")?.unwrap_or(4 * hidden_size);
        Ok(ModelConfig {
            arch,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6),
            max_position_embeddings: max_pos,
            rope,
            rope_layout,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false),
            qkv_bias,
            o_bias,
            mlp_bias: f.bool_or("mlp_bias", false),
            qk_norm,
            sliding_window,
            bos_token_id: ids(v.get("bos_token_id")).first().copied(),
            eos_token_ids: ids(v.get("eos_token_id")),
            moe,
            mla,
            attention_scale,
        })
    }

    /// Whether layer `i` has a MoE FFN.
    pub fn is_sparse(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.sparse_layers[i])
    }
}

fn parse_moe(f: &Fields, arch: Architecture, num_layers: usize) -> Result<Option<MoeConfig>, ModelError> {
    use Architecture as A;
    let top_k = || f.usize("num_experts_per_tok");
    let m = match arch {
        A::Mixtral => MoeConfig {
            num_experts: f.usize("num_local_experts")?,
            top_k: top_k()?,
            expert_intermediate: f.usize("intermediate_size")?,
            norm_topk_prob: true,
            router: RouterKind::Softmax,
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
            shared_intermediate: None,
            shared_gate: false,
            sparse_layers: vec![true; num_layers],
        },
        A::Qwen2Moe | A::Qwen3Moe => {
            let step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
            let only: Vec<usize> =
                f.v.get("mlp_only_layers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_u64).map(|x| x as usize).collect())
                    .unwrap_or_default();
            // transformers 5 renamed Qwen3-MoE's `num_experts` to `num_local_experts`
            let n = match f.opt_usize("num_experts")? {
                Some(n) => n,
                None => f.usize("num_local_experts")?,
            };
            let shared = if arch == A::Qwen2Moe {
                f.opt_usize("shared_expert_intermediate_size")?.filter(|&s| s > 0)
            } else {
                None
            };
            MoeConfig {
                num_experts: n,
                top_k: top_k()?,
                expert_intermediate: f.usize("moe_intermediate_size")?,
                norm_topk_prob: f.bool_or("norm_topk_prob", false),
                router: RouterKind::Softmax,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 1.0,
                shared_intermediate: shared,
                shared_gate: shared.is_some(),
                sparse_layers: (0..num_layers)
                    .map(|i| !only.contains(&i) && n > 0 && (i + 1) % step == 0)
                    .collect(),
            }
        }
        A::Olmoe => MoeConfig {
            num_experts: match f.opt_usize("num_experts")? {
                Some(n) => n,
                None => f.usize("num_local_experts")?,
            },
            top_k: top_k()?,
            expert_intermediate: f.usize("intermediate_size")?,
            norm_topk_prob: f.bool_or("norm_topk_prob", false),
            router: RouterKind::Softmax,
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 1.0,
            shared_intermediate: None,
            shared_gate: false,
            sparse_layers: vec![true; num_layers],
        },
        A::DeepseekV3 => {
            let n = f.usize("n_routed_experts")?;
            let first_dense = f.opt_usize("first_k_dense_replace")?.unwrap_or(0);
            let freq = f.opt_usize("moe_layer_freq")?.unwrap_or(1).max(1);
            let expert = f.usize("moe_intermediate_size")?;
            let n_shared = f.opt_usize("n_shared_experts")?.unwrap_or(0);
            MoeConfig {
                num_experts: n,
                top_k: top_k()?,
                expert_intermediate: expert,
                norm_topk_prob: f.bool_or("norm_topk_prob", true),
                router: RouterKind::SigmoidGrouped,
                n_group: f.opt_usize("n_group")?.unwrap_or(1).max(1),
                topk_group: f.opt_usize("topk_group")?.unwrap_or(1).max(1),
                routed_scaling_factor: f.f64_or("routed_scaling_factor", 1.0),
                shared_intermediate: (n_shared > 0).then_some(expert * n_shared),
                shared_gate: false,
                sparse_layers: (0..num_layers)
                    .map(|i| n > 0 && i >= first_dense && i % freq == 0)
                    .collect(),
            }
        }
        _ => return Ok(None),
    };
    if m.top_k == 0 || m.top_k > m.num_experts {
        return Err(ModelError::Config {
            file: f.file.clone(),
            field: "num_experts_per_tok".into(),
            reason: format!("{} must be in 1..={}", m.top_k, m.num_experts),
        });
    }
    Ok(Some(m))
}
