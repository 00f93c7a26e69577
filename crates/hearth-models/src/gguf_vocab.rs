//! `tokenizer.ggml.*` GGUF metadata from a HF checkpoint's `tokenizer.json` and
//! `tokenizer_config.json`, as llama.cpp's `convert_hf_to_gguf.py` writes it.
//!
//! Two kinds of `tokenizer.json` are exported; other kinds (Unigram, WordPiece, ...) and
//! directories without a `tokenizer.json` get no tokenizer metadata:
//!
//! - byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM, ...) → `tokenizer.ggml.model = "gpt2"` with
//!   the tokens, token types and merges.
//! - BPE with `byte_fallback: true` (the SentencePiece tokenizers of Llama 2, Mistral, TinyLlama,
//!   ...) → `tokenizer.ggml.model = "llama"` with tokens, scores, token types and
//!   `tokenizer.ggml.add_space_prefix`, as `_set_vocab_sentencepiece` / `_set_vocab_llama_hf` do.
//!   A `tokenizer.json` has no SentencePiece scores, so they are derived from the merge ranks:
//!   the token made by the merge of rank `r` (its first one) scores `-r`, so llama.cpp's
//!   "join the best-scoring pair" applies merges in the same order as HF's BPE; other normal
//!   tokens score below every merged token, byte tokens `0`, added and padding tokens `-1000`.
//!   `add_space_prefix` is true when the normalizer prepends `▁` (the `legacy` Llama layout) or a
//!   Metaspace pre-tokenizer prepends it (`prepend_scheme` `always`/`first`).
//!
//! Token types: added tokens are control (`special: true`) or user-defined (with `▁` written as
//! a space, as llama.cpp pre-normalizes them), `<0xXX>` tokens are bytes, ids below the model's
//! `vocab_size` without a token become unused `[PAD{id}]`. Special-token ids (BOS, EOS, UNK, PAD)
//! come from `tokenizer_config.json` (keys already in the writer, e.g. from `config.json`, are
//! kept); `add_bos_token` / `add_eos_token` from the config or, when it does not say, from a
//! `TemplateProcessing` post-processor; the chat template from the config, `chat_template.jinja`
//! or `chat_template.json`.
//!
//! ```no_run
//! use hearth_quant::gguf::GgufWriter;
//! let mut w = GgufWriter::new();
//! w.add_metadata("general.architecture", "llama").unwrap();
//! hearth_models::gguf_vocab::add_tokenizer_metadata(std::path::Path::new("llama_dir"), &mut w, 32000).unwrap();
//! w.write_file("tokenizer-only.gguf").unwrap();
//! ```

use crate::error::ModelError;
use hearth_quant::gguf::{GgufError, GgufWriter, MetadataArray, MetadataValue};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The score llama.cpp's converter gives added and padding tokens.
const ADDED_SCORE: f32 = -1000.0;

/// The `tokenizer.*` entries for the tokenizer files in `dir`, in the order they are written.
/// Empty when `dir` has no `tokenizer.json` or it is neither byte-level nor byte-fallback BPE.
///
/// ```
/// use hearth_quant::gguf::{MetadataArray, MetadataValue};
/// let dir = std::env::temp_dir().join(format!("hearth-doc-gguf-vocab-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let tj = serde_json::json!({
///     "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]},
///     "added_tokens": [{"id": 1, "content": "<s>", "special": true}],
///     "model": {"type": "BPE", "byte_fallback": true, "merges": [["▁", "a"]],
///         "vocab": {"<unk>": 0, "<s>": 1, "<0x41>": 2, "▁": 3, "a": 4, "▁a": 5}}});
/// std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
/// let meta = hearth_models::gguf_vocab::tokenizer_metadata(&dir, 7).unwrap();
/// let get = |k: &str| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap();
/// assert_eq!(get("tokenizer.ggml.model").as_str(), Some("llama"));
/// assert_eq!(get("tokenizer.ggml.add_space_prefix").as_bool(), Some(true));
/// // normal, control, byte, ..., and an unused padding token for id 6
/// assert_eq!(get("tokenizer.ggml.token_type"), MetadataValue::from(MetadataArray::I32(vec![1, 3, 6, 1, 1, 1, 5])));
/// let MetadataValue::Array(MetadataArray::F32(scores)) = get("tokenizer.ggml.scores") else { panic!() };
/// assert!(scores[5] > scores[3] && scores[5] > scores[4]); // "▁a", made by the first merge, ranks first
/// ```
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, MetadataValue)>, ModelError> {
    let tj_path = dir.join("tokenizer.json");
    let Some(tj) = read_json(&tj_path)? else {
        return Ok(Vec::new());
    };
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let file = tj_path.display().to_string();
    let model = &tj["model"];
    if model["type"] != "BPE" {
        return Ok(Vec::new());
    }
    let spm = model["byte_fallback"] == true;
    let vocab = Vocab::read(&tj, vocab_size, spm, &file)?;
    let mut out: Vec<(String, MetadataValue)> = Vec::new();
    let mut put = |k: &str, v: MetadataValue| out.push((k.to_string(), v));
    let merges = merges(model, &file)?;
    put("tokenizer.ggml.model", (if spm { "llama" } else { "gpt2" }).into());
    put("tokenizer.ggml.pre", "default".into());
    if spm {
        let scores = vocab.spm_scores(&merges);
        put("tokenizer.ggml.tokens", MetadataArray::String(vocab.tokens).into());
        put("tokenizer.ggml.scores", MetadataArray::F32(scores).into());
        put("tokenizer.ggml.token_type", MetadataArray::I32(vocab.types).into());
        put("tokenizer.ggml.add_space_prefix", add_space_prefix(&tj).into());
    } else {
        let merges = merges.iter().map(|[l, r]| format!("{l} {r}")).collect();
        put("tokenizer.ggml.tokens", MetadataArray::String(vocab.tokens).into());
        put("tokenizer.ggml.token_type", MetadataArray::I32(vocab.types).into());
        put("tokenizer.ggml.merges", MetadataArray::String(merges).into());
    }
    // special tokens: the config names them, the added tokens (then the vocabulary) number them
    let id_of = |content: &str| -> Option<u32> {
        let added = tj["added_tokens"].as_array().into_iter().flatten();
        let found = added
            .filter(|a| a["content"] == content)
            .find_map(|a| a["id"].as_u64())
            .or_else(|| model["vocab"][content].as_u64())?;
        u32::try_from(found).ok().filter(|&id| (id as usize) < vocab_size)
    };
    let named = |key: &str| match &tc[key] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    };
    let unk = named("unk_token").or_else(|| model["unk_token"].as_str().map(String::from));
    let (bos, eos) = (named("bos_token"), named("eos_token"));
    for (key, tok) in [
        ("tokenizer.ggml.bos_token_id", &bos),
        ("tokenizer.ggml.eos_token_id", &eos),
        ("tokenizer.ggml.unknown_token_id", &unk),
        ("tokenizer.ggml.padding_token_id", &named("pad_token")),
    ] {
        if let Some(id) = tok.as_deref().and_then(id_of) {
            put(key, id.into());
        }
    }
    // llama.cpp's SpecialVocab: the config's flags, else what a TemplateProcessing adds
    let template = template_specials(&tj["post_processor"]);
    let adds = |flag: &str, tok: &Option<String>, edge: Option<Option<&str>>| {
        tc[flag]
            .as_bool()
            .or_else(|| edge.map(|t| t.is_some() && t == tok.as_deref()))
    };
    let add_bos = adds("add_bos_token", &bos, template.map(|t| t.0));
    let add_eos = adds("add_eos_token", &eos, template.map(|t| t.1));
    if let Some(b) = add_bos {
        put("tokenizer.ggml.add_bos_token", b.into());
    }
    if let Some(b) = add_eos {
        put("tokenizer.ggml.add_eos_token", b.into());
    }
    if let Some(t) = chat_template(dir, &tc)? {
        put("tokenizer.chat_template", t.into());
    }
    Ok(out)
}

/// Adds the [`tokenizer_metadata`] entries of `dir` to `w`. Special-token id keys already in
/// `w` (e.g. written from `config.json`) are kept.
///
/// ```no_run
/// let mut w = hearth_quant::gguf::GgufWriter::new();
/// w.add_metadata("tokenizer.ggml.bos_token_id", 1u32).unwrap(); // from config.json: kept
/// hearth_models::gguf_vocab::add_tokenizer_metadata(std::path::Path::new("llama_dir"), &mut w, 32000).unwrap();
/// ```
pub fn add_tokenizer_metadata(dir: &Path, w: &mut GgufWriter<'_>, vocab_size: usize) -> Result<(), ModelError> {
    for (key, value) in tokenizer_metadata(dir, vocab_size)? {
        match w.add_metadata(key.as_str(), value) {
            Ok(()) => {}
            Err(GgufError::DuplicateKey(_)) if key.ends_with("_token_id") => {}
            Err(e) => {
                return Err(ModelError::Config {
                    file: dir.join("tokenizer.json").display().to_string(),
                    field: key,
                    reason: format!("cannot be written to GGUF: {e}"),
                });
            }
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::Config {
        file: path.display().to_string(),
        field: "(file)".into(),
        reason: format!("invalid JSON: {e}"),
    })
}

fn field_err(file: &str, field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: file.to_string(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Tokens and types by id, `vocab_size` long.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
}

impl Vocab {
    fn read(tj: &Value, vocab_size: usize, spm: bool, file: &str) -> Result<Self, ModelError> {
        let vocab = tj["model"]["vocab"]
            .as_object()
            .ok_or_else(|| field_err(file, "model.vocab", "expected an object of token → id"))?;
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![NORMAL; vocab_size];
        // ids past the model's vocabulary cannot be embedded; llama.cpp drops them too
        let mut put = |tok: &str, id: usize, t: i32| {
            if let Some(slot) = tokens.get_mut(id) {
                *slot = Some(tok.to_string());
                types[id] = t;
            }
        };
        for (tok, id) in vocab {
            let id = id.as_u64().ok_or_else(|| {
                field_err(
                    file,
                    format!("model.vocab[{tok:?}]"),
                    format!("id {id} is not an integer"),
                )
            })?;
            put(tok, id as usize, if spm && is_byte_token(tok) { BYTE } else { NORMAL });
        }
        for (i, a) in tj["added_tokens"].as_array().into_iter().flatten().enumerate() {
            let (Some(content), Some(id)) = (a["content"].as_str(), a["id"].as_u64()) else {
                return Err(field_err(
                    file,
                    format!("added_tokens[{i}]"),
                    "needs a string `content` and an integer `id`",
                ));
            };
            if a["special"] == true {
                put(content, id as usize, CONTROL);
            } else if spm {
                // llama.cpp matches user-defined tokens in raw text
                put(&content.replace('▁', " "), id as usize, USER_DEFINED);
            } else {
                put(content, id as usize, USER_DEFINED);
            }
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = UNUSED;
                    format!("[PAD{i}]")
                })
            })
            .collect();
        Ok(Self { tokens, types })
    }

    /// SentencePiece scores from the merge ranks (see the module docs).
    fn spm_scores(&self, merges: &[[String; 2]]) -> Vec<f32> {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (id, t) in self.tokens.iter().enumerate() {
            ids.entry(t.as_str()).or_insert(id);
        }
        let mut scores: Vec<Option<f32>> = vec![None; self.tokens.len()];
        for (rank, [l, r]) in merges.iter().enumerate() {
            if let Some(&id) = ids.get(format!("{l}{r}").as_str())
                && scores[id].is_none()
            {
                scores[id] = Some(-(rank as f32));
            }
        }
        let below = merges.len() as f32;
        scores
            .into_iter()
            .enumerate()
            .map(|(id, s)| match self.types[id] {
                NORMAL => s.unwrap_or(-(below + id as f32)),
                BYTE => 0.0,
                _ => ADDED_SCORE,
            })
            .collect()
    }
}

/// `<0x00>` ... `<0xFF>`.
fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The merges as pairs (`"a b"` strings or `["a", "b"]` arrays).
fn merges(model: &Value, file: &str) -> Result<Vec<[String; 2]>, ModelError> {
    let Some(list) = model.get("merges").filter(|m| !m.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| field_err(file, "model.merges", "expected an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s.split_once(' ').map(|(l, r)| [l.to_string(), r.to_string()]),
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(l), Some(r)) => Some([l.to_string(), r.to_string()]),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| {
                field_err(
                    file,
                    format!("model.merges[{i}]"),
                    format!("expected \"a b\" or [\"a\", \"b\"], got {m}"),
                )
            })
        })
        .collect()
}

/// Every component of a normalizer / pre-tokenizer (itself, or the members of a `Sequence`).
fn components<'a>(v: &'a Value, list: &str) -> Vec<&'a Value> {
    match v[list].as_array() {
        Some(items) if v["type"] == "Sequence" => items.iter().collect(),
        _ => vec![v],
    }
}

/// Whether the tokenizer prepends `▁` to the text (SentencePiece's dummy prefix).
fn add_space_prefix(tj: &Value) -> bool {
    let prepend = components(&tj["normalizer"], "normalizers")
        .into_iter()
        .any(|n| n["type"] == "Prepend" && n["prepend"] == "▁");
    let metaspace = components(&tj["pre_tokenizer"], "pretokenizers")
        .into_iter()
        .filter(|p| p["type"] == "Metaspace")
        .any(|p| match p["prepend_scheme"].as_str() {
            Some(s) => s == "always" || s == "first",
            None => p["add_prefix_space"] == true,
        });
    prepend || metaspace
}

/// The leading and trailing special tokens of a `TemplateProcessing`'s single-sequence template
/// (the post-processor itself or inside a `Sequence`); `None` without one.
fn template_specials(post: &Value) -> Option<(Option<&str>, Option<&str>)> {
    let t = components(post, "processors")
        .into_iter()
        .find(|p| p["type"] == "TemplateProcessing")?;
    let single = t["single"].as_array().map(Vec::as_slice).unwrap_or_default();
    fn special(p: Option<&Value>) -> Option<&str> {
        p.and_then(|p| p["SpecialToken"]["id"].as_str())
    }
    Some((special(single.first()), special(single.last())))
}

/// The default chat template: `tokenizer_config.json`'s `chat_template` (a string or the
/// `default` entry of a list), else `chat_template.jinja`, else `chat_template.json`.
fn chat_template(dir: &Path, tc: &Value) -> Result<Option<String>, ModelError> {
    match &tc["chat_template"] {
        Value::String(s) => return Ok(Some(s.clone())),
        Value::Array(list) => {
            return Ok(list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(String::from));
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(t) => return Ok(Some(t)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ModelError::io(&jinja, e)),
        Err(_) => {}
    }
    Ok(read_json(&dir.join("chat_template.json"))?.and_then(|v| v["chat_template"].as_str().map(String::from)))
}
