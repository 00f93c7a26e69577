//! One MoE layer's decode step (one token, warm KV cache) on the CPU backend.
//!
//! The model is a one-layer `qwen3_moe` checkpoint with random weights (hidden 1024, expert
//! intermediate 512, vocab 32, one 64-wide attention head) built through the public API
//! (`ModelConfig::from_json` + a `TensorSource` + `CausalLm::load`), so attention, norms and the
//! LM head are tiny and a step's time is the MoE layer's: router over E experts, then k experts'
//! MLPs. Two sweeps:
//! * `experts_k8`: E = 8 / 64 / 256 at k = 8 — time should stay flat in E;
//! * `top_k_e64`: k = 1 / 2 / 4 / 8 at E = 64 — time should grow with k.
//!
//! Each point is measured through the host forward (`host/…`, what the CPU backend runs) and
//! through burn's tensor-op forward (`burn/…`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hearth_models::{CausalLm, Decoder, ForwardOptions, HostModel, ModelConfig, ModelError, TensorSource};
use serde_json::json;

type B = hearth_backend::Cpu;
const HIDDEN: usize = 1024;
const EXPERT_INTERMEDIATE: usize = 512;
const VOCAB: usize = 32;
/// The cache is refilled with this many tokens (untimed) whenever it reaches `MAX_CONTEXT`.
const PREFILL: usize = 16;
const MAX_CONTEXT: usize = 48;

/// Deterministic random weights: norms 1, everything else uniform with variance 1/fan_in.
struct RandomWeights;

impl TensorSource for RandomWeights {
    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let shape = expected.expect("the loader gives every shape").to_vec();
        let n: usize = shape.iter().product();
        if name.contains("norm") {
            return Ok((vec![1.0; n], shape));
        }
        let amp = (3.0 / *shape.last().unwrap() as f32).sqrt();
        let mut s = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        });
        let v = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect();
        Ok((v, shape))
    }
}

fn model(experts: usize, top_k: usize) -> CausalLm<B> {
    let cfg = json!({
        "model_type": "qwen3_moe", "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 2048,
        "moe_intermediate_size": EXPERT_INTERMEDIATE, "num_hidden_layers": 1, "num_attention_heads": 1,
        "num_key_value_heads": 1, "head_dim": 64, "num_experts": experts, "num_experts_per_tok": top_k,
        "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096, "rope_theta": 1000000.0, "tie_word_embeddings": false
    });
    let cfg = ModelConfig::from_json(&cfg, "bench").expect("config");
    assert!(cfg.is_sparse(0), "the layer must be MoE");
    CausalLm::load(cfg, &RandomWeights, &Default::default()).expect("load")
}

/// Mean time of `iters` single-token decode steps, each on a warm cache of 16..48 tokens.
fn decode_steps(m: Decoder<'_, B>, iters: u64) -> Duration {
    let opts = ForwardOptions {
        hidden_states: false,
        last_only: true,
    };
    let mut session = m.new_session(1, Some(MAX_CONTEXT + 1));
    let mut total = Duration::ZERO;
    let mut token = vec![vec![0u32]];
    for i in 0..iters {
        if i == 0 || session.seq_len(0) >= MAX_CONTEXT {
            session.reset_row(0);
            let prompt: Vec<u32> = (0..PREFILL as u32).map(|t| (t * 7 + 3) % VOCAB as u32).collect();
            m.forward(&[prompt], &mut session, opts).expect("prefill");
        }
        // different tokens route to different experts, as in real decoding
        token[0][0] = (i * 11 % VOCAB as u64) as u32;
        let start = Instant::now();
        let out = m.forward(&token, &mut session, opts).expect("decode");
        black_box(out.data);
        total += start.elapsed();
    }
    total
}

/// Both forwards of one model: the host forward (what the CPU runs) and burn's.
fn both(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, m: &CausalLm<B>, param: usize) {
    let host = HostModel::from_model(m).expect("host model");
    g.bench_with_input(BenchmarkId::new("host", param), &host, |b, h| {
        b.iter_custom(|iters| decode_steps(Decoder::Host(h), iters))
    });
    g.bench_with_input(BenchmarkId::new("burn", param), m, |b, m| {
        b.iter_custom(|iters| decode_steps(Decoder::Burn(m), iters))
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("moe_decode/experts_k8");
    for experts in [8, 64, 256] {
        both(&mut g, &model(experts, 8), experts);
    }
    g.finish();

    let mut g = c.benchmark_group("moe_decode/top_k_e64");
    for k in [1, 2, 4, 8] {
        both(&mut g, &model(64, k), k);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
