//! Shared fixture helpers for the model tests.
#![allow(dead_code)]

use burn::tensor::{Tensor, backend::Backend};
use safetensors::SafeTensors;
use std::path::PathBuf;

/// `$HEARTH_FIXTURES` or `../shared/fixtures` next to the repository. Panics (fails the test)
/// when missing: fixtures are the definition of correct and must never be skipped.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("HEARTH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    assert!(
        dir.join("models").is_dir(),
        "fixtures not found at {} (set HEARTH_FIXTURES)",
        dir.display()
    );
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        let p = model_dir(name).join("reference.safetensors");
        Self {
            bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("reference header")
    }
    pub fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }
    pub fn ids(&self, key: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    }
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    num / den.max(1e-30)
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}
