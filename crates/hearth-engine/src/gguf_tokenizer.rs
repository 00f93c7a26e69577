//! Tokenizers and chat templates read from GGUF metadata.
//!
//! `tokenizer.ggml.model == "gpt2"` (byte-level BPE) is rebuilt in memory as a HF
//! `tokenizer.json` from `tokenizer.ggml.tokens`, `.merges` and `.token_type` (control tokens
//! become special added tokens, user-defined tokens plain added tokens). The pre-tokenizer
//! follows `tokenizer.ggml.pre`: `smollm`/`starcoder` (digits split, then GPT-2), `llama-bpe`
//! / `llama3`, `qwen2`, and GPT-2's regex for everything else. SentencePiece (`llama`)
//! vocabularies are not supported yet ([`GgufTokenizerError::Unsupported`]).
//!
//! ```no_run
//! let f = hearth_quant::gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
//! let tok = hearth_engine::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap();
//! assert_eq!(tok.encode("The capital of France is", true).unwrap(), [504, 3575, 282, 4649, 314]);
//! ```

use crate::error::EngineError;
use crate::generate::Engine;
use crate::tokenizer::Tokenizer;
use hearth_backend::HearthBackend;
use hearth_models::CausalLm;
use hearth_models::LoadOptions;
use hearth_models::gguf::GgufSource;
use hearth_quant::gguf::{GgufFile, MetadataArray, MetadataValue};
use serde_json::{Map, Value, json};
use std::path::Path;

/// Why a GGUF tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// A required `tokenizer.*` key is missing or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer kind is not implemented.
    #[error("GGUF tokenizer model `{0}` is not supported (supported: gpt2)")]
    Unsupported(String),
}

fn meta_err(key: &str, reason: impl Into<String>) -> EngineError {
    GgufTokenizerError::Metadata {
        key: key.into(),
        reason: reason.into(),
    }
    .into()
}

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a [String]>, EngineError> {
    match f.get(key) {
        None => Ok(None),
        Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(Some(v)),
        Some(v) => Err(meta_err(
            key,
            format!("expected an array of strings, got {:?}", v.value_type()),
        )),
    }
}

fn token_types(f: &GgufFile, n: usize) -> Vec<i64> {
    let key = "tokenizer.ggml.token_type";
    let v: Vec<i64> = match f.get(key).and_then(MetadataValue::as_array) {
        Some(MetadataArray::I32(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::U32(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::I8(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::U8(v)) => v.iter().map(|&x| x as i64).collect(),
        _ => vec![],
    };
    if v.len() == n { v } else { vec![1; n] }
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The `(normalizer, pre_tokenizer)` of a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> (Value, Value) {
    match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        ),
        _ => (Value::Null, byte_level(true)),
    }
}

/// Builds the HF `tokenizer.json` and `tokenizer_config.json` objects for a GGUF file's
/// tokenizer metadata.
///
/// ```
/// use hearth_quant::gguf::{GgufFile, GgufWriter, MetadataArray};
/// let mut w = GgufWriter::new();
/// w.add_metadata("tokenizer.ggml.model", "gpt2").unwrap();
/// let toks = ["<|end|>", "a", "b", "ab"].map(String::from).to_vec();
/// w.add_metadata("tokenizer.ggml.tokens", MetadataArray::String(toks)).unwrap();
/// w.add_metadata("tokenizer.ggml.token_type", MetadataArray::I32(vec![3, 1, 1, 1])).unwrap();
/// w.add_metadata("tokenizer.ggml.merges", MetadataArray::String(vec!["a b".into()])).unwrap();
/// w.add_metadata("tokenizer.ggml.eos_token_id", 0u32).unwrap();
/// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// let (tj, tc) = hearth_engine::gguf_tokenizer::hf_tokenizer_json(&f).unwrap();
/// assert_eq!(tc["eos_token"], "<|end|>");
/// let tok = hearth_engine::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap();
/// assert_eq!(tok.encode("ab<|end|>", true).unwrap(), [3, 0]);
/// # let _ = tj;
/// ```
pub fn hf_tokenizer_json(f: &GgufFile) -> Result<(Value, Value), EngineError> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .ok_or_else(|| meta_err("tokenizer.ggml.model", "missing or not a string"))?;
    if model != "gpt2" {
        return Err(GgufTokenizerError::Unsupported(model.to_string()).into());
    }
    let tokens = strings(f, "tokenizer.ggml.tokens")?.ok_or_else(|| meta_err("tokenizer.ggml.tokens", "missing"))?;
    let merges = strings(f, "tokenizer.ggml.merges")?.unwrap_or(&[]);
    let types = token_types(f, tokens.len());
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        // duplicate strings keep their first id (a map cannot hold both)
        if !vocab.contains_key(tok) {
            vocab.insert(tok.clone(), json!(id));
        }
        if types[id] == 3 || types[id] == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[id] == 3}));
        }
    }
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(MetadataValue::as_str)
        .unwrap_or("default");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre);
    let id_tok = |key: &str| -> Option<String> {
        let id = f.get(key)?.as_u64()? as usize;
        tokens.get(id).cloned()
    };
    let bos = id_tok("tokenizer.ggml.bos_token_id");
    let eos = id_tok("tokenizer.ggml.eos_token_id");
    let flag = |key: &str| f.get(key).and_then(MetadataValue::as_bool).unwrap_or(false);
    let (add_bos, add_eos) = (
        flag("tokenizer.ggml.add_bos_token"),
        flag("tokenizer.ggml.add_eos_token"),
    );
    let mut specials = Map::new();
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut piece = |tok: &Option<String>, key: &str, list: &mut Vec<Value>| -> Result<(), EngineError> {
        let t = tok
            .as_ref()
            .ok_or_else(|| meta_err(key, "needed by add_*_token but missing"))?;
        let id = tokens.iter().position(|x| x == t).unwrap_or_default();
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        list.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        Ok(())
    };
    if add_bos {
        piece(&bos, "tokenizer.ggml.bos_token_id", &mut single)?;
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if add_eos {
        piece(&eos, "tokenizer.ggml.eos_token_id", &mut single)?;
    }
    pair.extend(single.iter().cloned());
    pair.extend(single.iter().map(|p| match p.get("Sequence") {
        Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
        None => p.clone(),
    }));
    let post = if add_bos || add_eos {
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    let mut tc = Map::new();
    tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tc.insert("add_bos_token".into(), json!(add_bos));
    tc.insert("add_eos_token".into(), json!(add_eos));
    tc.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", id_tok("tokenizer.ggml.unknown_token_id")),
        ("pad_token", id_tok("tokenizer.ggml.padding_token_id")),
    ] {
        if let Some(v) = v {
            tc.insert(k.into(), json!(v));
        }
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(MetadataValue::as_str) {
        tc.insert("chat_template".into(), json!(t));
    }
    Ok((tj, Value::Object(tc)))
}

/// Builds a [`Tokenizer`] (with chat template and BOS/EOS strings) from a GGUF file's
/// tokenizer metadata.
///
/// ```no_run
/// let f = hearth_quant::gguf::GgufFile::open("model.gguf").unwrap();
/// let tok = hearth_engine::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap();
/// println!("{:?}", tok.encode("hi", true).unwrap());
/// ```
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer, EngineError> {
    let (tj, tc) = hf_tokenizer_json(f)?;
    let text = tj.to_string();
    let inner: tokenizers::Tokenizer = text.parse().map_err(|e: tokenizers::Error| EngineError::Tokenizer {
        file: "<gguf tokenizer.ggml.*>".into(),
        reason: e.to_string(),
    })?;
    Tokenizer::from_parts(inner, &tc, "<gguf tokenizer.ggml.*>")
}

/// Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template and BOS/EOS
/// tokens) for a GGUF file's tokenizer into `out_dir`.
///
/// ```no_run
/// let f = hearth_quant::gguf::GgufFile::open("model.gguf").unwrap();
/// hearth_engine::gguf_tokenizer::write_hf_tokenizer(&f, std::path::Path::new("model_hf")).unwrap();
/// ```
pub fn write_hf_tokenizer(f: &GgufFile, out_dir: &Path) -> Result<(), EngineError> {
    let (tj, tc) = hf_tokenizer_json(f)?;
    let io = |p: &Path, e: &dyn std::fmt::Display| EngineError::Io {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, &e))?;
    for (name, v) in [("tokenizer.json", tj), ("tokenizer_config.json", tc)] {
        let p = out_dir.join(name);
        let text = serde_json::to_string_pretty(&v).map_err(|e| io(&p, &e))?;
        std::fs::write(&p, text).map_err(|e| io(&p, &e))?;
    }
    Ok(())
}

impl<B: HearthBackend> Engine<B> {
    /// Loads model, tokenizer and chat template from one GGUF file. On the CPU backend,
    /// matrices in a kernel format (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K) stay packed; other
    /// block types and GPU backends dequantize to f32.
    ///
    /// ```no_run
    /// use hearth_engine::Engine;
    /// let path = hearth_engine::fetch::smollm2().unwrap();
    /// let engine = Engine::<hearth_backend::Cpu>::from_gguf(&path, &Default::default()).unwrap();
    /// ```
    pub fn from_gguf(path: &Path, device: &B::Device) -> Result<Self, EngineError> {
        Self::from_gguf_with(path, device, &LoadOptions::default())
    }

    /// [`Self::from_gguf`] with load options.
    pub fn from_gguf_with(path: &Path, device: &B::Device, opts: &LoadOptions) -> Result<Self, EngineError> {
        let src = GgufSource::open(path)?;
        let cfg = src.config()?;
        let tokenizer = tokenizer_from_gguf(src.file())?;
        let model = CausalLm::load_with(cfg, &src, device, opts)?;
        Self::new(model, tokenizer)
    }
}
