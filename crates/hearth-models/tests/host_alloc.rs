//! The host forward's decode step allocates nothing once its session is warm: a counting global
//! allocator (this test binary only) sees zero allocations over 96 decode steps of dense f32,
//! Q8_0, Q4_0, BF16, Q4_1, Q4_K, Q6_K and F16 models and of three MoE models (softmax top-k;
//! sigmoid + correction bias + group limit with MLA; shared experts with a gate), on one
//! thread (on a pool of two, rayon's work-stealing deques reallocate now and then).

mod common;

use hearth_models::host::HostModel;
use hearth_models::{CausalLm, ForwardOptions, LoadOptions, ModelConfig, WeightStore};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; the counter has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LAST: ForwardOptions = ForwardOptions {
    hidden_states: false,
    last_only: true,
};

/// Allocations per decode step over `steps` steps after a prefill and eight warm-up steps, the
/// loop inside the model's pool ([`HostModel::install`]: no hand-off per step; a forward called
/// from outside it also costs rayon's injector one 1.5 KB block per 63 calls).
fn allocs_per_step(host: &HostModel, steps: usize) -> f64 {
    host.install(|| {
        let mut s = host.new_session(1, Some(8 + 8 + steps + 1));
        let prompt: Vec<Vec<u32>> = vec![(0..8).map(|i| i * 5 + 1).collect()];
        let mut tok = common::argmax(host.forward(&prompt, &mut s, LAST).unwrap().logits);
        let mut input = vec![vec![tok]];
        // warm-up: pooled activation buffers settle at their largest size within a few steps
        for _ in 0..8 {
            input[0][0] = tok;
            tok = common::argmax(host.forward(&input, &mut s, LAST).unwrap().logits);
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..steps {
            input[0][0] = tok;
            tok = common::argmax(host.forward(&input, &mut s, LAST).unwrap().logits);
        }
        (ALLOCS.load(Ordering::SeqCst) - before) as f64 / steps as f64
    })
}

/// A random llama whose every width is a multiple of 256 (K-quant super-blocks).
fn random_256(opts: &LoadOptions) -> CausalLm<hearth_backend::Cpu> {
    let v = serde_json::json!({"model_type": "llama", "vocab_size": 512, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256, "rope_theta": 10000.0, "tie_word_embeddings": false});
    let cfg = ModelConfig::from_json(&v, "random llama").unwrap();
    let src = hearth_models::synthetic::SyntheticSource::for_config(&cfg, 3);
    CausalLm::load_with(cfg, &src, &Default::default(), opts).unwrap()
}

fn model(name: &str, opts: &LoadOptions) -> CausalLm<hearth_backend::Cpu> {
    let dir = common::model_dir(name);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    CausalLm::load_with(cfg, &store, &Default::default(), opts).unwrap()
}

#[test]
fn decode_steps_allocate_nothing() {
    // every model stays alive to the end: a dropped pool's threads exit in the background,
    // and their exit (crossbeam-epoch's thread-local garbage) allocates
    let mut keep = Vec::new();
    let dense = model("llama", &LoadOptions::default());
    for threads in [1, 2] {
        let host = HostModel::from_model(&dense).unwrap().with_threads(threads).unwrap();
        let per_step = allocs_per_step(&host, 96);
        keep.push(host);
        eprintln!("dense f32, {threads} threads: {per_step} allocations per decode step");
        if threads == 1 {
            assert_eq!(
                per_step, 0.0,
                "dense f32 model, one thread: allocations per decode step"
            );
        } else {
            // rayon's work-stealing deques occasionally reallocate their ring buffers (a couple
            // of times over the whole run); hearth's own code allocates nothing
            assert!(
                per_step <= 0.25,
                "dense f32 model, {threads} threads: {per_step} allocations per step"
            );
        }
    }
    // quantized and bf16 weights: the kernels' activation buffers are pooled per thread
    use hearth_quant::kernels::WeightFormat;
    for q in [WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Bf16] {
        let opts = LoadOptions {
            quant: Some(q),
            unpacked: false,
        };
        let host = HostModel::from_model(&model("llama", &opts))
            .unwrap()
            .with_threads(1)
            .unwrap();
        let per_step = allocs_per_step(&host, 96);
        keep.push(host);
        eprintln!("llama {q:?}, 1 thread: {per_step} allocations per decode step");
        assert_eq!(per_step, 0.0, "llama {q:?}, one thread: allocations per decode step");
    }
    // every other kernel format (AVX-512 window layout of Q4_1, K-quant activations) on a
    // random model whose widths are multiples of 256, so that every matrix packs
    let f32_bytes = random_256(&LoadOptions::default()).weight_bytes();
    for q in [
        WeightFormat::Q4_1,
        WeightFormat::Q4_K,
        WeightFormat::Q6_K,
        WeightFormat::F16,
    ] {
        let opts = LoadOptions {
            quant: Some(q),
            unpacked: false,
        };
        let model = random_256(&opts);
        let packed = model.weight_bytes();
        // (the embedding table stays f32 as stored; every matrix is packed)
        assert!(
            (packed as f64) < 0.65 * f32_bytes as f64,
            "{q:?}: the random model's matrices must be packed ({packed} of {f32_bytes} bytes)"
        );
        for threads in [1, 2] {
            let host = HostModel::from_model(&model).unwrap().with_threads(threads).unwrap();
            let per_step = allocs_per_step(&host, 96);
            keep.push(host);
            eprintln!("random 256-wide llama {q:?}, {threads} threads: {per_step} allocations per decode step");
            let bound = if threads == 1 { 0.0 } else { 0.25 };
            assert!(
                per_step <= bound,
                "{q:?}, {threads} threads: {per_step} allocations per step"
            );
        }
    }
    // MoE: routing (softmax top-k; sigmoid + correction bias + group limit), load statistics,
    // shared experts and their gate; MLA for deepseek_v3
    for name in ["olmoe", "qwen2_moe", "deepseek_v3"] {
        let m = model(name, &LoadOptions::default());
        for threads in [1, 2] {
            let host = HostModel::from_model(&m).unwrap().with_threads(threads).unwrap();
            let per_step = allocs_per_step(&host, 96);
            keep.push(host);
            eprintln!("{name} f32, {threads} threads: {per_step} allocations per decode step");
            let bound = if threads == 1 { 0.0 } else { 0.25 };
            assert!(
                per_step <= bound,
                "{name}, {threads} threads: {per_step} allocations per step"
            );
        }
    }
}
