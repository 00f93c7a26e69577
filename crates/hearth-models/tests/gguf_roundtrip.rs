//! HF fixture → GGUF (llama.cpp layout, permuted Q/K) → `GgufSource` must reproduce the
//! safetensors model: exact-ish logits for F32, identical greedy ids for Q8_0.

mod common;

use common::{Reference, argmax, host, model_dir, rel_err};
use hearth_models::convert::{HfDtype, gguf_to_hf, hf_to_gguf};
use hearth_models::gguf::{GgufSource, config_from_gguf};
use hearth_models::{CausalLm, ForwardOptions, TensorSource};
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
    roundtrip_in(name, ty, "")
}

/// [`roundtrip`] in its own temporary folder (`tag`), for tests running concurrently.
fn roundtrip_in(name: &str, ty: GgmlType, tag: &str) -> (CausalLm<B>, CausalLm<B>, PathBuf) {
    let dir = model_dir(name);
    let out = tmp(&format!("{name}-{ty:?}{tag}")).join("model.gguf");
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
fn llama_permuted_rows_with_interleaved_rope_match_hf_order() {
    // `keep_rope_permutation`: compute on llama.cpp's Q/K rows as stored (mapped, no copy)
    // with interleaved RoPE; must equal the un-permuted (HF-order) model and, for F32, the
    // safetensors model.
    let r = Reference::open("llama");
    let cfg_hf = hearth_models::ModelConfig::from_dir(&model_dir("llama")).unwrap();
    for ty in [GgmlType::F32, GgmlType::Q8_0] {
        let (hf_order, st, out) = roundtrip_in("llama", ty, "-native");
        let src = GgufSource::open(&out).unwrap().keep_rope_permutation();
        let cfg = src.config().unwrap();
        assert_eq!(cfg.rope_layout, hearth_attention::RopeLayout::Interleaved);
        let (rows, cols) = (cfg.num_heads * cfg.head_dim, cfg.hidden_size);
        let q = src
            .packed("model.layers.0.self_attn.q_proj.weight", rows, cols)
            .unwrap()
            .expect("q_proj is in a kernel format");
        assert!(
            q.bytes.is_mapped(),
            "{ty:?}: Q rows must be borrowed from the map, not copied"
        );
        let native = CausalLm::<B>::load(cfg, &src, &Default::default()).unwrap();
        for p in ["prompt0", "prompt1"] {
            let ids = r.ids(&format!("{p}.input_ids"));
            let a = prefill(&native, &ids);
            let e = rel_err(&a, &prefill(&hf_order, &ids));
            assert!(e <= 1e-5, "{ty:?} {p}: native vs HF-order rows: rel err {e}");
            if ty == GgmlType::F32 {
                let e = rel_err(&a, &prefill(&st, &ids));
                assert!(e <= 1e-4, "{p}: native vs safetensors: rel err {e}");
            }
            let n = r.ids(&format!("{p}.greedy_ids")).len();
            assert_eq!(greedy(&native, &ids, n), greedy(&hf_order, &ids, n), "{ty:?} {p}");
        }
        assert_eq!(cfg_hf.rope_layout, hearth_attention::RopeLayout::Half);
        let _ = std::fs::remove_dir_all(out.parent().unwrap());
    }
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

/// MoE families in llama.cpp's `qwen2moe`, `qwen3moe`, `olmoe` and `deepseek2` layouts:
/// F32 GGUF logits equal the safetensors model and the transformers reference, greedy ids
/// are the reference's, and GGUF → HF gives back every original tensor bit for bit.
fn moe_family_f32(name: &str, arch: &str) {
    let (g, st, out) = roundtrip(name, GgmlType::F32);
    let src = GgufSource::open(&out).unwrap();
    assert_eq!(
        src.file().get("general.architecture").and_then(|v| v.as_str()),
        Some(arch)
    );
    let r = Reference::open(name);
    for p in ["prompt0", "prompt1"] {
        let ids = r.ids(&format!("{p}.input_ids"));
        let got = prefill(&g, &ids);
        let e = rel_err(&got, &prefill(&st, &ids));
        assert!(e <= 1e-4, "{name} {p}: GGUF vs safetensors rel err {e}");
        let e = rel_err(&got, &r.f32(&format!("{p}.prefill_logits")).0);
        assert!(e <= 1e-4, "{name} {p}: GGUF vs transformers rel err {e}");
        let want = r.ids(&format!("{p}.greedy_ids"));
        assert_eq!(greedy(&g, &ids, want.len()), want, "{name} {p}");
    }
    let back = out.parent().unwrap().join("hf");
    gguf_to_hf(&out, &back, HfDtype::F32).unwrap();
    let w0 = hearth_models::WeightStore::open(&model_dir(name)).unwrap();
    let w1 = hearth_models::WeightStore::open(&back).unwrap();
    let mut n0: Vec<&str> = w0.names().collect();
    let mut n1: Vec<&str> = w1.names().collect();
    n0.sort();
    n1.sort();
    assert_eq!(n0, n1, "{name}: tensor names after GGUF → HF");
    for n in n0 {
        assert_eq!(w0.f32(n, None).unwrap(), w1.f32(n, None).unwrap(), "{name}: {n}");
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

/// Q8_0 GGUF of a MoE family. (1) The mapping: the file loaded with `unpacked` (blocks
/// dequantized to f32) equals the safetensors written by `gguf_to_hf` from the same file
/// (≤1e-4) — merged experts, split `attn_k_b`/`attn_v_b` and all. (2) The packed kernels:
/// teacher-forced on the reference's greedy continuation, the median step's logits are within
/// 6% (relative) of the f32 model's and at most one step per prompt exceeds 10% (documented
/// bound: these tiny random MoE models have near-tied router scores that 8-bit weights and
/// activations flip, a discontinuity), and the greedy choice is the reference's at every step
/// whose top-2 margin exceeds twice the observed logit error.
fn moe_family_q8_0(name: &str) {
    let (g, st, out) = roundtrip(name, GgmlType::Q8_0);
    let dev = Default::default();
    let src = GgufSource::open(&out).unwrap();
    let opts = hearth_models::LoadOptions {
        unpacked: true,
        ..Default::default()
    };
    let unpacked = CausalLm::<B>::load_with(src.config().unwrap(), &src, &dev, &opts).unwrap();
    let back = out.parent().unwrap().join("hf-q8");
    gguf_to_hf(&out, &back, HfDtype::F32).unwrap();
    let dequant = CausalLm::<B>::from_dir(&back, &dev).unwrap();
    let r = Reference::open(name);
    for p in ["prompt0", "prompt1"] {
        let mut seq = r.ids(&format!("{p}.input_ids"));
        let n_prompt = seq.len();
        let e = rel_err(&prefill(&unpacked, &seq), &prefill(&dequant, &seq));
        assert!(e <= 1e-4, "{name} {p}: unpacked GGUF vs gguf_to_hf rel err {e}");
        seq.extend(r.ids(&format!("{p}.greedy_ids")));
        let (a, b) = (prefill(&g, &seq), prefill(&st, &seq));
        let v = a.len() / seq.len();
        let (mut decided, mut errs) = (0, Vec::new());
        for t in n_prompt - 1..seq.len() - 1 {
            let (qa, fb) = (&a[t * v..(t + 1) * v], &b[t * v..(t + 1) * v]);
            let e = rel_err(qa, fb);
            errs.push(e);
            let max_err = qa.iter().zip(fb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let mut sorted = fb.to_vec();
            sorted.sort_by(|x, y| y.total_cmp(x));
            if sorted[0] - sorted[1] > 2.0 * max_err {
                assert_eq!(argmax(qa), seq[t + 1], "{name} {p} step {t}");
                decided += 1;
            }
        }
        errs.sort_by(f64::total_cmp);
        let median = errs[errs.len() / 2];
        eprintln!(
            "{name} {p}: Q8_0 step rel err median {median:.4}, max {:.4}; {decided}/{} steps clear of near-ties, all equal",
            errs[errs.len() - 1],
            seq.len() - n_prompt
        );
        assert!(median <= 0.06, "{name} {p}: median Q8_0 rel err {median}");
        assert!(errs.iter().filter(|&&e| e > 0.1).count() <= 1, "{name} {p}: {errs:?}");
    }
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn qwen2_moe_gguf() {
    moe_family_f32("qwen2_moe", "qwen2moe");
    moe_family_q8_0("qwen2_moe");
}

#[test]
fn qwen3_moe_gguf() {
    moe_family_f32("qwen3_moe", "qwen3moe");
    moe_family_q8_0("qwen3_moe");
}

#[test]
fn olmoe_gguf() {
    moe_family_f32("olmoe", "olmoe");
    moe_family_q8_0("olmoe");
}

#[test]
fn deepseek_v3_gguf() {
    moe_family_f32("deepseek_v3", "deepseek2");
    moe_family_q8_0("deepseek_v3");
}
