//! Bad checkpoints give typed errors that name the file, tensor or field — never a panic.

mod common;
use common::model_dir;
use hearth_models::{CausalLm, ModelConfig, ModelError, WeightStore};
use std::path::Path;

type B = hearth_backend::Cpu;

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(model_dir(name).join(f), to.join(f)).unwrap();
    }
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-errors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn truncated_safetensors() {
    let d = tmp("trunc");
    copy_fixture("llama", &d);
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    match WeightStore::open(&d) {
        Err(ModelError::Truncated { file, .. }) => assert!(file.ends_with("model.safetensors")),
        other => panic!("expected Truncated, got {:?}", other.err()),
    }
    std::fs::write(&p, &bytes[..4]).unwrap();
    assert!(matches!(WeightStore::open(&d), Err(ModelError::Truncated { .. })));
    // header length pointing past the end
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(WeightStore::open(&d), Err(ModelError::Truncated { .. })));
    // garbage header
    let mut b = bytes.clone();
    b[8..16].copy_from_slice(b"notjson!");
    std::fs::write(&p, &b).unwrap();
    assert!(matches!(WeightStore::open(&d), Err(ModelError::BadHeader { .. })));
}

#[test]
fn unknown_model_type_and_bad_fields() {
    let d = tmp("cfg");
    copy_fixture("llama", &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(d.join("config.json"), cfg.replace("\"llama\"", "\"gpt9\"")).unwrap();
    match ModelConfig::from_dir(&d) {
        Err(e @ ModelError::UnknownModelType { .. }) => assert!(e.to_string().contains("gpt9")),
        other => panic!("expected UnknownModelType, got {other:?}"),
    }
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
    )
    .unwrap();
    match ModelConfig::from_dir(&d) {
        Err(ModelError::Config { field, .. }) => assert_eq!(field, "num_key_value_heads"),
        other => panic!("expected Config error, got {other:?}"),
    }
}

#[test]
fn wrong_shape_and_missing_tensor() {
    let d = tmp("shape");
    copy_fixture("llama", &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    // a config that disagrees with the weights
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 160", "\"intermediate_size\": 128"),
    )
    .unwrap();
    match CausalLm::<B>::from_dir(&d, &Default::default()) {
        Err(ModelError::Shape {
            tensor,
            expected,
            actual,
            ..
        }) => {
            assert!(tensor.contains("mlp"), "{tensor}");
            assert_ne!(expected, actual);
        }
        Err(e) => panic!("expected Shape, got {e}"),
        Ok(_) => panic!("expected Shape error"),
    }
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    match CausalLm::<B>::from_dir(&d, &Default::default()) {
        Err(ModelError::MissingTensor { tensor, .. }) => assert!(tensor.starts_with("model.layers.2."), "{tensor}"),
        Err(e) => panic!("expected MissingTensor, got {e}"),
        Ok(_) => panic!("expected MissingTensor error"),
    }
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let model = CausalLm::<B>::from_dir(&model_dir("llama"), &Default::default()).unwrap();
    let mut cache = model.new_cache(1, Some(8));
    let r = model.forward(&[vec![1; 9]], &mut cache, Default::default());
    assert!(matches!(
        r.err(),
        Some(ModelError::Cache(hearth_attention::CacheError::Full {
            needed: 9,
            capacity: 8,
            ..
        }))
    ));
}
