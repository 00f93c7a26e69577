//! Processing + sampling one row of logits, for vocabularies of 32k, 128k and 152k.
//! Logits are synthetic: N(0, 2.5²) noise plus a few strongly preferred tokens (roughly
//! LLM-shaped). The row is copied before each iteration (copy not timed).

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use hearth_sample::{Sampler, SamplingParams, uniform};

fn synthetic_logits(vocab: usize) -> Vec<f32> {
    // Box-Muller on the crate's counter-based RNG.
    let mut v: Vec<f32> = (0..vocab as u64)
        .map(|i| {
            let (u1, u2) = (uniform(7, 2 * i).max(1e-12), uniform(7, 2 * i + 1));
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 2.5) as f32
        })
        .collect();
    for (j, boost) in [(17usize, 14.0f32), (4242, 13.0), (9000, 12.5), (31000, 12.0)] {
        v[j % vocab] += boost;
    }
    v
}

fn configs() -> Vec<(&'static str, SamplingParams)> {
    let full = SamplingParams {
        temperature: 0.8,
        top_k: Some(40),
        top_p: Some(0.95),
        min_p: Some(0.02),
        repetition_penalty: Some(1.1),
        presence_penalty: 0.2,
        frequency_penalty: 0.1,
        no_repeat_ngram_size: Some(4),
        logit_bias: vec![(5, -1.0), (6, 2.0)],
        banned_sequences: vec![vec![1, 2, 3]],
        top_logprobs: 5,
        seed: 1,
        ..Default::default()
    };
    vec![
        ("full_chain", full),
        (
            "top_p_only",
            SamplingParams {
                temperature: 0.7,
                top_p: Some(0.9),
                seed: 1,
                ..Default::default()
            },
        ),
        (
            "temperature_only",
            SamplingParams {
                temperature: 1.0,
                seed: 1,
                ..Default::default()
            },
        ),
        ("greedy", SamplingParams::default()),
    ]
}

fn bench(c: &mut Criterion) {
    let history: Vec<u32> = (0..1024u32).map(|i| (i * 2654435761u32) % 30000).collect();
    for vocab in [32_000usize, 128_256, 151_936] {
        let logits = synthetic_logits(vocab);
        let mut group = c.benchmark_group(format!("sample_vocab_{vocab}"));
        for (name, params) in configs() {
            let mut sampler = Sampler::new(params).unwrap();
            let mut step = 0u64;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_batched_ref(
                    || logits.clone(),
                    |row| {
                        step += 1;
                        sampler.sample(row, &history, 512, step).unwrap()
                    },
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
