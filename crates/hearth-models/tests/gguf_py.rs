//! GGUF files written by gguf-py (`tests/gguf_py/make_gguf_py.py`: llama.cpp's tensor names,
//! merged experts, DeepSeek's split `attn_k_b`/`attn_v_b`, converter metadata) for the
//! qwen2moe, qwen3moe and deepseek2 architectures load through `GgufSource` and reproduce
//! the transformers float64 reference: prefill logits and every greedy step ≤1e-4, greedy
//! ids identical.

mod common;

use common::{Reference, argmax, host, rel_err};
use hearth_models::gguf::GgufSource;
use hearth_models::{CausalLm, ForwardOptions, ModelConfig};
use std::path::PathBuf;

type B = hearth_backend::Cpu;

fn gguf_path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/gguf_py/{name}.gguf"));
    assert!(
        p.exists(),
        "missing {} (regenerate with tests/gguf_py/make_gguf_py.py)",
        p.display()
    );
    p
}

fn check(name: &str) {
    let src = GgufSource::open(gguf_path(name)).unwrap();
    let cfg = src.config().unwrap();
    let want = ModelConfig::from_dir(&common::model_dir(name)).unwrap();
    assert_eq!(cfg.moe, want.moe, "{name}: MoE config from GGUF metadata");
    assert_eq!(cfg.mla, want.mla, "{name}: MLA config from GGUF metadata");
    assert_eq!(cfg.rope, want.rope, "{name}: RoPE config from GGUF metadata");
    assert_eq!(cfg.attention_scale, want.attention_scale, "{name}");
    let model = CausalLm::<B>::load(cfg, &src, &Default::default()).unwrap();
    let r = Reference::open(name);
    for p in ["prompt0", "prompt1"] {
        let ids = r.ids(&format!("{p}.input_ids"));
        let mut cache = model.new_cache(1, Some(64));
        let out = model
            .forward(std::slice::from_ref(&ids), &mut cache, ForwardOptions::default())
            .unwrap();
        let e = rel_err(&host(out.logits), &r.f32(&format!("{p}.prefill_logits")).0);
        assert!(e <= 1e-4, "{name} {p}: prefill rel err {e}");
        let want = r.ids(&format!("{p}.greedy_ids"));
        let (steps, _) = r.f32(&format!("{p}.greedy_step_logits"));
        let v = steps.len() / want.len();
        let mut cache = model.new_cache(1, Some(64));
        let opts = ForwardOptions {
            last_only: true,
            ..Default::default()
        };
        let mut next = ids;
        for (i, &w) in want.iter().enumerate() {
            let logits = host(model.forward(&[next], &mut cache, opts).unwrap().logits);
            let e = rel_err(&logits, &steps[i * v..(i + 1) * v]);
            assert!(e <= 1e-4, "{name} {p} step {i}: rel err {e}");
            assert_eq!(argmax(&logits), w, "{name} {p} step {i}");
            next = vec![w];
        }
    }
}

#[test]
fn qwen2moe_gguf_py() {
    check("qwen2_moe");
}

#[test]
fn qwen3moe_gguf_py() {
    check("qwen3_moe");
}

#[test]
fn deepseek2_gguf_py() {
    check("deepseek_v3");
}

#[test]
fn unsupported_gguf_architectures_are_typed_errors() {
    use hearth_quant::gguf::{GgufFile, GgufWriter};
    let file = |arch: &str, extra: &[(&str, u32)]| {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", arch).unwrap();
        for (k, v) in [
            ("block_count", 1u32),
            ("embedding_length", 8),
            ("feed_forward_length", 16),
            ("attention.head_count", 2),
            ("vocab_size", 32),
        ]
        .iter()
        .chain(extra)
        {
            w.add_metadata(format!("{arch}.{k}"), *v).unwrap();
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    };
    let err = hearth_models::gguf::config_from_gguf(&file("gemma3", &[])).unwrap_err();
    assert!(
        matches!(&err, hearth_models::ModelError::UnknownModelType { model_type, .. }
            if model_type.contains("gemma3") && model_type.contains("deepseek2")),
        "{err}"
    );
    // DeepSeek-V2 (softmax gating) routes differently from V3: refused, not silently wrong
    let err = hearth_models::gguf::config_from_gguf(&file("deepseek2", &[("expert_gating_func", 1)])).unwrap_err();
    assert!(err.to_string().contains("expert_gating_func"), "{err}");
    // a MoE architecture without experts
    let err = hearth_models::gguf::config_from_gguf(&file("qwen3moe", &[])).unwrap_err();
    assert!(err.to_string().contains("qwen3moe.expert_count"), "{err}");
}
