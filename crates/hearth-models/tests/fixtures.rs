//! Every fixture model against HuggingFace transformers (float64 reference): prefill logits and
//! each layer's hidden states (rel ≤ 1e-4), greedy ids (exact) with per-step logits, and
//! batched == alone; each through burn's forward and through the host forward.

mod common;

type B = hearth_backend::Cpu;
const TOL: f64 = 1e-4;

fn check_model(name: &str) {
    let burn = common::check_model::<B>(name, TOL);
    // the host forward (what the CPU backend runs) against the same reference
    let host = common::check_host_model(name, TOL);
    eprintln!("{name}: burn {burn:?}\n{name}: host {host:?}");
}

/// `Decoder::greedy_steps` on burn's forward on the CPU backend (there the read is immediate):
/// the reference's greedy ids for every model.
#[test]
fn device_greedy_steps_every_model() {
    for name in common::MODELS {
        common::check_device_greedy::<hearth_backend::Cpu>(name);
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
