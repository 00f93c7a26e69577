//! Conversion between GGUF checkpoints and the HuggingFace layout.
//!
//! - [`gguf_to_hf`]: GGUF → `config.json` + `model.safetensors` (f32 or bf16), with the
//!   llama.cpp Q/K row permutation undone. The tokenizer files are written by
//!   `hearth_engine::gguf_tokenizer::write_hf_tokenizer`.
//! - [`hf_to_gguf`]: HF checkpoint directory → llama.cpp-compatible GGUF (`llama`, `qwen2`,
//!   `qwen3` architectures; F32/F16/BF16 or any block type hearth-quant can quantize to),
//!   including byte-level BPE tokenizer metadata when `tokenizer.json` is one.
//!
//! ```no_run
//! use hearth_models::convert::{HfDtype, gguf_to_hf, hf_to_gguf};
//! use std::path::Path;
//! gguf_to_hf(Path::new("model.gguf"), Path::new("out_dir"), HfDtype::F32).unwrap();
//! hf_to_gguf(Path::new("out_dir"), Path::new("model.q8_0.gguf"), hearth_quant::GgmlType::Q8_0).unwrap();
//! ```

use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::gguf::{GgufSource, gguf_name, llama3_rope_factors, permute_rows};
use crate::weights::{TensorSource, WeightStore};
use hearth_attention::RopeScaling;
use hearth_quant::GgmlType;
use hearth_quant::gguf::{GgufWriter, MetadataValue};
use serde_json::Value;
use std::path::Path;

/// The dtype of the tensors [`gguf_to_hf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// 32-bit float (exact for every GGUF type).
    F32,
    /// bfloat16 (round to nearest even).
    Bf16,
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Converts a GGUF checkpoint to a HF directory: `config.json` and `model.safetensors`.
///
/// Every tensor is dequantized (quantized GGUFs become f32/bf16 copies of the dequantized
/// weights); `attn_q`/`attn_k` rows are restored to the HF rotate-half order.
///
/// ```no_run
/// use hearth_models::convert::{HfDtype, gguf_to_hf};
/// gguf_to_hf(std::path::Path::new("m.gguf"), std::path::Path::new("m_hf"), HfDtype::Bf16).unwrap();
/// ```
pub fn gguf_to_hf(gguf: &Path, out: &Path, dtype: HfDtype) -> Result<(), ModelError> {
    let src = GgufSource::open(gguf)?;
    let mut cfg = src.config_json()?;
    ModelConfig::from_json(&cfg, &gguf.display().to_string())?;
    if let Value::Object(o) = &mut cfg {
        o.insert(
            "torch_dtype".into(),
            Value::from(if dtype == HfDtype::F32 { "float32" } else { "bfloat16" }),
        );
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let cfg_path = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| write_err(&cfg_path, e))?;
    std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))?;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in src.hf_tensor_names() {
        let (v, shape) = src.f32(&name, None)?;
        let bytes: Vec<u8> = match dtype {
            HfDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HfDtype::Bf16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        };
        tensors.push((name, shape, bytes));
    }
    let st_dtype = match dtype {
        HfDtype::F32 => safetensors::Dtype::F32,
        HfDtype::Bf16 => safetensors::Dtype::BF16,
    };
    let path = out.join("model.safetensors");
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| write_err(&path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| write_err(&path, e))
}

/// llama.cpp architecture for a HF model type, and whether Q/K rows are permuted.
fn gguf_arch(arch: Architecture) -> Option<(&'static str, bool)> {
    match arch {
        Architecture::Llama | Architecture::Mistral | Architecture::Mixtral => Some(("llama", true)),
        Architecture::Qwen2 => Some(("qwen2", false)),
        Architecture::Qwen3 => Some(("qwen3", false)),
        Architecture::Qwen2Moe => Some(("qwen2moe", false)),
        Architecture::Qwen3Moe => Some(("qwen3moe", false)),
        Architecture::Olmoe => Some(("olmoe", false)),
        Architecture::DeepseekV3 => Some(("deepseek2", false)),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Converts a HF checkpoint directory to a llama.cpp-style GGUF file.
///
/// Matrices are stored as `ty` (falling back to F32 when a row is not a whole number of
/// blocks); norms, biases and other 1-D tensors stay F32. Mixtral experts are written merged
/// (`ffn_gate_exps` ...), as current llama.cpp does. Llama 3 rope scaling becomes
/// `rope_freqs.weight`. Tokenizer metadata is added for byte-level BPE `tokenizer.json`s.
///
/// ```no_run
/// use hearth_models::convert::hf_to_gguf;
/// hf_to_gguf(std::path::Path::new("llama_dir"), std::path::Path::new("llama.gguf"), hearth_quant::GgmlType::F32).unwrap();
/// ```
pub fn hf_to_gguf(dir: &Path, out: &Path, ty: GgmlType) -> Result<(), ModelError> {
    let cfg_file = dir.join("config.json").display().to_string();
    let cfg = ModelConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    let name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let tensors: Vec<(String, Option<Vec<usize>>)> = store.names().map(|n| (n.to_string(), None)).collect();
    let source = GgufExportSource {
        name: &name,
        config_file: &cfg_file,
        tensors: &tensors,
        weights: &store,
        tokenizer_dir: Some(dir),
    };
    write_gguf(&cfg, &source, out, ty)
}

/// What [`write_gguf`] exports: a model's tensors (HF names) and where its tokenizer lives.
pub struct GgufExportSource<'a> {
    /// `general.name`.
    pub name: &'a str,
    /// Where the config came from (named in errors).
    pub config_file: &'a str,
    /// HF tensor names, with their shapes when the source needs them to produce the values
    /// (a [`crate::synthetic::SyntheticSource`] does; a checkpoint does not).
    pub tensors: &'a [(String, Option<Vec<usize>>)],
    /// The values.
    pub weights: &'a dyn TensorSource,
    /// A directory with `tokenizer.json` (+ `tokenizer_config.json`); `None` writes
    /// `tokenizer.ggml.model = "none"` and `vocab_size` dummy tokens, which llama.cpp loads
    /// (its `llama-bench` needs no tokenizer).
    pub tokenizer_dir: Option<&'a Path>,
}

/// Writes a llama.cpp-compatible GGUF of `cfg` with the tensors of `src` (see [`hf_to_gguf`]
/// for the layout). A random-weight model of a real shape can be exported with
/// [`crate::synthetic::SyntheticSource`] and [`crate::synthetic::tensor_shapes`]:
///
/// ```no_run
/// use hearth_models::convert::{GgufExportSource, write_gguf};
/// use hearth_models::synthetic::{SyntheticSource, tensor_shapes};
/// let (cfg, src) = SyntheticSource::new("llama-3.2-1b", 0).unwrap();
/// let tensors: Vec<_> = tensor_shapes(&cfg, &src).unwrap().into_iter().map(|(n, s)| (n, Some(s))).collect();
/// let export = GgufExportSource { name: "llama-3.2-1b", config_file: "synthetic", tensors: &tensors,
///     weights: &src, tokenizer_dir: None };
/// write_gguf(&cfg, &export, std::path::Path::new("llama-3.2-1b.q4_0.gguf"), hearth_quant::GgmlType::Q4_0).unwrap();
/// ```
pub fn write_gguf(cfg: &ModelConfig, src: &GgufExportSource<'_>, out: &Path, ty: GgmlType) -> Result<(), ModelError> {
    let cfg_file = src.config_file.to_string();
    let (arch, permute) = gguf_arch(cfg.arch).ok_or_else(|| ModelError::UnknownModelType {
        file: cfg_file.clone(),
        model_type: format!(
            "{} (GGUF export supports llama, mistral, mixtral, qwen2, qwen3, qwen2_moe, qwen3_moe, olmoe, deepseek_v3)",
            cfg.arch.model_type()
        ),
    })?;
    if cfg.sliding_window.iter().any(Option::is_some) {
        return Err(ModelError::Config {
            file: cfg_file,
            field: "sliding_window".into(),
            reason: "sliding-window attention cannot be expressed in GGUF llama metadata".into(),
        });
    }
    let mut w = GgufWriter::new();
    let gerr = |e: hearth_quant::gguf::GgufError| write_err(out, e);
    let k = |s: &str| format!("{arch}.{s}");
    w.add_metadata("general.architecture", arch).map_err(gerr)?;
    w.add_metadata("general.name", src.name).map_err(gerr)?;
    let u = |x: usize| MetadataValue::U32(x as u32);
    w.add_metadata(k("block_count"), u(cfg.num_layers)).map_err(gerr)?;
    w.add_metadata(k("context_length"), u(cfg.max_position_embeddings))
        .map_err(gerr)?;
    w.add_metadata(k("embedding_length"), u(cfg.hidden_size))
        .map_err(gerr)?;
    let ff = match (&cfg.moe, cfg.arch) {
        (Some(m), Architecture::Mixtral | Architecture::Olmoe) => m.expert_intermediate,
        _ => cfg.intermediate_size,
    };
    w.add_metadata(k("feed_forward_length"), u(ff)).map_err(gerr)?;
    w.add_metadata(k("attention.head_count"), u(cfg.num_heads))
        .map_err(gerr)?;
    match &cfg.mla {
        None => {
            w.add_metadata(k("attention.head_count_kv"), u(cfg.num_kv_heads))
                .map_err(gerr)?;
            w.add_metadata(k("attention.key_length"), u(cfg.head_dim))
                .map_err(gerr)?;
            w.add_metadata(k("attention.value_length"), u(cfg.head_dim))
                .map_err(gerr)?;
        }
        Some(m) => {
            // llama.cpp's MLA layout: MQA over the latent (key = latent + rope, value = latent)
            if cfg.rope_layout != hearth_attention::RopeLayout::Interleaved {
                return Err(ModelError::Config {
                    file: cfg_file,
                    field: "rope_interleave".into(),
                    reason: "llama.cpp's deepseek2 applies interleaved RoPE; rope_interleave=false cannot be written"
                        .into(),
                });
            }
            for (key, v) in [
                ("attention.head_count_kv", 1),
                ("attention.key_length", m.kv_lora_rank + m.qk_rope_head_dim),
                ("attention.value_length", m.kv_lora_rank),
                ("attention.key_length_mla", m.qk_nope_head_dim + m.qk_rope_head_dim),
                ("attention.value_length_mla", m.v_head_dim),
                ("attention.kv_lora_rank", m.kv_lora_rank),
            ] {
                w.add_metadata(k(key), u(v)).map_err(gerr)?;
            }
            if let Some(r) = m.q_lora_rank {
                w.add_metadata(k("attention.q_lora_rank"), u(r)).map_err(gerr)?;
            }
        }
    }
    w.add_metadata(k("attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps as f32)
        .map_err(gerr)?;
    w.add_metadata(k("rope.freq_base"), cfg.rope.theta as f32)
        .map_err(gerr)?;
    w.add_metadata(k("rope.dimension_count"), u(cfg.rope.dim))
        .map_err(gerr)?;
    w.add_metadata(k("vocab_size"), u(cfg.vocab_size)).map_err(gerr)?;
    if let Some(m) = &cfg.moe {
        w.add_metadata(k("expert_count"), u(m.num_experts)).map_err(gerr)?;
        w.add_metadata(k("expert_used_count"), u(m.top_k)).map_err(gerr)?;
        add_moe_metadata(cfg, m, &cfg_file, &mut w, &k, out)?;
    }
    match cfg.rope.scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            w.add_metadata(k("rope.scaling.type"), "linear").map_err(gerr)?;
            w.add_metadata(k("rope.scaling.factor"), factor as f32).map_err(gerr)?;
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max,
        } => {
            let f = llama3_rope_factors(
                cfg.rope.theta,
                cfg.rope.dim,
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max as u64,
            );
            w.add_metadata(k("rope.scaling.original_context_length"), u(original_max))
                .map_err(gerr)?;
            w.add_tensor("rope_freqs.weight", GgmlType::F32, &[f.len() as u64], f32_bytes(&f))
                .map_err(gerr)?;
        }
        RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        } => {
            // DeepSeek's mscale pair is stored as one log multiplier (llama.cpp requires them equal)
            let log_mul = match (cfg.mla.is_some(), mscale, mscale_all_dim) {
                (true, Some(a), Some(b)) if a == b => Some(0.1 * b),
                (_, None, None) => None,
                _ => {
                    return Err(ModelError::Config {
                        file: cfg_file,
                        field: "rope_scaling.mscale".into(),
                        reason: "GGUF stores one YaRN log multiplier: mscale must equal mscale_all_dim (DeepSeek only)"
                            .into(),
                    });
                }
            };
            if attention_factor.is_some() || !truncate {
                return Err(ModelError::Config {
                    file: cfg_file,
                    field: "rope_scaling".into(),
                    reason: "YaRN attention_factor / truncate=false cannot be written to GGUF".into(),
                });
            }
            w.add_metadata(k("rope.scaling.type"), "yarn").map_err(gerr)?;
            w.add_metadata(k("rope.scaling.factor"), factor as f32).map_err(gerr)?;
            w.add_metadata(k("rope.scaling.original_context_length"), u(original_max))
                .map_err(gerr)?;
            w.add_metadata(k("rope.scaling.yarn_beta_fast"), beta_fast as f32)
                .map_err(gerr)?;
            w.add_metadata(k("rope.scaling.yarn_beta_slow"), beta_slow as f32)
                .map_err(gerr)?;
            if let Some(m) = log_mul {
                w.add_metadata(k("rope.scaling.yarn_log_multiplier"), m as f32)
                    .map_err(gerr)?;
            }
        }
        ref other => {
            return Err(ModelError::Config {
                file: cfg_file,
                field: "rope_scaling".into(),
                reason: format!("{other:?} cannot be written to GGUF yet"),
            });
        }
    }
    if let Some(id) = cfg.bos_token_id {
        w.add_metadata("tokenizer.ggml.bos_token_id", id).map_err(gerr)?;
    }
    if let Some(&id) = cfg.eos_token_ids.first() {
        w.add_metadata("tokenizer.ggml.eos_token_id", id).map_err(gerr)?;
    }
    match src.tokenizer_dir {
        Some(dir) => crate::gguf_vocab::add_tokenizer_metadata(dir, &mut w, cfg.vocab_size)?,
        None => w.add_metadata("tokenizer.ggml.model", "none").map_err(gerr)?,
    }

    // tensors, in a stable order
    let mut names: Vec<&(String, Option<Vec<usize>>)> = src.tensors.iter().collect();
    names.sort_by_key(|(n, _)| natural_key(n));
    names.dedup_by(|a, b| a.0 == b.0);
    let mut merged: std::collections::BTreeMap<String, (Vec<usize>, Vec<Vec<f32>>)> = Default::default();
    for (hf, expected) in names {
        let hf = hf.as_str();
        if cfg.tie_word_embeddings && hf == "lm_head.weight" {
            continue;
        }
        let Some((g, expert)) = gguf_name(hf) else {
            return Err(ModelError::Config {
                file: cfg_file,
                field: hf.to_string(),
                reason: "tensor has no GGUF equivalent".into(),
            });
        };
        let (mut v, shape) = src.weights.f32(hf, expected.as_deref())?;
        if let Some(m) = &cfg.mla
            && hf.ends_with("self_attn.kv_b_proj.weight")
        {
            // current llama.cpp wants kv_b split per head into k_b (transposed) and v_b
            let stem = g.strip_suffix(".attn_kv_b.weight").unwrap_or(&g);
            let (h, nope, vd, r) = (cfg.num_heads, m.qk_nope_head_dim, m.v_head_dim, m.kv_lora_rank);
            if shape != [h * (nope + vd), r] {
                return Err(ModelError::Shape {
                    file: cfg_file,
                    tensor: hf.to_string(),
                    expected: vec![h * (nope + vd), r],
                    actual: shape,
                });
            }
            let (mut k_b, mut v_b) = (Vec::with_capacity(h * nope * r), Vec::with_capacity(h * vd * r));
            for head in 0..h {
                let base = head * (nope + vd);
                for c in 0..r {
                    k_b.extend((0..nope).map(|i| v[(base + i) * r + c]));
                }
                v_b.extend_from_slice(&v[(base + nope) * r..(base + nope + vd) * r]);
            }
            add_tensor(&mut w, &format!("{stem}.attn_k_b.weight"), &[h, r, nope], &k_b, ty, out)?;
            add_tensor(&mut w, &format!("{stem}.attn_v_b.weight"), &[h, vd, r], &v_b, ty, out)?;
            continue;
        }
        if hf.ends_with("shared_expert_gate.weight") {
            // llama.cpp: `ffn_gate_inp_shexp` is `{n_embd}`
            add_tensor(&mut w, &g, &[v.len()], &v, GgmlType::F32, out)?;
            continue;
        }
        if g.ends_with("ffn_gate_inp.weight") {
            // routers stay F32, as llama-quantize keeps them
            add_tensor(&mut w, &g, &shape, &v, GgmlType::F32, out)?;
            continue;
        }
        if let Some(e) = expert {
            let entry = merged.entry(g).or_insert_with(|| (shape.clone(), Vec::new()));
            if entry.1.len() != e || entry.0 != shape {
                return Err(ModelError::Config {
                    file: cfg_file,
                    field: hf.to_string(),
                    reason: "experts must be numbered from 0 and share one shape".into(),
                });
            }
            entry.1.push(v);
            continue;
        }
        if permute {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if g.ends_with("attn_q.weight") || g.ends_with("attn_q.bias") {
                v = permute_rows(&v, cfg.num_heads, cols);
            } else if g.ends_with("attn_k.weight") || g.ends_with("attn_k.bias") {
                v = permute_rows(&v, cfg.num_kv_heads, cols);
            }
        }
        add_tensor(&mut w, &g, &shape, &v, ty, out)?;
    }
    for (g, (shape, experts)) in merged {
        let mut full_shape = vec![experts.len()];
        full_shape.extend(&shape);
        let v: Vec<f32> = experts.concat();
        add_tensor(&mut w, &g, &full_shape, &v, ty, out)?;
    }
    w.write_file(out).map_err(gerr)?;
    Ok(())
}

/// MoE metadata beyond `expert_count`/`expert_used_count`, as llama.cpp's converters write
/// it. Layer patterns llama.cpp cannot express (Qwen's `mlp_only_layers`, DeepSeek's
/// `moe_layer_freq`) are errors.
fn add_moe_metadata(
    cfg: &ModelConfig,
    m: &crate::config::MoeConfig,
    cfg_file: &str,
    w: &mut GgufWriter<'_>,
    k: &dyn Fn(&str) -> String,
    out: &Path,
) -> Result<(), ModelError> {
    let u = |x: usize| MetadataValue::U32(x as u32);
    let leading_dense = m.sparse_layers.iter().take_while(|s| !**s).count();
    let pattern_ok = match cfg.arch {
        Architecture::DeepseekV3 => m.sparse_layers[leading_dense..].iter().all(|s| *s),
        _ => m.sparse_layers.iter().all(|s| *s),
    };
    if !pattern_ok {
        return Err(ModelError::Config {
            file: cfg_file.to_string(),
            field: "mlp_only_layers".into(),
            reason: "llama.cpp expects every layer (after DeepSeek's leading dense ones) to be sparse".into(),
        });
    }
    let add =
        |w: &mut GgufWriter<'_>, key: &str, v: MetadataValue| w.add_metadata(k(key), v).map_err(|e| write_err(out, e));
    if cfg.arch == Architecture::Mixtral {
        return Ok(());
    }
    add(w, "expert_feed_forward_length", u(m.expert_intermediate))?;
    add(w, "expert_weights_norm", MetadataValue::Bool(m.norm_topk_prob))?;
    if let (Architecture::Qwen2Moe, Some(s)) = (cfg.arch, m.shared_intermediate) {
        add(w, "expert_shared_feed_forward_length", u(s))?;
    }
    if cfg.arch == Architecture::DeepseekV3 {
        let shared = m.shared_intermediate.map_or(0, |s| s / m.expert_intermediate.max(1));
        add(w, "leading_dense_block_count", u(leading_dense))?;
        add(w, "expert_shared_count", u(shared))?;
        add(
            w,
            "expert_weights_scale",
            MetadataValue::F32(m.routed_scaling_factor as f32),
        )?;
        add(w, "expert_gating_func", u(2))?;
        add(w, "expert_group_count", u(m.n_group))?;
        add(w, "expert_group_used_count", u(m.topk_group))?;
    }
    Ok(())
}

/// `model.layers.10.x` sorts after `model.layers.9.x`.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    s.split('.')
        .map(|p| p.parse::<u64>().map_or((p.to_string(), 0), |n| (String::new(), n)))
        .collect()
}

fn add_tensor(
    w: &mut GgufWriter<'_>,
    name: &str,
    shape: &[usize],
    v: &[f32],
    ty: GgmlType,
    out: &Path,
) -> Result<(), ModelError> {
    let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    let ty = if shape.len() >= 2 && dims[0].is_multiple_of(ty.block_size() as u64) {
        ty
    } else {
        GgmlType::F32
    };
    let bytes = if ty == GgmlType::F32 {
        f32_bytes(v)
    } else {
        hearth_quant::quantize_to_vec(ty, v).map_err(|e| write_err(out, format!("tensor `{name}`: {e}")))?
    };
    w.add_tensor(name, ty, &dims, bytes).map_err(|e| write_err(out, e))
}

/// Builds a Mixtral checkpoint from a dense Llama-family one: every layer's MLP becomes
/// `n_experts` identical experts (`w1`/`w3`/`w2` = `gate_proj`/`up_proj`/`down_proj`) behind a
/// random router with top-`top_k` and renormalised weights. Because the kept weights sum to one
/// and the experts are equal, its outputs equal the dense model's — a test of the MoE path on
/// real weights. Writes `config.json` and `model.safetensors` (f32) to `out`; copy the tokenizer
/// files yourself.
///
/// ```no_run
/// use std::path::Path;
/// hearth_models::convert::dense_to_moe(Path::new("smollm2_hf"), Path::new("smollm2_moe"), 4, 2, 7).unwrap();
/// ```
pub fn dense_to_moe(dir: &Path, out: &Path, n_experts: usize, top_k: usize, seed: u64) -> Result<(), ModelError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let mut v: Value = serde_json::from_str(&text).map_err(|e| write_err(&cfg_path, e))?;
    let cfg = ModelConfig::from_json(&v, &cfg_path.display().to_string())?;
    if !matches!(cfg.arch, Architecture::Llama | Architecture::Mistral) || top_k == 0 || top_k > n_experts {
        return Err(ModelError::Config {
            file: cfg_path.display().to_string(),
            field: "model_type".into(),
            reason: format!(
                "dense_to_moe needs a llama/mistral checkpoint and 1 ≤ top_k ≤ n_experts (got {:?}, k={top_k}, n={n_experts})",
                cfg.arch
            ),
        });
    }
    let store = WeightStore::open(dir)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        ((rng >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    };
    let mut names: Vec<&str> = store.names().collect();
    names.sort();
    for name in names {
        let (vals, shape) = store.f32(name, None)?;
        let Some((layer, proj)) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once(".mlp."))
            .map(|(l, p)| (l.to_string(), p.to_string()))
        else {
            tensors.push((name.to_string(), shape, f32_bytes(&vals)));
            continue;
        };
        let w = match proj.as_str() {
            "gate_proj.weight" => "w1",
            "up_proj.weight" => "w3",
            "down_proj.weight" => "w2",
            _ => {
                return Err(ModelError::Config {
                    file: dir.display().to_string(),
                    field: name.to_string(),
                    reason: "unexpected MLP tensor".into(),
                });
            }
        };
        let bytes = f32_bytes(&vals);
        for e in 0..n_experts {
            let n = format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight");
            tensors.push((n, shape.clone(), bytes.clone()));
        }
        if w == "w1" {
            let router: Vec<f32> = (0..n_experts * cfg.hidden_size).map(|_| next()).collect();
            tensors.push((
                format!("model.layers.{layer}.block_sparse_moe.gate.weight"),
                vec![n_experts, cfg.hidden_size],
                f32_bytes(&router),
            ));
        }
    }
    if let Value::Object(o) = &mut v {
        o.insert("model_type".into(), Value::from("mixtral"));
        o.insert("architectures".into(), serde_json::json!(["MixtralForCausalLM"]));
        o.insert("num_local_experts".into(), Value::from(n_experts));
        o.insert("num_experts_per_tok".into(), Value::from(top_k));
        o.insert("torch_dtype".into(), Value::from("float32"));
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|t| (n.clone(), t))
                .map_err(|e| write_err(out, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let st = out.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &st).map_err(|e| write_err(&st, e))?;
    let cp = out.join("config.json");
    std::fs::write(&cp, serde_json::to_string_pretty(&v).map_err(|e| write_err(&cp, e))?)
        .map_err(|e| ModelError::io(&cp, e))?;
    Ok(())
}
