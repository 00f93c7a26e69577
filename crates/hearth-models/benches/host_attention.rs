//! The CPU decode attention of one KV group (`host::ops::attend_group`): 4 query heads sharing
//! one KV head of 64 dimensions (Llama-3.2-1B's 32/8 heads), over 128 / 330 / 1000 / 4000 cached
//! keys. Throughput is the f32 keys and values read, in bytes, so criterion's rate compares with
//! the memory bandwidth (`hearth bench` prints it); at these sizes the cache is in L2 and the
//! kernel is bound by its arithmetic.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hearth_models::host::ops::attend_group;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn attention(c: &mut Criterion) {
    let (g, d) = (4, 64);
    let mut group = c.benchmark_group("attend_group_g4_d64");
    for keys in [128, 330, 1000, 4000] {
        let qs = values(g * d, 1);
        let (k, v) = (values(keys * d, 2), values(keys * d, 3));
        let mut out = vec![0.0f32; g * d];
        group.throughput(Throughput::Bytes((2 * keys * d * 4) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(keys), &keys, |b, &keys| {
            b.iter(|| {
                attend_group(&qs, &k, &v, d, d, 0, keys, 0.125, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
