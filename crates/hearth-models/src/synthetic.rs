//! Random-weight models of real shapes, for measuring speed without downloads.
//!
//! [`SyntheticSource`] is a [`TensorSource`] that invents every tensor on demand (uniform noise
//! with std 0.02, norms = 1, biases = 0), deterministically from a seed. With in-situ
//! quantization the f32 values of one matrix exist only while it is being packed.

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::TensorSource;
use rayon::prelude::*;
use serde_json::{Value, json};

/// Names accepted by [`synthetic_config`].
pub const SYNTHETIC_MODELS: [&str; 6] = [
    "llama-3.2-1b",
    "llama-3.1-8b",
    "qwen3-30b-a3b",
    "mixtral-8x7b",
    "olmoe-1b-7b",
    "moonlight-16b-a3b",
];

/// The HF `config.json` of a named real model shape.
///
/// ```
/// let v = hearth_models::synthetic::synthetic_config("llama-3.2-1b").unwrap();
/// assert_eq!(v["hidden_size"], 2048);
/// assert!(hearth_models::synthetic::synthetic_config("gpt-9").is_none());
/// ```
pub fn synthetic_config(name: &str) -> Option<Value> {
    let llama3_rope = json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    Some(match name {
        "llama-3.2-1b" => json!({"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rope_scaling": llama3_rope, "tie_word_embeddings": true}),
        "llama-3.1-8b" => json!({"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rope_scaling": llama3_rope, "tie_word_embeddings": false}),
        "qwen3-30b-a3b" => json!({"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048,
            "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
            "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
            "num_experts_per_tok": 8, "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "tie_word_embeddings": false}),
        "mixtral-8x7b" => json!({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": false}),
        "olmoe-1b-7b" => json!({"model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048,
            "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
            "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": false,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "rope_theta": 10000.0,
            "tie_word_embeddings": false}),
        // Moonshot's Moonlight-16B-A3B: DeepSeek-V3's architecture (MLA with a 512-wide latent,
        // sigmoid routing with a correction bias, 2 shared + 6 of 64 routed experts) at 16 heads
        "moonlight-16b-a3b" => json!({"model_type": "deepseek_v3", "vocab_size": 163840, "hidden_size": 2048,
            "intermediate_size": 11264, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
            "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
            "routed_scaling_factor": 2.446, "kv_lora_rank": 512, "q_lora_rank": null, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1,
            "num_experts_per_tok": 6, "first_k_dense_replace": 1, "norm_topk_prob": true,
            "scoring_func": "sigmoid", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 50000.0, "rope_scaling": null, "tie_word_embeddings": false}),
        _ => return None,
    })
}

/// A tensor source that invents weights for a config.
pub struct SyntheticSource {
    tied: bool,
    seed: u64,
}

impl SyntheticSource {
    /// Parses the named shape; returns its config and the source.
    pub fn new(name: &str, seed: u64) -> Result<(ModelConfig, Self), ModelError> {
        let v = synthetic_config(name).ok_or_else(|| ModelError::Config {
            file: "--synthetic".into(),
            field: "name".into(),
            reason: format!(
                "unknown synthetic model `{name}` (known: {})",
                SYNTHETIC_MODELS.join(", ")
            ),
        })?;
        let cfg = ModelConfig::from_json(&v, &format!("synthetic:{name}"))?;
        let src = Self::for_config(&cfg, seed);
        Ok((cfg, src))
    }

    /// Random weights (the same recipe as the named shapes) for any config, e.g. a small model
    /// with every width a multiple of 256 for the K-quant kernels.
    ///
    /// ```
    /// use hearth_models::{ModelConfig, synthetic::SyntheticSource, weights::TensorSource};
    /// let v = serde_json::json!({"model_type": "llama", "vocab_size": 512, "hidden_size": 256,
    ///     "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
    ///     "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64});
    /// let cfg = ModelConfig::from_json(&v, "tiny").unwrap();
    /// let src = SyntheticSource::for_config(&cfg, 7);
    /// let (w, shape) = src.f32("model.embed_tokens.weight", Some(&[512, 256])).unwrap();
    /// assert_eq!((w.len(), shape), (512 * 256, vec![512, 256]));
    /// ```
    pub fn for_config(cfg: &ModelConfig, seed: u64) -> Self {
        Self {
            tied: cfg.tie_word_embeddings,
            seed,
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TensorSource for SyntheticSource {
    fn contains(&self, name: &str) -> bool {
        !(self.tied && name == "lm_head.weight")
    }

    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let shape = expected
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.into(),
                files: "synthetic (shape unknown)".into(),
            })?
            .to_vec();
        let n: usize = shape.iter().product();
        if name.contains("norm") {
            return Ok((vec![1.0; n], shape));
        }
        if name.ends_with(".bias") {
            return Ok((vec![0.0; n], shape));
        }
        let key = name.bytes().fold(self.seed, |h, b| splitmix(h ^ b as u64));
        let amp = 0.02f32 * 3f32.sqrt();
        let mut v = vec![0.0f32; n];
        v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            let mut s = splitmix(key ^ c as u64);
            for x in chunk {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                *x = (2.0 * u - 1.0) * amp;
            }
        });
        Ok((v, shape))
    }
}

/// Records which tensors (HF names, shapes) a model loader asks for, handing out zeroed
/// stand-ins: matrices as zero-filled packed f32 rows (allocated zeroed, so the pages are never
/// touched), everything else as zero vectors.
struct ShapeProbe<'a> {
    inner: &'a dyn TensorSource,
    seen: std::sync::Mutex<Vec<(String, Vec<usize>)>>,
}

impl ShapeProbe<'_> {
    fn record(&self, name: &str, shape: Vec<usize>) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((name.to_string(), shape));
    }
}

impl TensorSource for ShapeProbe<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let shape = expected
            .ok_or_else(|| ModelError::MissingTensor {
                tensor: name.into(),
                files: "shape probe (shape unknown)".into(),
            })?
            .to_vec();
        self.record(name, shape.clone());
        Ok((vec![0.0; shape.iter().product()], shape))
    }

    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<crate::weights::PackedTensor>, ModelError> {
        self.record(name, vec![rows, cols]);
        Ok(Some(crate::weights::PackedTensor {
            format: hearth_quant::kernels::WeightFormat::F32,
            bytes: vec![0u8; rows * cols * 4].into(),
            rows,
            cols,
        }))
    }
}

/// The tensors (HF names and shapes, in load order, without repeats) that the model of `cfg`
/// reads from `src`: what a [`SyntheticSource`] must be asked for to export the whole model
/// (see [`crate::convert::write_gguf`]).
///
/// ```
/// let (cfg, src) = hearth_models::synthetic::SyntheticSource::new("llama-3.2-1b", 0).unwrap();
/// let t = hearth_models::synthetic::tensor_shapes(&cfg, &src).unwrap();
/// assert!(t.contains(&("model.layers.15.mlp.down_proj.weight".into(), vec![2048, 8192])));
/// assert_eq!(t.len(), 1 + 16 * 9 + 1); // embedding (tied head), 9 per layer, final norm
/// ```
#[cfg(feature = "cpu")]
pub fn tensor_shapes(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let probe = ShapeProbe {
        inner: src,
        seen: Default::default(),
    };
    let device = Default::default();
    let model = crate::CausalLm::<hearth_backend::Cpu>::load(cfg.clone(), &probe, &device)?;
    drop(model);
    let mut seen = probe
        .seen
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut names = std::collections::HashSet::new();
    seen.retain(|(n, _)| names.insert(n.clone()));
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::{SYNTHETIC_MODELS, SyntheticSource, synthetic_config};
    use crate::ModelConfig;

    #[test]
    fn every_named_shape_parses() {
        for name in SYNTHETIC_MODELS {
            let v = synthetic_config(name).unwrap();
            let cfg = ModelConfig::from_json(&v, name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cfg.vocab_size as u64, v["vocab_size"].as_u64().unwrap(), "{name}");
            assert!(SyntheticSource::new(name, 1).is_ok(), "{name}");
        }
        assert!(SyntheticSource::new("gpt-9", 1).is_err());
    }
}
