//! Shared test helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// `$HEARTH_FIXTURES/components/<name>`, else `<crate>/../../../shared/fixtures/components/<name>`.
/// Panics (fails the test) if the file is missing: fixtures are never optional.
pub fn component_fixture(name: &str) -> PathBuf {
    let base = match std::env::var_os("HEARTH_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    };
    let path = base.join("components").join(name);
    assert!(
        path.is_file(),
        "required fixture {} is missing (set HEARTH_FIXTURES or generate it with shared/tools/make_fixtures.py)",
        path.display()
    );
    path
}

/// Deterministic standard-normal samples (xorshift64* + Box-Muller).
pub fn normal_samples(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next(), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

pub fn rmse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}
