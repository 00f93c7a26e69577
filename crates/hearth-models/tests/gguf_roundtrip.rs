//! HF fixture → GGUF (llama.cpp layout, permuted Q/K) → `GgufSource` must reproduce the
//! safetensors model: exact-ish logits for F32, identical greedy ids for Q8_0.

mod common;

use common::{Reference, argmax, host, model_dir, rel_err};
use hearth_models::convert::{HfDtype, gguf_to_hf, hf_to_gguf};
use hearth_models::gguf::{GgufSource, config_from_gguf};
use hearth_models::{CausalLm, ForwardOptions};
use hearth_quant::GgmlType;
use std::path::PathBuf;

type B = hearth_backend::Cpu;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-gguf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn prefill(model: &CausalLm<B>, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1, Some(64));
    host(
        model
            .forward(&[ids.to_vec()], &mut cache, ForwardOptions::default())
            .unwrap()
            .logits,
    )
}

fn greedy(model: &CausalLm<B>, ids: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(1, Some(64));
    let opts = ForwardOptions {
        last_only: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut next = ids.to_vec();
    for _ in 0..n {
        let logits = host(model.forward(&[next], &mut cache, opts).unwrap().logits);
        let id = argmax(&logits);
        out.push(id);
        next = vec![id];
    }
    out
}

fn roundtrip(name: &str, ty: GgmlType) -> (CausalLm<B>, CausalLm<B>, PathBuf) {
    let dir = model_dir(name);
    let out = tmp(&format!("{name}-{ty:?}")).join("model.gguf");
    hf_to_gguf(&dir, &out, ty).unwrap();
    let src = GgufSource::open(&out).unwrap();
    let cfg = config_from_gguf(src.file()).unwrap();
    let want = hearth_models::ModelConfig::from_dir(&dir).unwrap();
    assert_eq!(
        (cfg.arch, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim),
        (want.arch, want.num_layers, want.num_kv_heads, want.head_dim)
    );
    assert_eq!(cfg.rope, want.rope, "rope config must survive the round trip");
    let dev = Default::default();
    let g = CausalLm::<B>::load(cfg, &src, &dev).unwrap();
    let st = CausalLm::<B>::from_dir(&dir, &dev).unwrap();
    (g, st, out)
}

#[test]
fn llama_f32_roundtrip_matches_safetensors() {
    let (g, st, out) = roundtrip("llama", GgmlType::F32);
    let r = Reference::open("llama");
    for p in ["prompt0", "prompt1"] {
        let ids = r.ids(&format!("{p}.input_ids"));
        let (a, b) = (prefill(&g, &ids), prefill(&st, &ids));
        let e = rel_err(&a, &b);
        assert!(e <= 1e-4, "{p}: rel err {e}");
    }
    // GGUF → HF again: the safetensors must hold the original (unpermuted) weights
    let back = out.parent().unwrap().join("hf");
    gguf_to_hf(&out, &back, HfDtype::F32).unwrap();
    let w0 = hearth_models::WeightStore::open(&model_dir("llama")).unwrap();
    let w1 = hearth_models::WeightStore::open(&back).unwrap();
    for n in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
    ] {
        assert_eq!(w0.f32(n, None).unwrap(), w1.f32(n, None).unwrap(), "{n}");
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn llama_q8_0_greedy_matches_f32() {
    let (g, st, out) = roundtrip("llama", GgmlType::Q8_0);
    let r = Reference::open("llama");
    for p in ["prompt0", "prompt1"] {
        let ids = r.ids(&format!("{p}.input_ids"));
        let n = r.ids(&format!("{p}.greedy_ids")).len();
        assert_eq!(greedy(&g, &ids, n), greedy(&st, &ids, n), "{p}");
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn mixtral_merged_experts_roundtrip() {
    let (g, st, out) = roundtrip("mixtral", GgmlType::F32);
    let r = Reference::open("mixtral");
    let ids = r.ids("prompt0.input_ids");
    let e = rel_err(&prefill(&g, &ids), &prefill(&st, &ids));
    assert!(e <= 1e-4, "rel err {e}");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn qwen3_roundtrip() {
    let (g, st, out) = roundtrip("qwen3", GgmlType::F32);
    let r = Reference::open("qwen3");
    let ids = r.ids("prompt0.input_ids");
    let e = rel_err(&prefill(&g, &ids), &prefill(&st, &ids));
    assert!(e <= 1e-4, "rel err {e}");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn missing_tensor_is_a_typed_error() {
    use hearth_models::TensorSource;
    let out = tmp("missing").join("m.gguf");
    hf_to_gguf(&model_dir("llama"), &out, GgmlType::F32).unwrap();
    let src = GgufSource::open(&out).unwrap();
    let err = src.f32("model.layers.99.mlp.up_proj.weight", None).unwrap_err();
    assert!(err.to_string().contains("blk.99.ffn_up.weight"), "{err}");
    let err = src.f32("model.norm.weight", Some(&[3])).unwrap_err();
    assert!(matches!(err, hearth_models::ModelError::Shape { .. }), "{err}");
    assert!(GgufSource::open(out.with_extension("nope")).is_err());
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}
