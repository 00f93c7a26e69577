//! SentencePiece (`tokenizer.ggml.model = "llama"`) tokenizers in GGUF files, both directions.
//!
//! The fixtures under `tests/fixtures/spm*` are made by `tests/fixtures/make_spm.py`: a tiny
//! SentencePiece BPE model (byte fallback) written to GGUF by gguf-py the way llama.cpp's
//! converter does it, transformers' own HF conversion of it, and reference ids produced by
//! sentencepiece itself (checked against HF in the script).

use hearth_engine::generate::Finish;
use hearth_engine::gguf_tokenizer::{GgufTokenizerError, hf_tokenizer_json, tokenizer_from_gguf, write_hf_tokenizer};
use hearth_engine::{ChatMessage, Engine, EngineError, Event, GenerateRequest, Prompt, SamplingParams, Tokenizer};
use hearth_models::convert::hf_to_gguf;
use hearth_models::gguf_vocab::{add_tokenizer_metadata, tokenizer_metadata};
use hearth_quant::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use serde_json::Value;
use std::path::{Path, PathBuf};

type B = hearth_backend::Cpu;

/// The two fixture models: with SentencePiece's dummy prefix (Llama 2 style) and without.
const MODELS: [&str; 2] = ["spm", "spm_noprefix"];

fn fixture(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    for f in [
        "reference.json",
        "spm.gguf",
        "hf/tokenizer.json",
        "hf_legacy/tokenizer.json",
    ] {
        assert!(
            d.join(f).is_file(),
            "fixture {} missing: run python3 crates/hearth-engine/tests/fixtures/make_spm.py",
            d.join(f).display()
        );
    }
    d
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-gguf-spm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Case {
    text: String,
    ids: Vec<u32>,
    /// HF's decode keeping special tokens.
    decoded: String,
    /// HF's decode skipping special tokens.
    decoded_skip: String,
}

struct Reference {
    json: Value,
    bos: u32,
    cases: Vec<Case>,
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().into(),
            ids: ids_of(&c["ids"]),
            decoded: c["decoded"].as_str().unwrap().into(),
            decoded_skip: c["decoded_skip_special"].as_str().unwrap().into(),
        })
        .collect();
    assert!(cases.len() >= 25, "{name}: reference has only {} cases", cases.len());
    Reference {
        bos: json["bos_id"].as_u64().unwrap() as u32,
        json,
        cases,
    }
}

impl Reference {
    /// Strings llama.cpp and HF match as tokens in text.
    fn specials(&self) -> Vec<&str> {
        let mut v = vec!["<unk>", "<s>", "</s>"];
        for k in ["control", "user_defined"] {
            v.extend(self.json[k].as_object().unwrap().keys().map(String::as_str));
        }
        v
    }

    /// Encodes every case with and without BOS and decodes the ids back.
    fn check(&self, tok: &Tokenizer, what: &str) {
        let specials = self.specials();
        for c in &self.cases {
            assert_eq!(
                tok.encode(&c.text, false).unwrap(),
                c.ids,
                "{what}: encode {:?}",
                c.text
            );
            let mut with_bos = vec![self.bos];
            with_bos.extend(&c.ids);
            assert_eq!(
                tok.encode(&c.text, true).unwrap(),
                with_bos,
                "{what}: encode {:?} with BOS",
                c.text
            );
            let decoded = tok.decode(&c.ids, false).unwrap();
            assert_eq!(decoded, c.decoded, "{what}: decode {:?}", c.text);
            let skipped = tok.decode(&c.ids, true).unwrap();
            assert_eq!(
                skipped, c.decoded_skip,
                "{what}: decode {:?} skipping special tokens",
                c.text
            );
            if !specials.iter().any(|s| c.text.contains(s)) {
                assert_eq!(decoded, c.text, "{what}: plain text must round-trip");
            }
        }
        // the chat template renders as transformers did and encodes to the reference ids
        let chat = &self.json["chat"];
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = tok.chat_template.as_ref().unwrap().render(&messages, false).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{what}: chat template");
        assert_eq!(
            tok.encode(&rendered, false).unwrap(),
            ids_of(&chat["ids"]),
            "{what}: chat ids"
        );
        assert_eq!(tok.bos_token.as_deref(), Some("<s>"), "{what}");
        assert_eq!(tok.eos_token.as_deref(), Some("</s>"), "{what}");
        assert_eq!(
            tok.eos_token_id(),
            self.json["eos_id"].as_u64().map(|x| x as u32),
            "{what}"
        );
    }
}

#[test]
fn gguf_py_file_encodes_like_sentencepiece() {
    for name in MODELS {
        let r = reference(name);
        let f = GgufFile::open(fixture(name).join("spm.gguf")).unwrap();
        let tok = tokenizer_from_gguf(&f).unwrap();
        assert_eq!(tok.vocab_size() as u64, r.json["vocab_size"].as_u64().unwrap());
        r.check(&tok, &format!("{name}: gguf-py GGUF"));
    }
}

/// Merges follow the scores, not the ids: a GGUF with the normal tokens (and their scores) stored
/// in reverse order encodes to the reference ids renumbered the same way.
#[test]
fn merge_order_follows_scores_not_ids() {
    let r = reference("spm");
    let f = GgufFile::open(fixture("spm").join("spm.gguf")).unwrap();
    let get = |k: &str| f.get(k).and_then(MetadataValue::as_array).unwrap().clone();
    let (MetadataArray::String(tokens), MetadataArray::F32(scores), MetadataArray::I32(types)) = (
        get("tokenizer.ggml.tokens"),
        get("tokenizer.ggml.scores"),
        get("tokenizer.ggml.token_type"),
    ) else {
        panic!("fixture arrays have unexpected types");
    };
    let normal: Vec<usize> = (0..tokens.len()).filter(|&i| types[i] == 1).collect();
    assert!(normal.len() > 400);
    let mut to_new: Vec<usize> = (0..tokens.len()).collect();
    for (k, &old) in normal.iter().enumerate() {
        to_new[old] = normal[normal.len() - 1 - k];
    }
    let (mut t2, mut s2) = (tokens.clone(), scores.clone());
    for old in 0..tokens.len() {
        t2[to_new[old]] = tokens[old].clone();
        s2[to_new[old]] = scores[old];
    }
    let f = edited(&[
        ("tokenizer.ggml.tokens", Some(MetadataArray::String(t2).into())),
        ("tokenizer.ggml.scores", Some(MetadataArray::F32(s2).into())),
    ]);
    let tok = tokenizer_from_gguf(&f).unwrap();
    for c in &r.cases {
        let want: Vec<u32> = c.ids.iter().map(|&i| to_new[i as usize] as u32).collect();
        assert_eq!(tok.encode(&c.text, false).unwrap(), want, "{:?}", c.text);
        assert_eq!(tok.decode(&want, false).unwrap(), c.decoded, "{:?}", c.text);
    }
}

#[test]
fn write_hf_tokenizer_output_loads_and_encodes_alike() {
    for name in MODELS {
        let r = reference(name);
        let f = GgufFile::open(fixture(name).join("spm.gguf")).unwrap();
        let dir = tmp(&format!("{name}-hf"));
        write_hf_tokenizer(&f, &dir).unwrap();
        let tok = Tokenizer::from_dir(&dir).unwrap();
        r.check(&tok, &format!("{name}: write_hf_tokenizer"));
        // what it writes is the layout transformers' legacy LlamaConverter produced
        let tj: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
        assert_eq!(tj["model"]["byte_fallback"], true);
        let prefix = r.json["add_dummy_prefix"].as_bool().unwrap();
        assert_eq!(
            tj["normalizer"]["type"] == "Sequence",
            prefix,
            "{name}: {}",
            tj["normalizer"]
        );
    }
}

/// The HF `tokenizer.json` files (transformers 5's Metaspace layout and the legacy normalizer
/// layout) exported to GGUF metadata, read back.
#[test]
fn hf_tokenizer_json_exports_to_gguf_that_encodes_like_sentencepiece() {
    for name in MODELS {
        let r = reference(name);
        let want = GgufFile::open(fixture(name).join("spm.gguf")).unwrap();
        let vocab_size = r.json["vocab_size"].as_u64().unwrap() as usize;
        for layout in ["hf", "hf_legacy"] {
            let what = format!("{name}/{layout}");
            let mut w = GgufWriter::new();
            w.add_metadata("general.architecture", "llama").unwrap();
            add_tokenizer_metadata(&fixture(name).join(layout), &mut w, vocab_size).unwrap();
            let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
            // the vocabulary, token types and special ids are what llama.cpp's converter wrote
            for key in [
                "tokenizer.ggml.model",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template",
            ] {
                assert_eq!(
                    f.get(key).map(num_or_value),
                    want.get(key).map(num_or_value),
                    "{what}: {key}"
                );
            }
            let prefix = f
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(MetadataValue::as_bool);
            assert_eq!(prefix, r.json["add_dummy_prefix"].as_bool(), "{what}: add_space_prefix");
            let tok = tokenizer_from_gguf(&f).unwrap();
            r.check(&tok, &format!("{what}: exported"));
        }
    }
}

/// llama.cpp's SentencePiece tokenizer (`llm_tokenizer_spm_session`) written out plainly, to
/// check the GGUF metadata itself (the scores above all) rather than hearth's reader: the text
/// is split at unknown/control/user-defined token strings (leftmost, then longest); every text
/// piece gets the space prefix and `▁` for spaces; the adjacent pair whose concatenation is the
/// best-scoring token is joined until none is left (leftmost on ties); a piece that is no token
/// falls back to its `<0xXX>` byte tokens.
fn llama_cpp_spm(f: &GgufFile, text: &str) -> Vec<u32> {
    let arr = |k: &str| f.get(k).and_then(MetadataValue::as_array).unwrap().clone();
    let (MetadataArray::String(tokens), MetadataArray::F32(scores), MetadataArray::I32(types)) = (
        arr("tokenizer.ggml.tokens"),
        arr("tokenizer.ggml.scores"),
        arr("tokenizer.ggml.token_type"),
    ) else {
        panic!("unexpected metadata array types");
    };
    let prefix = f
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(MetadataValue::as_bool)
        .unwrap_or(true);
    let id: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let specials: Vec<usize> = (0..tokens.len()).filter(|&i| matches!(types[i], 2..=4)).collect();
    let mut out = Vec::new();
    let piece = |raw: &str, out: &mut Vec<u32>| {
        let text = if prefix { format!(" {raw}") } else { raw.to_string() }.replace(' ', "▁");
        let mut syms: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&t) = id.get(format!("{}{}", syms[i], syms[i + 1]).as_str())
                    && best.is_none_or(|(s, _)| scores[t] > s)
                {
                    best = Some((scores[t], i));
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for s in syms {
            match id.get(s.as_str()) {
                Some(&t) => out.push(t as u32),
                None => out.extend(s.bytes().map(|b| id[format!("<0x{b:02X}>").as_str()] as u32)),
            }
        }
    };
    let (mut start, mut i) = (0, 0);
    while i < text.len() {
        let hit = specials
            .iter()
            .filter(|&&t| !tokens[t].is_empty() && text[i..].starts_with(tokens[t].as_str()))
            .max_by_key(|&&t| tokens[t].len());
        match hit {
            Some(&t) => {
                if i > start {
                    piece(&text[start..i], &mut out);
                }
                out.push(t as u32);
                i += tokens[t].len();
                start = i;
            }
            None => i += text[i..].chars().next().unwrap().len_utf8(),
        }
    }
    if start < text.len() {
        piece(&text[start..], &mut out);
    }
    out
}

/// The metadata gguf-py wrote and the metadata hearth exports both tokenize like sentencepiece
/// under llama.cpp's algorithm: the exported scores rank merges correctly.
#[test]
fn exported_scores_drive_llama_cpp_merging_like_sentencepiece() {
    for name in MODELS {
        let r = reference(name);
        let vocab_size = r.json["vocab_size"].as_u64().unwrap() as usize;
        let mut files = vec![(
            "gguf-py".to_string(),
            GgufFile::open(fixture(name).join("spm.gguf")).unwrap(),
        )];
        for layout in ["hf", "hf_legacy"] {
            let mut w = GgufWriter::new();
            add_tokenizer_metadata(&fixture(name).join(layout), &mut w, vocab_size).unwrap();
            files.push((layout.to_string(), GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()));
        }
        for (what, f) in &files {
            for c in &r.cases {
                assert_eq!(llama_cpp_spm(f, &c.text), c.ids, "{name}/{what}: {:?}", c.text);
            }
        }
    }
}

/// Integers compare by value whatever their width (gguf-py writes u32 ids, bools as bools).
fn num_or_value(v: &MetadataValue) -> String {
    v.as_u64().map_or_else(|| format!("{v:?}"), |n| n.to_string())
}

/// A metadata key and its new value (`None`: removed).
type Edit<'a> = (&'a str, Option<MetadataValue>);

/// A change to a `tokenizer.json`.
type JsonEdit = Box<dyn Fn(&mut Value)>;

/// A GGUF with the fixture's metadata, `edit` applied: `Some(v)` replaces or adds a key, `None`
/// removes it.
fn edited(edits: &[Edit]) -> GgufFile {
    let f = GgufFile::open(fixture("spm").join("spm.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &f.info().metadata {
        match edits.iter().find(|(e, _)| e == k) {
            Some((_, Some(new))) => w.add_metadata(k.as_str(), new.clone()).unwrap(),
            Some((_, None)) => {}
            None => w.add_metadata(k.as_str(), v.clone()).unwrap(),
        }
    }
    for (k, v) in edits {
        if let Some(v) = v
            && f.get(k).is_none()
        {
            w.add_metadata(*k, v.clone()).unwrap();
        }
    }
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
}

fn metadata_error(f: &GgufFile) -> (String, String) {
    match hf_tokenizer_json(f) {
        Err(EngineError::GgufTokenizer(GgufTokenizerError::Metadata { key, reason })) => (key, reason),
        Err(e) => panic!("expected a metadata error, got {e}"),
        Ok(_) => panic!("expected a metadata error, got a tokenizer"),
    }
}

#[test]
fn malformed_metadata_gives_typed_errors_naming_the_key() {
    let n = reference("spm").json["vocab_size"].as_u64().unwrap() as usize;
    let cases: Vec<(Vec<Edit>, &str, &str)> = vec![
        (
            vec![(
                "tokenizer.ggml.scores",
                Some(MetadataArray::F32(vec![0.0; n - 1]).into()),
            )],
            "tokenizer.ggml.scores",
            "scores for",
        ),
        (
            vec![("tokenizer.ggml.scores", None)],
            "tokenizer.ggml.scores",
            "missing",
        ),
        (
            vec![("tokenizer.ggml.scores", Some(MetadataArray::I32(vec![0; n]).into()))],
            "tokenizer.ggml.scores",
            "array of I32",
        ),
        (
            vec![("tokenizer.ggml.tokens", None)],
            "tokenizer.ggml.tokens",
            "missing",
        ),
        (
            vec![("tokenizer.ggml.tokens", Some(MetadataValue::from("<s>")))],
            "tokenizer.ggml.tokens",
            "expected an array of strings",
        ),
        (
            vec![(
                "tokenizer.ggml.token_type",
                Some(MetadataArray::I32(vec![1; n + 1]).into()),
            )],
            "tokenizer.ggml.token_type",
            "types for",
        ),
        (
            vec![(
                "tokenizer.ggml.token_type",
                Some(MetadataArray::F32(vec![1.0; n]).into()),
            )],
            "tokenizer.ggml.token_type",
            "array of F32",
        ),
        (
            vec![("tokenizer.ggml.token_type", Some(MetadataArray::I32(vec![9; n]).into()))],
            "tokenizer.ggml.token_type",
            "type 9",
        ),
        (
            vec![("tokenizer.ggml.add_space_prefix", Some(MetadataValue::from("yes")))],
            "tokenizer.ggml.add_space_prefix",
            "expected a bool",
        ),
        (
            vec![("tokenizer.ggml.add_bos_token", Some(MetadataValue::U8(1)))],
            "tokenizer.ggml.add_bos_token",
            "expected a bool",
        ),
        (
            vec![("tokenizer.ggml.bos_token_id", Some(MetadataValue::from("<s>")))],
            "tokenizer.ggml.bos_token_id",
            "expected a token id",
        ),
        (
            vec![("tokenizer.ggml.model", Some(MetadataValue::U32(1)))],
            "tokenizer.ggml.model",
            "not a string",
        ),
    ];
    for (edits, key, reason) in cases {
        let (k, r) = metadata_error(&edited(&edits));
        assert_eq!(k, key, "{edits:?}");
        assert!(r.contains(reason), "{key}: reason {r:?} should mention {reason:?}");
    }
    // an unknown tokenizer model is `Unsupported`, not a panic
    let f = edited(&[("tokenizer.ggml.model", Some("rwkv".into()))]);
    assert!(matches!(
        hf_tokenizer_json(&f),
        Err(EngineError::GgufTokenizer(GgufTokenizerError::Unsupported(m))) if m == "rwkv"
    ));
}

#[test]
fn llama_cpp_defaults_apply_when_keys_are_absent() {
    // no add_bos / special ids / add_space_prefix: llama.cpp's SentencePiece defaults
    let r = reference("spm");
    let f = edited(&[
        ("tokenizer.ggml.add_bos_token", None),
        ("tokenizer.ggml.bos_token_id", None),
        ("tokenizer.ggml.eos_token_id", None),
        ("tokenizer.ggml.unknown_token_id", None),
    ]);
    r.check(&tokenizer_from_gguf(&f).unwrap(), "defaults");
    // the explicit flags win
    let f = edited(&[
        ("tokenizer.ggml.add_bos_token", Some(false.into())),
        ("tokenizer.ggml.add_eos_token", Some(true.into())),
    ]);
    let tok = tokenizer_from_gguf(&f).unwrap();
    let c = &r.cases[1];
    let mut want = c.ids.clone();
    want.push(r.json["eos_id"].as_u64().unwrap() as u32);
    assert_eq!(tok.encode(&c.text, true).unwrap(), want);
}

#[test]
fn exporter_rejects_malformed_tokenizer_json_naming_the_field() {
    let src: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("spm").join("hf_legacy/tokenizer.json")).unwrap())
            .unwrap();
    let cases: Vec<(&str, JsonEdit)> = vec![
        ("model.vocab", Box::new(|tj| tj["model"]["vocab"] = Value::from(3))),
        (
            "model.vocab[\"<s>\"]",
            Box::new(|tj| tj["model"]["vocab"]["<s>"] = Value::from("one")),
        ),
        (
            "model.merges[0]",
            Box::new(|tj| tj["model"]["merges"][0] = Value::from(7)),
        ),
        (
            "added_tokens[1]",
            Box::new(|tj| tj["added_tokens"][1]["id"] = Value::Null),
        ),
    ];
    for (field, edit) in cases {
        let dir = tmp("bad-json");
        let mut tj = src.clone();
        edit(&mut tj);
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        match tokenizer_metadata(&dir, 800) {
            Err(hearth_models::ModelError::Config { field: f, .. }) => assert_eq!(f, field),
            Err(e) => panic!("{field}: unexpected error {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    let dir = tmp("not-json");
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    assert!(matches!(
        tokenizer_metadata(&dir, 800),
        Err(hearth_models::ModelError::Config { .. })
    ));
    // no tokenizer.json: nothing to export, not an error
    assert!(tokenizer_metadata(&tmp("empty"), 800).unwrap().is_empty());
}

/// The built-in tiny Llama with its embedding grown to `vocab` rows, and `tokenizer` files.
fn tiny_llama_with(tokenizer: &Path, vocab: usize, out: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-llama");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = vocab.into();
    cfg["bos_token_id"] = 1.into();
    cfg["eos_token_id"] = 2.into();
    cfg["pad_token_id"] = Value::Null;
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let mut shape = t.shape().to_vec();
        let mut data = t.data().to_vec();
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            // new rows: copies of existing rows, reversed, so they differ from their sources
            let row = shape[1] * 4;
            let old = data.clone();
            for i in shape[0]..vocab {
                let from = &old[(i % shape[0]) * row..][..row];
                data.extend(from.chunks_exact(4).rev().flatten());
            }
            shape[0] = vocab;
        }
        owned.push((name, shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(f), out.join(f)).unwrap();
    }
}

fn greedy(engine: &Engine<B>, prompt: Prompt) -> (Vec<u32>, String) {
    let req = GenerateRequest {
        prompt,
        params: SamplingParams::default(),
        max_new_tokens: 8,
        stop_strings: vec![],
    };
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in engine.generate(req).unwrap() {
        match ev.unwrap() {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Done { finish, tail, .. } => {
                assert!(matches!(finish, Finish::MaxTokens | Finish::Eos), "{finish:?}");
                text.push_str(&tail);
            }
        }
    }
    (ids, text)
}

/// `hearth quantize` of a Llama checkpoint with a SentencePiece tokenizer, then
/// `Engine::from_gguf`: the prompt encodes to the reference ids and generation matches the
/// same checkpoint loaded from its HF directory.
#[test]
fn engine_from_gguf_with_a_sentencepiece_vocabulary() {
    let r = reference("spm");
    let dir = tmp("model");
    tiny_llama_with(&fixture("spm").join("hf_legacy"), 800, &dir);
    let gguf = dir.join("model.gguf");
    hf_to_gguf(&dir, &gguf, hearth_quant::GgmlType::F32).unwrap();
    let f = GgufFile::open(&gguf).unwrap();
    assert_eq!(
        f.get("tokenizer.ggml.model").and_then(MetadataValue::as_str),
        Some("llama")
    );
    let dev = Default::default();
    let from_gguf = Engine::<B>::from_gguf(&gguf, &dev).unwrap();
    r.check(&from_gguf.tokenizer, "Engine::from_gguf");
    let from_dir = Engine::<B>::from_dir(&dir, &dev).unwrap();
    for prompt in [
        Prompt::Text(r.cases[1].text.clone()),
        Prompt::Chat(vec![ChatMessage::new("user", "What is 2+2?")]),
    ] {
        let (a, ta) = greedy(&from_gguf, prompt.clone());
        let (b, tb) = greedy(&from_dir, prompt);
        assert!(!a.is_empty());
        assert_eq!(a, b, "greedy ids from the GGUF and the HF directory");
        assert_eq!(ta, tb, "streamed text from the GGUF and the HF directory");
    }
}
