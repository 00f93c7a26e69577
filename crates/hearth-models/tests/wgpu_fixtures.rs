//! Every fixture model on the wgpu backend (f32) against HuggingFace transformers (float64
//! reference): the same checks as `fixtures.rs` — prefill logits and hidden states, greedy ids
//! (exact) with per-step logits, batched == alone — at rel ≤ 1e-3.
//!
//! Run with `cargo test -p hearth-models --features wgpu --test wgpu_fixtures`. On a machine
//! without a GPU, Mesa's llvmpipe Vulkan driver (`mesa-vulkan-drivers`) provides the adapter. When
//! no adapter exists at all, burn-wgpu panics ("No possible adapter available for backend") and
//! every test here fails: nothing falls back to the CPU backend.
//!
//! On wgpu the models run hearth's cubecl kernels (`hearth_backend::cube`: exact-f32 matmul,
//! fused RMSNorm and SiLU·mul); f32 linear layers are device tensors (`LinearWeight::Device`),
//! quantized ones stay packed on the device (`LinearWeight::Packed`, tested in
//! `wgpu_packed.rs`). The kernels themselves are tested against the burn-op fallbacks in
//! hearth-backend's `tests/kernels.rs`.
#![cfg(feature = "wgpu")]

mod common;
use burn::tensor::Tensor;
use hearth_backend::{HearthBackend, Wgpu};

const TOL: f64 = 1e-3;

fn check_model(name: &str) {
    let e = common::check_model::<Wgpu>(name, TOL);
    println!(
        "wgpu {name}: max rel err prefill {:.2e}, hidden {:.2e}, decode steps {:.2e}, batched {:.2e}",
        e.prefill_logits, e.hidden_states, e.step_logits, e.batched_logits
    );
}

/// The wgpu backend must compute on the device: no host kernels, and an adapter must exist
/// (this panics, failing the test, when burn-wgpu finds none).
#[test]
fn adapter_present_and_no_host_kernels() {
    const { assert!(!<Wgpu as HearthBackend>::HOST_KERNELS) };
    let dev = Default::default();
    let a = Tensor::<Wgpu, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev);
    let b = Tensor::<Wgpu, 2>::from_floats([[5.0, 6.0], [7.0, 8.0]], &dev);
    let c = a.matmul(b).into_data().to_vec::<f32>().unwrap();
    assert_eq!(c, vec![19.0, 22.0, 43.0, 50.0]);
}

/// Greedy decode with the argmax on the device, one step enqueued ahead of the read-back
/// (`Decoder::greedy_steps`, what `hearth bench` decodes with): the reference's ids exactly.
#[test]
fn device_greedy_steps_every_model() {
    for name in common::MODELS {
        common::check_device_greedy::<Wgpu>(name);
    }
}

#[test]
fn llama() {
    check_model("llama");
}
#[test]
fn llama_tied_bf16() {
    check_model("llama_tied_bf16");
}
#[test]
fn mistral_sliding_window() {
    check_model("mistral");
}
#[test]
fn qwen2() {
    check_model("qwen2");
}
#[test]
fn qwen3() {
    check_model("qwen3");
}
#[test]
fn mixtral() {
    check_model("mixtral");
}
#[test]
fn qwen2_moe() {
    check_model("qwen2_moe");
}
#[test]
fn qwen3_moe() {
    check_model("qwen3_moe");
}
#[test]
fn olmoe() {
    check_model("olmoe");
}
#[test]
fn deepseek_v3() {
    check_model("deepseek_v3");
}

/// The same checks with every RMSNorm folded into the matvec launches after it and every
/// residual add into the launch before (`hearth_backend::cube::set_fold_norms`; off by
/// default): a dense model, one with q/k/v biases (added after the folded product) and one
/// whose MoE layers take the norm separately. Other tests may run while the switch is on;
/// both paths are within the same tolerance.
#[test]
fn folded_norms_llama_qwen2_mixtral() {
    // the fold applies where the norm sums are not carried (they are by default)
    hearth_backend::cube::set_norm_sums(Some(false));
    hearth_backend::cube::set_fold_norms(Some(true));
    assert!(<Wgpu as HearthBackend>::folds_norms());
    for name in ["llama", "qwen2", "mixtral"] {
        check_model(name);
    }
    hearth_backend::cube::set_fold_norms(None);
    hearth_backend::cube::set_norm_sums(None);
}
