//! GGUF checkpoints as a [`crate::TensorSource`] and a [`crate::ModelConfig`].
//!
//! Supported llama.cpp architectures: `llama` (Llama, Mistral, SmolLM, and Mixtral-style MoE
//! with per-expert `ffn_gate.{e}` tensors or merged 3-D `ffn_gate_exps` tensors), `qwen2`,
//! `qwen3`, `qwen2moe`, `qwen3moe`, `olmoe` and `deepseek2`.
//!
//! Tensors in a kernel format (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K) are handed out packed,
//! borrowed from the memory map ([`TensorSource::packed`]); other block types are dequantized
//! to f32 when the model asks for them. For the `llama` architecture, `convert_hf_to_gguf.py`
//! permutes the rows of `attn_q`/`attn_k` so that ggml's interleaved RoPE applies. By default
//! [`GgufSource`] undoes that permutation ([`unpermute_rows`]) and hands out HF-order rows;
//! [`GgufSource::keep_rope_permutation`] (what the engine and CLI use) keeps the file's rows
//! and switches the model to interleaved RoPE instead, so nothing is copied.
//!
//! ```no_run
//! use hearth_models::{CausalLm, gguf::GgufSource};
//! let src = GgufSource::open("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
//! let cfg = src.config().unwrap();
//! let model = CausalLm::<hearth_backend::Cpu>::load(cfg, &src, &Default::default()).unwrap();
//! ```

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::{PackedTensor, TensorSource};
use hearth_quant::gguf::{GgufFile, MetadataArray, MetadataValue, TensorView};
use hearth_quant::kernels::WeightFormat;
use serde_json::{Map, Value, json};
use std::path::Path;

/// How the rows of a GGUF `attn_q`/`attn_k` tensor relate to the HF layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QkLayout {
    /// llama.cpp permuted the rows for interleaved RoPE (`llama` architecture).
    Permuted,
    /// Rows are in HF order (`qwen2`, `qwen3`: NeoX RoPE).
    AsIs,
}

/// A GGUF file read as a [`TensorSource`] by HuggingFace tensor names.
///
/// ```no_run
/// use hearth_models::{TensorSource, gguf::GgufSource};
/// let src = GgufSource::open("model.gguf").unwrap();
/// let (w, shape) = src.f32("model.layers.0.self_attn.q_proj.weight", None).unwrap();
/// assert_eq!(w.len(), shape.iter().product::<usize>());
/// ```
pub struct GgufSource {
    file: GgufFile,
    name: String,
    arch: String,
    layout: QkLayout,
    n_head: usize,
    n_head_kv: usize,
    /// Hand out `attn_q`/`attn_k` rows as stored (llama.cpp's interleaved-RoPE order) and
    /// say so in the config, instead of un-permuting them into a heap copy.
    native_rope_rows: bool,
}

/// Where an HF tensor lives in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loc {
    /// A whole tensor; `heads` = Some(n) when its rows must be un-permuted with `n` heads.
    Whole { name: String, heads: Option<Head> },
    /// Expert `expert` of a merged 3-D `*_exps` tensor.
    Expert { name: String, expert: usize },
    /// DeepSeek `kv_b_proj` rebuilt from llama.cpp's split `attn_k_b` (per head
    /// `[kv_lora, nope]`, transposed) and `attn_v_b` (per head `[v, kv_lora]`).
    KvB { k_b: String, v_b: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Q,
    K,
}

/// Maps a HuggingFace tensor name to its llama.cpp GGUF name (the name of a merged
/// expert tensor for MoE experts is given with its expert index). Returns `None` for names
/// GGUF has no equivalent for. HF names are distinct across families, so one table serves
/// Llama/Mistral/Mixtral, Qwen2/3(-MoE), OLMoE and DeepSeek-V3.
///
/// ```
/// use hearth_models::gguf::gguf_name;
/// assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(), ("blk.3.attn_q.weight".to_string(), None));
/// assert_eq!(gguf_name("model.layers.0.block_sparse_moe.experts.5.w2.weight").unwrap(),
///     ("blk.0.ffn_down_exps.weight".to_string(), Some(5)));
/// assert_eq!(gguf_name("model.layers.1.mlp.experts.2.up_proj.weight").unwrap(),
///     ("blk.1.ffn_up_exps.weight".to_string(), Some(2)));
/// assert_eq!(gguf_name("model.layers.1.mlp.gate.e_score_correction_bias").unwrap().0, "blk.1.exp_probs_b.bias");
/// assert_eq!(gguf_name("lm_head.weight").unwrap().0, "output.weight");
/// assert!(gguf_name("nope").is_none());
/// ```
pub fn gguf_name(hf: &str) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if rest == "mlp.gate.e_score_correction_bias" {
        return Some((format!("blk.{layer}.exp_probs_b.bias"), None));
    }
    let (stem, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let blk = |n: &str| Some((format!("blk.{layer}.{n}.{suffix}"), None));
    match stem {
        "input_layernorm" => blk("attn_norm"),
        "post_attention_layernorm" => blk("ffn_norm"),
        "self_attn.q_proj" => blk("attn_q"),
        "self_attn.k_proj" => blk("attn_k"),
        "self_attn.v_proj" => blk("attn_v"),
        "self_attn.o_proj" => blk("attn_output"),
        "self_attn.q_norm" => blk("attn_q_norm"),
        "self_attn.k_norm" => blk("attn_k_norm"),
        "self_attn.q_a_proj" => blk("attn_q_a"),
        "self_attn.q_a_layernorm" => blk("attn_q_a_norm"),
        "self_attn.q_b_proj" => blk("attn_q_b"),
        "self_attn.kv_a_proj_with_mqa" => blk("attn_kv_a_mqa"),
        "self_attn.kv_a_layernorm" => blk("attn_kv_a_norm"),
        "self_attn.kv_b_proj" => blk("attn_kv_b"),
        "mlp.gate_proj" => blk("ffn_gate"),
        "mlp.up_proj" => blk("ffn_up"),
        "mlp.down_proj" => blk("ffn_down"),
        "block_sparse_moe.gate" | "mlp.gate" => blk("ffn_gate_inp"),
        "mlp.shared_expert_gate" => blk("ffn_gate_inp_shexp"),
        "mlp.shared_expert.gate_proj" | "mlp.shared_experts.gate_proj" => blk("ffn_gate_shexp"),
        "mlp.shared_expert.up_proj" | "mlp.shared_experts.up_proj" => blk("ffn_up_shexp"),
        "mlp.shared_expert.down_proj" | "mlp.shared_experts.down_proj" => blk("ffn_down_shexp"),
        _ => {
            let (e, w) = if let Some(r) = stem.strip_prefix("block_sparse_moe.experts.") {
                r.split_once('.')?
            } else {
                stem.strip_prefix("mlp.experts.")?.split_once('.')?
            };
            let e: usize = e.parse().ok()?;
            let kind = match w {
                "w1" | "gate_proj" => "ffn_gate_exps",
                "w3" | "up_proj" => "ffn_up_exps",
                "w2" | "down_proj" => "ffn_down_exps",
                _ => return None,
            };
            Some((format!("blk.{layer}.{kind}.{suffix}"), Some(e)))
        }
    }
}

/// Maps a llama.cpp GGUF tensor name of a `llama`-architecture file back to HF names (see
/// [`hf_names_for`]).
///
/// ```
/// use hearth_models::gguf::hf_names;
/// assert_eq!(hf_names("blk.2.ffn_up.weight", 0), vec!["model.layers.2.mlp.up_proj.weight"]);
/// assert_eq!(hf_names("blk.0.ffn_up_exps.weight", 2).len(), 2);
/// assert_eq!(hf_names("blk.0.ffn_up.1.weight", 0), vec!["model.layers.0.block_sparse_moe.experts.1.w3.weight"]);
/// assert!(hf_names("rope_freqs.weight", 0).is_empty());
/// ```
pub fn hf_names(gguf: &str, n_experts: usize) -> Vec<String> {
    hf_names_for("llama", gguf, n_experts)
}

/// Maps a llama.cpp GGUF tensor name back to HF names for architecture `arch`
/// (`general.architecture`): one name, or one per expert for a merged `*_exps` tensor with
/// `n_experts` experts (its outermost dim). DeepSeek's split `attn_k_b` maps to
/// `kv_b_proj` (rebuilt together with `attn_v_b`, which maps to nothing).
///
/// ```
/// use hearth_models::gguf::hf_names_for;
/// assert_eq!(hf_names_for("qwen2moe", "blk.0.ffn_gate_inp_shexp.weight", 0), vec!["model.layers.0.mlp.shared_expert_gate.weight"]);
/// assert_eq!(hf_names_for("deepseek2", "blk.3.ffn_up_shexp.weight", 0), vec!["model.layers.3.mlp.shared_experts.up_proj.weight"]);
/// assert_eq!(hf_names_for("qwen3moe", "blk.1.ffn_down_exps.weight", 4)[3], "model.layers.1.mlp.experts.3.down_proj.weight");
/// ```
pub fn hf_names_for(arch: &str, gguf: &str, n_experts: usize) -> Vec<String> {
    match gguf {
        "token_embd.weight" => return vec!["model.embed_tokens.weight".into()],
        "output_norm.weight" => return vec!["model.norm.weight".into()],
        "output.weight" => return vec!["lm_head.weight".into()],
        _ => {}
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return vec![];
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return vec![];
    };
    let Ok(layer) = layer.parse::<usize>() else {
        return vec![];
    };
    let Some((stem, suffix)) = rest.rsplit_once('.') else {
        return vec![];
    };
    let p = format!("model.layers.{layer}");
    let one = |n: &str| vec![format!("{p}.{n}.{suffix}")];
    let mixtral = arch == "llama";
    let (moe_block, names) = if mixtral {
        ("block_sparse_moe", ["w1", "w3", "w2"])
    } else {
        ("mlp", ["gate_proj", "up_proj", "down_proj"])
    };
    let expert_w = |kind: &str| match kind {
        "ffn_gate" => Some(names[0]),
        "ffn_up" => Some(names[1]),
        "ffn_down" => Some(names[2]),
        _ => None,
    };
    let shared = if arch == "qwen2moe" {
        "shared_expert"
    } else {
        "shared_experts"
    };
    match stem {
        "attn_norm" => one("input_layernorm"),
        "ffn_norm" => one("post_attention_layernorm"),
        "attn_q" => one("self_attn.q_proj"),
        "attn_k" => one("self_attn.k_proj"),
        "attn_v" => one("self_attn.v_proj"),
        "attn_output" => one("self_attn.o_proj"),
        "attn_q_norm" => one("self_attn.q_norm"),
        "attn_k_norm" => one("self_attn.k_norm"),
        "attn_q_a" => one("self_attn.q_a_proj"),
        "attn_q_a_norm" => one("self_attn.q_a_layernorm"),
        "attn_q_b" => one("self_attn.q_b_proj"),
        "attn_kv_a_mqa" => one("self_attn.kv_a_proj_with_mqa"),
        "attn_kv_a_norm" => one("self_attn.kv_a_layernorm"),
        "attn_kv_b" | "attn_k_b" => vec![format!("{p}.self_attn.kv_b_proj.weight")],
        "attn_v_b" => vec![],
        "exp_probs_b" => vec![format!("{p}.mlp.gate.e_score_correction_bias")],
        "ffn_gate" => one("mlp.gate_proj"),
        "ffn_up" => one("mlp.up_proj"),
        "ffn_down" => one("mlp.down_proj"),
        "ffn_gate_inp" => one(&format!("{moe_block}.gate")),
        "ffn_gate_inp_shexp" => one("mlp.shared_expert_gate"),
        "ffn_gate_shexp" => one(&format!("mlp.{shared}.gate_proj")),
        "ffn_up_shexp" => one(&format!("mlp.{shared}.up_proj")),
        "ffn_down_shexp" => one(&format!("mlp.{shared}.down_proj")),
        s => {
            if let Some(kind) = s.strip_suffix("_exps")
                && let Some(w) = expert_w(kind)
            {
                return (0..n_experts)
                    .map(|e| format!("{p}.{moe_block}.experts.{e}.{w}.{suffix}"))
                    .collect();
            }
            // legacy split experts: blk.N.ffn_gate.E.weight
            if let Some((kind, e)) = s.rsplit_once('.')
                && let (Some(w), Ok(e)) = (expert_w(kind), e.parse::<usize>())
            {
                return vec![format!("{p}.{moe_block}.experts.{e}.{w}.{suffix}")];
            }
            vec![]
        }
    }
}

/// Undoes llama.cpp's `LlamaModel.permute` on a row-major `[rows, cols]` matrix (or a bias,
/// `cols == 1`) with `n_head` heads: within each head of `d` rows, GGUF row `2i + s` is HF
/// row `s * d/2 + i`.
///
/// ```
/// use hearth_models::gguf::{permute_rows, unpermute_rows};
/// let hf: Vec<f32> = (0..8).map(|x| x as f32).collect(); // 2 heads of 4 rows, 1 column
/// let gg = permute_rows(&hf, 2, 1);
/// assert_eq!(gg, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
/// assert_eq!(unpermute_rows(&gg, 2, 1), hf);
/// ```
pub fn unpermute_rows(x: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    reorder_rows(x, n_head, cols, false)
}

/// llama.cpp's `LlamaModel.permute` (HF rotate-half rows → interleaved RoPE rows), the
/// inverse of [`unpermute_rows`].
pub fn permute_rows(x: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    reorder_rows(x, n_head, cols, true)
}

fn reorder_rows<T: Copy + Default>(x: &[T], n_head: usize, cols: usize, forward: bool) -> Vec<T> {
    let rows = x.len() / cols.max(1);
    if n_head == 0 || cols == 0 || !rows.is_multiple_of(2 * n_head) || rows * cols != x.len() {
        return x.to_vec();
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![T::default(); x.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                let hf = h * d + s * half + i;
                let gg = h * d + 2 * i + s;
                let (src, dst) = if forward { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&x[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn cfg_err(file: &str, field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: file.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn meta_u64(f: &GgufFile, key: &str) -> Option<u64> {
    match f.get(key)? {
        // some files store per-layer arrays (e.g. head_count_kv); use the first entry
        MetadataValue::Array(a) => match a {
            MetadataArray::U32(v) => v.first().map(|&x| x as u64),
            MetadataArray::I32(v) => v.first().and_then(|&x| u64::try_from(x).ok()),
            MetadataArray::U64(v) => v.first().copied(),
            _ => None,
        },
        v => v.as_u64(),
    }
}

fn req_u64(f: &GgufFile, file: &str, key: &str) -> Result<u64, ModelError> {
    match f.get(key) {
        None => Err(cfg_err(file, key, "missing GGUF metadata key")),
        Some(v) => meta_u64(f, key).ok_or_else(|| cfg_err(file, key, format!("expected an integer, got {v:?}"))),
    }
}

/// The llama.cpp architecture name (`general.architecture`).
fn architecture<'a>(f: &'a GgufFile, file: &str) -> Result<&'a str, ModelError> {
    f.get("general.architecture")
        .and_then(MetadataValue::as_str)
        .ok_or_else(|| cfg_err(file, "general.architecture", "missing or not a string"))
}

/// llama.cpp architectures hearth reads, and the HF `model_type` each becomes.
const ARCHS: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("qwen2moe", "qwen2_moe"),
    ("qwen3moe", "qwen3_moe"),
    ("olmoe", "olmoe"),
    ("deepseek2", "deepseek_v3"),
];

fn meta_f64(f: &GgufFile, key: &str) -> Option<f64> {
    f.get(key).and_then(MetadataValue::as_f64)
}

fn meta_bool(f: &GgufFile, key: &str) -> Option<bool> {
    match f.get(key)? {
        MetadataValue::Bool(b) => Some(*b),
        v => v.as_u64().map(|x| x != 0),
    }
}

/// Builds the HF `config.json` object equivalent to a GGUF file's metadata.
///
/// `file` names the GGUF file in errors. Supported architectures: `llama` (becomes
/// `mixtral` when `llama.expert_count > 0`), `qwen2`, `qwen3`, `qwen2moe`, `qwen3moe`,
/// `olmoe` and `deepseek2` (DeepSeek-V3: sigmoid gating, MLA; both the split
/// `attn_k_b`/`attn_v_b` and the legacy `attn_kv_b` layouts).
///
/// ```
/// use hearth_quant::gguf::{GgufFile, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama").unwrap();
/// for (k, v) in [("block_count", 2u32), ("embedding_length", 8), ("feed_forward_length", 16),
///                ("attention.head_count", 2), ("vocab_size", 32)] {
///     w.add_metadata(format!("llama.{k}"), v).unwrap();
/// }
/// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// let v = hearth_models::gguf::config_json_from_gguf(&f, "x.gguf").unwrap();
/// assert_eq!(v["model_type"], "llama");
/// assert_eq!(v["tie_word_embeddings"], true); // no output.weight
/// ```
pub fn config_json_from_gguf(f: &GgufFile, file: &str) -> Result<Value, ModelError> {
    let arch = architecture(f, file)?;
    let Some(&(_, hf_type)) = ARCHS.iter().find(|(a, _)| *a == arch) else {
        let names: Vec<&str> = ARCHS.iter().map(|a| a.0).collect();
        return Err(ModelError::UnknownModelType {
            file: file.to_string(),
            model_type: format!("{arch} (GGUF general.architecture; supported: {})", names.join(", ")),
        });
    };
    let k = |s: &str| format!("{arch}.{s}");
    let heads = req_u64(f, file, &k("attention.head_count"))?;
    let hidden = req_u64(f, file, &k("embedding_length"))?;
    let mut o = Map::new();
    let experts = meta_u64(f, &k("expert_count")).unwrap_or(0);
    let model_type = match arch {
        "llama" if experts > 0 => "mixtral",
        _ => hf_type,
    };
    o.insert("model_type".into(), json!(model_type));
    o.insert("num_hidden_layers".into(), json!(req_u64(f, file, &k("block_count"))?));
    o.insert("hidden_size".into(), json!(hidden));
    let ff = req_u64(f, file, &k("feed_forward_length"))?;
    o.insert("intermediate_size".into(), json!(ff));
    o.insert("num_attention_heads".into(), json!(heads));
    o.insert(
        "num_key_value_heads".into(),
        json!(meta_u64(f, &k("attention.head_count_kv")).unwrap_or(heads)),
    );
    if let Some(hd) = meta_u64(f, &k("attention.key_length")) {
        o.insert("head_dim".into(), json!(hd));
    }
    let eps = meta_f64(f, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
    o.insert("rms_norm_eps".into(), json!(eps));
    let theta = meta_f64(f, &k("rope.freq_base")).unwrap_or(10000.0);
    o.insert("rope_theta".into(), json!(theta));
    if let Some(ctx) = meta_u64(f, &k("context_length")) {
        o.insert("max_position_embeddings".into(), json!(ctx));
    }
    let top_k = || req_u64(f, file, &k("expert_used_count"));
    let norm = |default: bool| meta_bool(f, &k("expert_weights_norm")).unwrap_or(default);
    match arch {
        "llama" if experts > 0 => {
            o.insert("num_local_experts".into(), json!(experts));
            o.insert("num_experts_per_tok".into(), json!(top_k()?));
        }
        "qwen2moe" | "qwen3moe" | "olmoe" => {
            if experts == 0 {
                return Err(cfg_err(file, &k("expert_count"), "a MoE architecture needs experts"));
            }
            o.insert("num_experts".into(), json!(experts));
            o.insert("num_experts_per_tok".into(), json!(top_k()?));
            o.insert("norm_topk_prob".into(), json!(norm(arch == "qwen3moe")));
            let expert_ff = meta_u64(f, &k("expert_feed_forward_length")).unwrap_or(ff);
            if arch == "olmoe" {
                o.insert("intermediate_size".into(), json!(expert_ff));
            } else {
                o.insert("moe_intermediate_size".into(), json!(expert_ff));
            }
            if arch == "qwen2moe" {
                let shared = meta_u64(f, &k("expert_shared_feed_forward_length")).unwrap_or(0);
                o.insert("shared_expert_intermediate_size".into(), json!(shared));
                o.insert("qkv_bias".into(), json!(f.tensor("blk.0.attn_q.bias").is_some()));
            }
        }
        "deepseek2" => deepseek2_fields(f, file, &mut o, heads, experts)?,
        _ => {}
    }
    // rope scaling
    let scaling_type = f.get(&k("rope.scaling.type")).and_then(MetadataValue::as_str);
    match scaling_type {
        None | Some("none") => {}
        Some(t @ ("linear" | "yarn")) => {
            let factor = meta_f64(f, &k("rope.scaling.factor"))
                .ok_or_else(|| cfg_err(file, &k("rope.scaling.factor"), "missing"))?;
            let mut rs = Map::new();
            rs.insert("rope_type".into(), json!(t));
            rs.insert("factor".into(), json!(factor));
            if let Some(orig) = meta_u64(f, &k("rope.scaling.original_context_length")) {
                rs.insert("original_max_position_embeddings".into(), json!(orig));
            }
            if t == "yarn" {
                for (key, hf) in [("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")] {
                    if let Some(x) = meta_f64(f, &k(&format!("rope.scaling.{key}"))) {
                        rs.insert(hf.into(), json!(x));
                    }
                }
                // DeepSeek: llama.cpp stores 0.1·mscale_all_dim (mscale == mscale_all_dim)
                if let Some(mul) = meta_f64(f, &k("rope.scaling.yarn_log_multiplier")) {
                    // f32 metadata: round away the f32 noise of 0.1·m
                    let m = ((mul / 0.1) * 1e6).round() / 1e6;
                    rs.insert("mscale".into(), json!(m));
                    rs.insert("mscale_all_dim".into(), json!(m));
                }
            }
            o.insert("rope_scaling".into(), Value::Object(rs));
        }
        Some(t) => {
            return Err(cfg_err(
                file,
                &k("rope.scaling.type"),
                format!("unsupported rope scaling `{t}`"),
            ));
        }
    }
    if let Some(t) = f.tensor("rope_freqs.weight") {
        let freqs = t
            .dequantize()
            .map_err(|e| cfg_err(file, "rope_freqs.weight", e.to_string()))?;
        let dim = meta_u64(f, &k("rope.dimension_count"))
            .or_else(|| meta_u64(f, &k("attention.key_length")))
            .unwrap_or(hidden / heads.max(1)) as usize;
        let orig_hint = meta_u64(f, &k("rope.scaling.original_context_length"));
        let rs = infer_llama3_rope(&freqs, theta, dim, orig_hint).ok_or_else(|| {
            cfg_err(
                file,
                "rope_freqs.weight",
                "per-frequency RoPE factors do not match Llama 3 rope scaling",
            )
        })?;
        o.insert("rope_scaling".into(), rs);
    }
    let vocab = match meta_u64(f, &k("vocab_size")) {
        Some(v) => v,
        None => match f.get("tokenizer.ggml.tokens").and_then(MetadataValue::as_array) {
            Some(a) => a.len() as u64,
            None => f
                .tensor("token_embd.weight")
                .and_then(|t| t.info.dims.get(1).copied())
                .ok_or_else(|| cfg_err(file, "tokenizer.ggml.tokens", "no vocabulary size found"))?,
        },
    };
    o.insert("vocab_size".into(), json!(vocab));
    o.insert("tie_word_embeddings".into(), json!(f.tensor("output.weight").is_none()));
    for (key, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = meta_u64(f, key) {
            o.insert(hf.into(), json!(id));
        }
    }
    if matches!(arch, "qwen2" | "qwen2moe") {
        // llama.cpp does not store the window; Qwen2 checkpoints do not use it by default
        o.insert("use_sliding_window".into(), json!(false));
    }
    Ok(Value::Object(o))
}

/// DeepSeek-V3 (`deepseek2`) MLA and routing fields. Files written since llama.cpp's MLA
/// support store `key_length = kv_lora_rank + rope` and the per-head widths in
/// `key_length_mla`/`value_length_mla`; older files store the per-head widths directly.
fn deepseek2_fields(
    f: &GgufFile,
    file: &str,
    o: &mut Map<String, Value>,
    heads: u64,
    experts: u64,
) -> Result<(), ModelError> {
    let k = |s: &str| format!("deepseek2.{s}");
    let gating = meta_u64(f, &k("expert_gating_func")).unwrap_or(1);
    if gating != 2 {
        return Err(ModelError::UnknownModelType {
            file: file.to_string(),
            model_type: format!(
                "deepseek2 with expert_gating_func {gating} (softmax: DeepSeek-V2 routing; only DeepSeek-V3's sigmoid gating is supported)"
            ),
        });
    }
    let rope = req_u64(f, file, &k("rope.dimension_count"))?;
    let kv_lora = req_u64(f, file, &k("attention.kv_lora_rank"))?;
    let (key, value) = match meta_u64(f, &k("attention.key_length_mla")) {
        Some(kl) => (kl, req_u64(f, file, &k("attention.value_length_mla"))?),
        None => (
            req_u64(f, file, &k("attention.key_length"))?,
            req_u64(f, file, &k("attention.value_length"))?,
        ),
    };
    if key <= rope {
        return Err(cfg_err(
            file,
            &k("attention.key_length_mla"),
            format!("key width {key} must exceed the RoPE width {rope}"),
        ));
    }
    o.insert("head_dim".into(), json!(rope));
    o.insert("num_key_value_heads".into(), json!(heads));
    o.insert("qk_rope_head_dim".into(), json!(rope));
    o.insert("qk_nope_head_dim".into(), json!(key - rope));
    o.insert("v_head_dim".into(), json!(value));
    o.insert("kv_lora_rank".into(), json!(kv_lora));
    o.insert(
        "q_lora_rank".into(),
        meta_u64(f, &k("attention.q_lora_rank")).map_or(Value::Null, |r| json!(r)),
    );
    o.insert("rope_interleave".into(), json!(true));
    o.insert("n_routed_experts".into(), json!(experts));
    o.insert(
        "num_experts_per_tok".into(),
        json!(req_u64(f, file, &k("expert_used_count"))?),
    );
    let ff = req_u64(f, file, &k("feed_forward_length"))?;
    o.insert(
        "moe_intermediate_size".into(),
        json!(meta_u64(f, &k("expert_feed_forward_length")).unwrap_or(ff)),
    );
    o.insert(
        "first_k_dense_replace".into(),
        json!(meta_u64(f, &k("leading_dense_block_count")).unwrap_or(0)),
    );
    o.insert(
        "n_shared_experts".into(),
        json!(meta_u64(f, &k("expert_shared_count")).unwrap_or(0)),
    );
    o.insert(
        "routed_scaling_factor".into(),
        json!(meta_f64(f, &k("expert_weights_scale")).unwrap_or(1.0)),
    );
    o.insert(
        "norm_topk_prob".into(),
        json!(meta_bool(f, &k("expert_weights_norm")).unwrap_or(false)),
    );
    o.insert(
        "n_group".into(),
        json!(meta_u64(f, &k("expert_group_count")).unwrap_or(1)),
    );
    o.insert(
        "topk_group".into(),
        json!(meta_u64(f, &k("expert_group_used_count")).unwrap_or(1)),
    );
    Ok(())
}

/// Parses a GGUF file's metadata into a [`ModelConfig`] (see [`config_json_from_gguf`]).
///
/// ```no_run
/// let f = hearth_quant::gguf::GgufFile::open("model.gguf").unwrap();
/// let cfg = hearth_models::gguf::config_from_gguf(&f).unwrap();
/// println!("{} layers", cfg.num_layers);
/// ```
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig, ModelError> {
    let v = config_json_from_gguf(f, "<gguf>")?;
    ModelConfig::from_json(&v, "<gguf>")
}

impl GgufSource {
    /// Opens (memory-maps) a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let file = GgufFile::open(path).map_err(|e| ModelError::BadHeader {
            file: path.display().to_string(),
            reason: format!("GGUF: {e}"),
        })?;
        Self::new(file, &path.display().to_string())
    }

    /// Wraps an opened GGUF file; `name` names it in errors.
    pub fn new(file: GgufFile, name: &str) -> Result<Self, ModelError> {
        let arch = architecture(&file, name)?.to_string();
        let layout = if arch == "llama" {
            QkLayout::Permuted
        } else {
            QkLayout::AsIs
        };
        let n_head = req_u64(&file, name, &format!("{arch}.attention.head_count"))? as usize;
        let n_head_kv = meta_u64(&file, &format!("{arch}.attention.head_count_kv")).map_or(n_head, |x| x as usize);
        Ok(Self {
            file,
            name: name.to_string(),
            arch,
            layout,
            n_head,
            n_head_kv,
            native_rope_rows: false,
        })
    }

    /// Computes on llama.cpp's permuted `attn_q`/`attn_k` rows as they are in the file (memory
    /// mapped, no re-ordered copy) and applies RoPE to interleaved pairs, as llama.cpp does;
    /// [`Self::config`] then sets `rope_interleave`. Attention scores are unchanged: the
    /// permutation pairs dimension `i` with `i + d/2` inside every head, exactly the pairs
    /// rotate-half RoPE rotates, and it is the same for queries and keys. Without this (the
    /// default), the rows are returned in HF order, as [`crate::convert::gguf_to_hf`] needs.
    /// Has no effect on files whose rows are not permuted, or whose RoPE covers only part of
    /// each head (the pairs would then differ).
    ///
    /// ```no_run
    /// use hearth_models::{CausalLm, gguf::GgufSource};
    /// let src = GgufSource::open("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap().keep_rope_permutation();
    /// let cfg = src.config().unwrap();
    /// assert_eq!(cfg.rope_layout, hearth_attention::RopeLayout::Interleaved);
    /// let model = CausalLm::<hearth_backend::Cpu>::load(cfg, &src, &Default::default()).unwrap();
    /// ```
    pub fn keep_rope_permutation(mut self) -> Self {
        let arch = &self.arch;
        let rope_dim = meta_u64(&self.file, &format!("{arch}.rope.dimension_count"));
        let embd = meta_u64(&self.file, &format!("{arch}.embedding_length"));
        let head_dim = meta_u64(&self.file, &format!("{arch}.attention.key_length"))
            .or_else(|| embd.map(|e| e / self.n_head.max(1) as u64));
        let full_rotary = match (rope_dim, head_dim) {
            (Some(r), Some(h)) => r == h,
            (None, _) => true,
            (Some(_), None) => false,
        };
        self.native_rope_rows = self.layout == QkLayout::Permuted && full_rotary;
        self
    }

    /// The underlying GGUF file (metadata, tokenizer, raw tensors).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model configuration from the file's metadata.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let v = self.config_json()?;
        ModelConfig::from_json(&v, &self.name)
    }

    /// The HF `config.json` object from the file's metadata (with `rope_interleave` when the
    /// source hands out permuted rows, see [`Self::keep_rope_permutation`]).
    pub fn config_json(&self) -> Result<Value, ModelError> {
        let mut v = config_json_from_gguf(&self.file, &self.name)?;
        if self.native_rope_rows
            && let Some(o) = v.as_object_mut()
        {
            o.insert("rope_interleave".into(), json!(true));
        }
        Ok(v)
    }

    /// HF names of every tensor the file holds (merged expert tensors expand to one name
    /// per expert), in file order.
    pub fn hf_tensor_names(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.file
            .tensors()
            .flat_map(|t| {
                let n_exp = if t.info.dims.len() == 3 {
                    t.info.dims[2] as usize
                } else {
                    0
                };
                hf_names_for(&self.arch, &t.info.name, n_exp)
            })
            .filter(|n| seen.insert(n.clone()))
            .collect()
    }

    fn locate(&self, hf: &str) -> Option<Loc> {
        let (name, expert) = gguf_name(hf)?;
        let heads = match (self.layout, name.rsplit('.').nth(1)) {
            _ if self.native_rope_rows => None,
            (QkLayout::Permuted, Some("attn_q")) => Some(Head::Q),
            (QkLayout::Permuted, Some("attn_k")) => Some(Head::K),
            _ => None,
        };
        match expert {
            None if self.file.tensor(&name).is_some() => Some(Loc::Whole { name, heads }),
            None => {
                let stem = name.strip_suffix(".attn_kv_b.weight")?;
                let (k_b, v_b) = (format!("{stem}.attn_k_b.weight"), format!("{stem}.attn_v_b.weight"));
                (self.file.tensor(&k_b).is_some() && self.file.tensor(&v_b).is_some()).then_some(Loc::KvB { k_b, v_b })
            }
            Some(e) => {
                if let Some(t) = self.file.tensor(&name)
                    && t.info.dims.len() == 3
                    && (e as u64) < t.info.dims[2]
                {
                    return Some(Loc::Expert { name, expert: e });
                }
                // legacy split layout: blk.N.ffn_gate.E.weight
                let (stem, suffix) = name.rsplit_once('.')?;
                let split = format!("{}.{e}.{suffix}", stem.strip_suffix("_exps")?);
                self.file.tensor(&split).map(|_| Loc::Whole {
                    name: split,
                    heads: None,
                })
            }
        }
    }

    /// `kv_b_proj` `[heads·(nope+v), kv_lora]` from `attn_k_b` (dims `[nope, kv_lora, heads]`)
    /// and `attn_v_b` (dims `[kv_lora, v, heads]`).
    fn kv_b(&self, k_b: &str, v_b: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let (kt, vt) = (
            self.file.tensor(k_b).expect("located tensor exists"),
            self.file.tensor(v_b).expect("located tensor exists"),
        );
        let dims3 = |t: &TensorView<'_>| -> Result<[usize; 3], ModelError> {
            match t.info.dims.as_slice() {
                &[a, b, c] => Ok([a as usize, b as usize, c as usize]),
                d => Err(ModelError::Shape {
                    file: self.name.clone(),
                    tensor: t.info.name.clone(),
                    expected: vec![0, 0, 0],
                    actual: d.iter().map(|&x| x as usize).collect(),
                }),
            }
        };
        let ([nope, r, h], [r2, vd, h2]) = (dims3(&kt)?, dims3(&vt)?);
        if r2 != r || h2 != h {
            return Err(ModelError::Shape {
                file: self.name.clone(),
                tensor: vt.info.name.clone(),
                expected: vec![h, vd, r],
                actual: vec![h2, vd, r2],
            });
        }
        let (k, v) = (self.dequant(&kt, kt.data)?, self.dequant(&vt, vt.data)?);
        let per = nope + vd;
        let mut out = vec![0.0f32; h * per * r];
        for head in 0..h {
            for i in 0..nope {
                for c in 0..r {
                    // k_b (torch order) [head, c, i]
                    out[(head * per + i) * r + c] = k[(head * r + c) * nope + i];
                }
            }
            for i in 0..vd {
                let dst = (head * per + nope + i) * r;
                let src = (head * vd + i) * r;
                out[dst..dst + r].copy_from_slice(&v[src..src + r]);
            }
        }
        Ok((out, vec![h * per, r]))
    }

    fn dequant(&self, t: &TensorView<'_>, data: &[u8]) -> Result<Vec<f32>, ModelError> {
        hearth_quant::dequantize_to_vec(t.info.ty, data).map_err(|e| ModelError::Dtype {
            file: self.name.clone(),
            tensor: t.info.name.clone(),
            dtype: format!("{:?} ({e})", t.info.ty),
        })
    }
}

impl TensorSource for GgufSource {
    fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedTensor>, ModelError> {
        let Some(loc) = self.locate(name) else {
            return Ok(None);
        };
        let (g, expert, heads) = match &loc {
            Loc::Whole { name, heads } => (name, None, *heads),
            Loc::Expert { name, expert } => (name, Some(*expert), None),
            Loc::KvB { .. } => return Ok(None),
        };
        let t = self.file.tensor(g).expect("located tensor exists");
        let Some(format) = WeightFormat::from_ggml(t.info.ty) else {
            return Ok(None);
        };
        let dims = &t.info.dims;
        if dims.len() < 2 || dims[0] as usize != cols || dims[1] as usize != rows {
            return Ok(None); // shape problems are reported by the f32 path
        }
        let row_bytes = match format.row_bytes(cols) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let bytes = match expert {
            Some(e) => &t.data[e * rows * row_bytes..(e + 1) * rows * row_bytes],
            None => t.data,
        };
        if bytes.len() != rows * row_bytes {
            return Ok(None);
        }
        let bytes = match heads {
            Some(h) => {
                let n = if h == Head::Q { self.n_head } else { self.n_head_kv };
                reorder_rows(bytes, n, row_bytes, false).into()
            }
            // borrowed from the memory map: no second copy of the weights
            None => self.file.share(bytes),
        };
        Ok(Some(PackedTensor {
            format,
            bytes,
            rows,
            cols,
        }))
    }

    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let loc = self.locate(name).ok_or_else(|| ModelError::MissingTensor {
            tensor: format!(
                "{name} (GGUF {})",
                gguf_name(name).map_or("<no mapping>".into(), |n| n.0)
            ),
            files: self.name.clone(),
        })?;
        let (values, shape) = match &loc {
            Loc::Whole { name: g, heads } => {
                let t = self.file.tensor(g).expect("located tensor exists");
                let shape: Vec<usize> = t.info.dims.iter().rev().map(|&d| d as usize).collect();
                let mut v = self.dequant(&t, t.data)?;
                if let Some(h) = heads {
                    let n = if *h == Head::Q { self.n_head } else { self.n_head_kv };
                    let cols = if shape.len() == 2 { shape[1] } else { 1 };
                    v = unpermute_rows(&v, n, cols);
                }
                (v, shape)
            }
            Loc::Expert { name: g, expert } => {
                let t = self.file.tensor(g).expect("located tensor exists");
                let n_exp = t.info.dims[2] as usize;
                let per = t.data.len() / n_exp;
                let bytes = &t.data[expert * per..(expert + 1) * per];
                let shape = vec![t.info.dims[1] as usize, t.info.dims[0] as usize];
                (self.dequant(&t, bytes)?, shape)
            }
            Loc::KvB { k_b, v_b } => self.kv_b(k_b, v_b)?,
        };
        // llama.cpp drops unit dims some HF tensors have (Qwen2-MoE's `[1, hidden]` shared
        // expert gate is stored as `[hidden]`)
        let squeezed = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        let shape = match expected {
            Some(exp) if exp != shape.as_slice() && squeezed(exp) == squeezed(&shape) => exp.to_vec(),
            None if name.ends_with("shared_expert_gate.weight") && shape.len() == 1 => vec![1, shape[0]],
            _ => shape,
        };
        if let Some(exp) = expected
            && exp != shape.as_slice()
        {
            return Err(ModelError::Shape {
                file: self.name.clone(),
                tensor: name.to_string(),
                expected: exp.to_vec(),
                actual: shape,
            });
        }
        Ok((values, shape))
    }
}

/// Llama 3 RoPE frequency factors as llama.cpp stores them in `rope_freqs.weight` (one per
/// rotary frequency; the frequency is divided by the factor).
///
/// ```
/// let f = hearth_models::gguf::llama3_rope_factors(500000.0, 16, 8.0, 1.0, 4.0, 32);
/// assert_eq!(f.len(), 8);
/// assert_eq!(f[0], 1.0); // high frequencies are unscaled
/// assert_eq!(f[7], 8.0); // low frequencies are scaled by `factor`
/// ```
pub fn llama3_rope_factors(theta: f64, dim: usize, factor: f64, low: f64, high: f64, orig: u64) -> Vec<f32> {
    let old = orig as f64;
    let (low_wl, high_wl) = (old / low, old / high);
    (0..dim / 2)
        .map(|i| {
            let freq = theta.powf(-((2 * i) as f64) / dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let f = if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let smooth = (old / wl - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// Recovers HF `llama3` rope scaling from llama.cpp's `rope_freqs.weight`: `factor` is the
/// largest factor; `low_freq_factor = 1`, `high_freq_factor = 4` (every Llama 3.x release)
/// and `original_max_position_embeddings` is the hint or the power of two that reproduces
/// the stored factors.
fn infer_llama3_rope(freqs: &[f32], theta: f64, dim: usize, orig_hint: Option<u64>) -> Option<Value> {
    let factor = freqs.iter().copied().fold(f32::MIN, f32::max) as f64;
    if freqs.len() != dim / 2 || factor.is_nan() || factor < 1.0 {
        return None;
    }
    if freqs.iter().all(|&x| x == 1.0) {
        return Some(Value::Null);
    }
    let (low, high) = (1.0, 4.0);
    let candidates = orig_hint.into_iter().chain((4..=24).map(|p| 1u64 << p));
    for orig in candidates {
        let g = llama3_rope_factors(theta, dim, factor, low, high, orig);
        if g.iter().zip(freqs).all(|(a, b)| ((a - b) / b).abs() < 1e-4) {
            return Some(json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": orig,
            }));
        }
    }
    None
}
