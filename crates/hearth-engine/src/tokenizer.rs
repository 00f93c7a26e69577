//! HF `tokenizer.json` + `tokenizer_config.json`: encode, decode, special tokens.

use crate::error::EngineError;
use crate::template::ChatTemplate;
use serde_json::Value;
use std::path::Path;

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `bos_token` string, if the checkpoint names one.
    pub bos_token: Option<String>,
    /// `eos_token` string, if the checkpoint names one.
    pub eos_token: Option<String>,
    /// The chat template, if any.
    pub chat_template: Option<ChatTemplate>,
    source: String,
}

fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and (if present) `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::Tokenizer {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| EngineError::Tokenizer {
                file: cfg_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(_) => Value::Null,
        };
        Self::from_parts(inner, &cfg, &path.display().to_string())
    }

    /// Builds from a loaded `tokenizers::Tokenizer` and a `tokenizer_config.json` value.
    pub fn from_parts(inner: tokenizers::Tokenizer, cfg: &Value, source: &str) -> Result<Self, EngineError> {
        let bos_token = token_str(cfg.get("bos_token"));
        let eos_token = token_str(cfg.get("eos_token"));
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(ChatTemplate::new(s.clone(), bos_token.clone(), eos_token.clone())?),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(|s| ChatTemplate::new(s.to_string(), bos_token.clone(), eos_token.clone()))
                .transpose()?,
            _ => None,
        };
        Ok(Self {
            inner,
            bos_token,
            eos_token,
            chat_template,
            source: source.to_string(),
        })
    }

    /// Number of tokens including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EngineError::Tokenizer {
                file: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| EngineError::Tokenizer {
                file: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of `eos_token`, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
}

/// Streaming detokenizer: turns a growing list of ids into text deltas without splitting
/// multi-byte characters (holds output while the tail decodes to U+FFFD).
#[derive(Default)]
pub struct DecodeStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DecodeStream {
    /// Appends a token and returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }
}
