//! Routing one token at k = 8 for 8 / 64 / 256 experts.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hearth_moe::RouterSpec;

fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

fn bench_route(c: &mut Criterion) {
    let k = 8;
    let mut group = c.benchmark_group("route_one_token_k8");
    for &n in &[8usize, 64, 256] {
        let x = logits(n, n as u64);
        let bias: Vec<f32> = logits(n, 7).iter().map(|v| v * 0.01).collect();

        let renorm = RouterSpec::qwen3_moe(n, k, true).expect("spec");
        group.bench_with_input(BenchmarkId::new("softmax_renorm", n), &n, |b, _| {
            b.iter(|| renorm.route(black_box(&x), 1, None).expect("route"))
        });

        let plain = RouterSpec::qwen2_moe(n, k, false).expect("spec");
        group.bench_with_input(BenchmarkId::new("softmax_no_renorm", n), &n, |b, _| {
            b.iter(|| plain.route(black_box(&x), 1, None).expect("route"))
        });

        // DeepSeek-V3 style: 8 groups keep 4 (one group keeps 1 for 8 experts, where k = n).
        let (n_group, topk_group) = if n >= 64 { (8, 4) } else { (1, 1) };
        let ds = RouterSpec::deepseek_v3(n, k, n_group, topk_group, true, 2.5).expect("spec");
        group.bench_with_input(BenchmarkId::new("deepseek_v3", n), &n, |b, _| {
            b.iter(|| ds.route(black_box(&x), 1, Some(black_box(&bias))).expect("route"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
