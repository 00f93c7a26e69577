//! Tokenizers and chat templates read from GGUF metadata.
//!
//! The GGUF vocabulary is rebuilt in memory as a HF `tokenizer.json` (plus the
//! `tokenizer_config.json` fields hearth uses), so the `tokenizers` crate does the work:
//!
//! - `tokenizer.ggml.model == "gpt2"` (byte-level BPE) from `tokenizer.ggml.tokens`, `.merges`
//!   and `.token_type` (control tokens become special added tokens, user-defined tokens plain
//!   added tokens). The pre-tokenizer follows `tokenizer.ggml.pre`: `smollm`/`starcoder` (digits
//!   split, then GPT-2), `llama-bpe` / `llama3`, `qwen2`, and GPT-2's regex for everything else.
//! - `tokenizer.ggml.model == "llama"` (SentencePiece BPE: Llama 2, Mistral, TinyLlama, ...) from
//!   `tokenizer.ggml.tokens`, `.scores` and `.token_type`, the way transformers' `LlamaConverter`
//!   builds LlamaTokenizerFast: BPE with `byte_fallback` over the `<0xXX>` byte tokens, merges
//!   derived from the vocabulary (every split of a normal token into two normal tokens, ranked by
//!   the token's score, then its id), the `legacy` normalizer (prepend `▁` when
//!   `tokenizer.ggml.add_space_prefix`, default true, then spaces → `▁`), and the decoder
//!   `▁` → space, byte fallback, fuse, strip one leading space. Unknown and control tokens are
//!   special added tokens, user-defined tokens plain added tokens, so text is split at them and
//!   every piece in between gets its own space prefix, as llama.cpp does. Missing special ids and
//!   flags take llama.cpp's SentencePiece defaults (BOS 1, EOS 2, UNK 0, add BOS, no EOS).
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
use std::collections::HashMap;
use std::path::Path;

/// Why a GGUF tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// A required `tokenizer.*` key is missing or has the wrong type, length or value.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer kind is not implemented.
    #[error("GGUF tokenizer model `{0}` is not supported (supported: gpt2, llama)")]
    Unsupported(String),
}

/// `tokenizer.ggml.token_type` values (SentencePiece's piece types).
mod token_type {
    pub const UNDEFINED: i64 = 0;
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";

fn meta_err(key: &str, reason: impl Into<String>) -> EngineError {
    GgufTokenizerError::Metadata {
        key: key.into(),
        reason: reason.into(),
    }
    .into()
}

/// `string`, `array of f32`, ... for error messages.
fn describe(v: &MetadataValue) -> String {
    match v {
        MetadataValue::Array(a) => format!("an array of {}", a.element_type()),
        v => v.value_type().to_string(),
    }
}

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a [String]>, EngineError> {
    match f.get(key) {
        None => Ok(None),
        Some(MetadataValue::Array(MetadataArray::String(v))) => Ok(Some(v)),
        Some(v) => Err(meta_err(
            key,
            format!("expected an array of strings, got {}", describe(v)),
        )),
    }
}

fn token_types(f: &GgufFile, n: usize) -> Vec<i64> {
    let v: Vec<i64> = match f.get(TOKEN_TYPE).and_then(MetadataValue::as_array) {
        Some(MetadataArray::I32(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::U32(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::I8(v)) => v.iter().map(|&x| x as i64).collect(),
        Some(MetadataArray::U8(v)) => v.iter().map(|&x| x as i64).collect(),
        _ => vec![],
    };
    if v.len() == n { v } else { vec![1; n] }
}

/// `tokenizer.ggml.token_type` for a SentencePiece vocabulary: all normal when absent, an error
/// when it is not an integer array of one valid type (0-6) per token.
fn strict_token_types(f: &GgufFile, n: usize) -> Result<Vec<i64>, EngineError> {
    let v: Vec<i64> = match f.get(TOKEN_TYPE) {
        None => return Ok(vec![token_type::NORMAL; n]),
        Some(MetadataValue::Array(a)) => match a {
            MetadataArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I64(v) => v.clone(),
            _ => {
                return Err(meta_err(
                    TOKEN_TYPE,
                    format!("expected an array of integers, got an array of {}", a.element_type()),
                ));
            }
        },
        Some(v) => {
            return Err(meta_err(
                TOKEN_TYPE,
                format!("expected an array of integers, got {}", describe(v)),
            ));
        }
    };
    if v.len() != n {
        return Err(meta_err(
            TOKEN_TYPE,
            format!("{} types for {n} tokens in `{TOKENS}`", v.len()),
        ));
    }
    if let Some((id, t)) = v.iter().enumerate().find(|(_, t)| !(0..=6).contains(*t)) {
        return Err(meta_err(TOKEN_TYPE, format!("token {id} has type {t} (valid: 0-6)")));
    }
    Ok(v)
}

/// `tokenizer.ggml.scores` as f32, one per token.
fn scores(f: &GgufFile, n: usize) -> Result<Vec<f32>, EngineError> {
    let v: Vec<f32> = match f.get(SCORES) {
        None => return Err(meta_err(SCORES, "missing (SentencePiece merges are ranked by score)")),
        Some(MetadataValue::Array(MetadataArray::F32(v))) => v.clone(),
        Some(MetadataValue::Array(MetadataArray::F64(v))) => v.iter().map(|&x| x as f32).collect(),
        Some(v) => {
            return Err(meta_err(
                SCORES,
                format!("expected an array of f32, got {}", describe(v)),
            ));
        }
    };
    if v.len() != n {
        return Err(meta_err(
            SCORES,
            format!("{} scores for {n} tokens in `{TOKENS}`", v.len()),
        ));
    }
    Ok(v)
}

/// A bool key; `default` when absent, an error when it is not a bool.
fn flag(f: &GgufFile, key: &str, default: bool) -> Result<bool, EngineError> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| meta_err(key, format!("expected a bool, got {}", describe(v)))),
    }
}

/// The token string of a special-token id key. Absent keys fall back to `default`; ids past the
/// vocabulary are ignored (as llama.cpp does); a non-integer value is an error.
fn special_token(
    f: &GgufFile,
    tokens: &[String],
    key: &str,
    default: Option<usize>,
) -> Result<Option<String>, EngineError> {
    let id = match f.get(key) {
        None => default,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| meta_err(key, format!("expected a token id, got {}", describe(v))))?
                as usize,
        ),
    };
    Ok(id.and_then(|id| tokens.get(id).cloned()))
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
/// tokenizer metadata (`gpt2` byte-level BPE or `llama` SentencePiece, see the module docs).
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
///
/// A SentencePiece vocabulary (merges come from the scores: `▁a` outranks `ab`):
///
/// ```
/// use hearth_quant::gguf::{GgufFile, GgufWriter, MetadataArray};
/// let mut w = GgufWriter::new();
/// w.add_metadata("tokenizer.ggml.model", "llama").unwrap();
/// let toks = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab"].map(String::from).to_vec();
/// w.add_metadata("tokenizer.ggml.tokens", MetadataArray::String(toks)).unwrap();
/// let scores = vec![0.0, 0.0, 0.0, -10.0, -11.0, -12.0, -1.0, -2.0, -3.0];
/// w.add_metadata("tokenizer.ggml.scores", MetadataArray::F32(scores)).unwrap();
/// w.add_metadata("tokenizer.ggml.token_type", MetadataArray::I32(vec![2, 3, 3, 1, 1, 1, 1, 1, 1])).unwrap();
/// let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
/// let tok = hearth_engine::gguf_tokenizer::tokenizer_from_gguf(&f).unwrap();
/// assert_eq!(tok.encode("ab a", true).unwrap(), [1, 8, 6]); // <s> ▁ab ▁a
/// assert_eq!(tok.decode(&[1, 8, 6], true).unwrap(), "ab a");
/// ```
pub fn hf_tokenizer_json(f: &GgufFile) -> Result<(Value, Value), EngineError> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .ok_or_else(|| meta_err("tokenizer.ggml.model", "missing or not a string"))?;
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        _ => return Err(GgufTokenizerError::Unsupported(model.to_string()).into()),
    };
    let tokens = strings(f, TOKENS)?.ok_or_else(|| meta_err(TOKENS, "missing"))?;
    if spm {
        spm_tokenizer_json(f, tokens)
    } else {
        gpt2_tokenizer_json(f, tokens)
    }
}

/// Special tokens and whether BOS/EOS are added.
struct Specials {
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    pad: Option<String>,
    add_bos: bool,
    add_eos: bool,
}

impl Specials {
    /// Reads the ids and flags; `spm` applies llama.cpp's SentencePiece defaults.
    fn read(f: &GgufFile, tokens: &[String], spm: bool) -> Result<Self, EngineError> {
        let d = |id: usize| spm.then_some(id);
        Ok(Self {
            bos: special_token(f, tokens, "tokenizer.ggml.bos_token_id", d(1))?,
            eos: special_token(f, tokens, "tokenizer.ggml.eos_token_id", d(2))?,
            unk: special_token(f, tokens, "tokenizer.ggml.unknown_token_id", d(0))?,
            pad: special_token(f, tokens, "tokenizer.ggml.padding_token_id", None)?,
            add_bos: flag(f, "tokenizer.ggml.add_bos_token", spm)?,
            add_eos: flag(f, "tokenizer.ggml.add_eos_token", false)?,
        })
    }

    /// A `TemplateProcessing` adding BOS/EOS, or `None` when neither is added.
    fn post_processor(&self, tokens: &[String]) -> Result<Option<Value>, EngineError> {
        if !self.add_bos && !self.add_eos {
            return Ok(None);
        }
        let mut specials = Map::new();
        let mut single = Vec::new();
        let mut piece = |tok: &Option<String>, key: &str, list: &mut Vec<Value>| -> Result<(), EngineError> {
            let t = tok
                .as_ref()
                .ok_or_else(|| meta_err(key, "needed by add_*_token but missing"))?;
            let id = tokens.iter().position(|x| x == t).unwrap_or_default();
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            list.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            Ok(())
        };
        if self.add_bos {
            piece(&self.bos, "tokenizer.ggml.bos_token_id", &mut single)?;
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if self.add_eos {
            piece(&self.eos, "tokenizer.ggml.eos_token_id", &mut single)?;
        }
        let mut pair = single.clone();
        pair.extend(single.iter().map(|p| match p.get("Sequence") {
            Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
            None => p.clone(),
        }));
        Ok(Some(
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}),
        ))
    }

    /// The `tokenizer_config.json` object.
    fn config(&self, f: &GgufFile) -> Value {
        let mut tc = Map::new();
        tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        tc.insert("add_bos_token".into(), json!(self.add_bos));
        tc.insert("add_eos_token".into(), json!(self.add_eos));
        tc.insert("clean_up_tokenization_spaces".into(), json!(false));
        for (k, v) in [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("unk_token", &self.unk),
            ("pad_token", &self.pad),
        ] {
            if let Some(v) = v {
                tc.insert(k.into(), json!(v));
            }
        }
        if let Some(t) = f.get("tokenizer.chat_template").and_then(MetadataValue::as_str) {
            tc.insert("chat_template".into(), json!(t));
        }
        Value::Object(tc)
    }
}

/// An entry of `tokenizer.json`'s `added_tokens`.
fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special})
}

fn gpt2_tokenizer_json(f: &GgufFile, tokens: &[String]) -> Result<(Value, Value), EngineError> {
    let merges = strings(f, "tokenizer.ggml.merges")?.unwrap_or(&[]);
    let types = token_types(f, tokens.len());
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        // duplicate strings keep their first id (a map cannot hold both)
        if !vocab.contains_key(tok) {
            vocab.insert(tok.clone(), json!(id));
        }
        if types[id] == token_type::CONTROL || types[id] == token_type::USER_DEFINED {
            added.push(added_token(id, tok, types[id] == token_type::CONTROL));
        }
    }
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(MetadataValue::as_str)
        .unwrap_or("default");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre);
    let specials = Specials::read(f, tokens, false)?;
    let post = specials.post_processor(tokens)?.unwrap_or_else(
        || json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    );
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
    Ok((tj, specials.config(f)))
}

/// The BPE merges of a SentencePiece vocabulary: every split of a normal token into two normal
/// tokens, ordered by the merged token's score (higher first), then its id, then the split.
///
/// SentencePiece (and llama.cpp) repeatedly joins the adjacent pair whose concatenation is the
/// best-scoring token; ranking the merges by that score makes HF's BPE join in the same order.
fn spm_merges<'a>(tokens: &'a [String], scores: &[f32], types: &[i64]) -> Vec<[&'a str; 2]> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        first.entry(t.as_str()).or_insert(id);
    }
    let normal = |id: usize| matches!(types[id], token_type::NORMAL | token_type::UNDEFINED);
    // -0.0 == 0.0 and NaN ranks last, so the sort key is a total order
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s + 0.0 };
    let mut ranked: Vec<(f32, usize, usize, [&str; 2])> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if !normal(id) || first[tok.as_str()] != id {
            continue;
        }
        for (at, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(at);
            if let (Some(&a), Some(&b)) = (first.get(l), first.get(r))
                && normal(a)
                && normal(b)
            {
                ranked.push((key(scores[id]), id, at, [l, r]));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    ranked.into_iter().map(|r| r.3).collect()
}

fn spm_tokenizer_json(f: &GgufFile, tokens: &[String]) -> Result<(Value, Value), EngineError> {
    let n = tokens.len();
    let scores = scores(f, n)?;
    let types = strict_token_types(f, n)?;
    let add_space_prefix = flag(f, "tokenizer.ggml.add_space_prefix", true)?;
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if !vocab.contains_key(tok) {
            vocab.insert(tok.clone(), json!(id));
        }
        match types[id] {
            token_type::UNKNOWN | token_type::CONTROL => added.push(added_token(id, tok, true)),
            token_type::USER_DEFINED => added.push(added_token(id, tok, false)),
            _ => {}
        }
    }
    let merges = spm_merges(tokens, &scores, &types);
    let specials = Specials::read(f, tokens, true)?;
    let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace_space]})
    } else {
        replace_space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": specials.post_processor(tokens)?,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": specials.unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok((tj, specials.config(f)))
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
        // weights computed on as stored (no re-ordered copy of the Q/K rows)
        let src = GgufSource::open(path)?.keep_rope_permutation();
        let cfg = src.config()?;
        let tokenizer = tokenizer_from_gguf(src.file())?;
        let model = CausalLm::load_with(cfg, &src, device, opts)?;
        Self::new(model, tokenizer)
    }
}
