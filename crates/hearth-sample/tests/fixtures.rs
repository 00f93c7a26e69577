//! Parity with transformers' logits processors (fixture produced by
//! `shared/tools/make_fixtures.py`, `sampling_fixtures`). The fixture's `previous_ids`
//! [6, 20] are the processors' `input_ids`, i.e. the whole history; we pass them as a
//! 20-token prompt so history-based processors see exactly the same tokens.

use std::path::PathBuf;

use hearth_sample::{ProcessorKind, Sampler, SamplingParams};
use safetensors::{Dtype, SafeTensors};

fn fixture_path() -> PathBuf {
    match std::env::var_os("HEARTH_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join("components/sampling.safetensors"),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/components/sampling.safetensors")
        }
    }
}

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = fixture_path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "sampling fixture missing at {} ({e}); set HEARTH_FIXTURES to the fixtures directory",
                path.display()
            )
        });
        Fixture { bytes }
    }

    fn f32_rows(&self, name: &str) -> Vec<Vec<f32>> {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("tensor {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name} dtype");
        let shape = t.shape().to_vec();
        assert_eq!(shape.len(), 2);
        let vals: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        vals.chunks(shape[1]).map(|r| r.to_vec()).collect()
    }

    fn ids(&self) -> Vec<Vec<u32>> {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st.tensor("previous_ids").expect("previous_ids");
        assert_eq!(t.dtype(), Dtype::I64);
        let cols = t.shape()[1];
        let vals: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
            .collect();
        vals.chunks(cols).map(|r| r.to_vec()).collect()
    }
}

fn check(name: &str, params: SamplingParams) {
    let fx = Fixture::load();
    let logits = fx.f32_rows("logits");
    let ids = fx.ids();
    let want = fx.f32_rows(name);
    assert_eq!(logits.len(), 6);
    let mut removed_total = 0;
    for (row, ((l, h), w)) in logits.iter().zip(&ids).zip(&want).enumerate() {
        let mut s = Sampler::new(params.clone()).unwrap();
        let mut got = l.clone();
        s.process(&mut got, h, h.len()).unwrap();
        assert_eq!(got.len(), w.len());
        for (i, (&g, &e)) in got.iter().zip(w).enumerate() {
            if e == f32::NEG_INFINITY {
                removed_total += 1;
                assert_eq!(
                    g,
                    f32::NEG_INFINITY,
                    "{name} row {row} token {i}: expected removed, got {g}"
                );
            } else {
                assert!(g.is_finite(), "{name} row {row} token {i}: expected {e}, got {g}");
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1e-30),
                    "{name} row {row} token {i}: {g} vs {e}"
                );
            }
        }
        // Sampling on the processed row must pick a kept token.
        let out = s.sample(&mut l.clone(), h, h.len(), row as u64).unwrap();
        assert!(w[out.token as usize].is_finite(), "{name}: sampled a removed token");
    }
    // Truncating warpers must actually remove tokens on this data (guards against a
    // fixture/test mix-up that would make the comparison vacuous).
    if ["top_", "min_p", "typical", "chain"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        assert!(removed_total > 0, "{name}: fixture removes nothing?");
    }
}

fn warp(p: SamplingParams) -> SamplingParams {
    SamplingParams {
        temperature: if p.temperature == 0.0 { 1.0 } else { p.temperature },
        ..p
    }
}

#[test]
fn temperature() {
    check(
        "temperature_0.7",
        SamplingParams {
            temperature: 0.7,
            ..Default::default()
        },
    );
}

#[test]
fn top_k() {
    check(
        "top_k_20",
        warp(SamplingParams {
            top_k: Some(20),
            ..Default::default()
        }),
    );
}

#[test]
fn top_p() {
    check(
        "top_p_0.9",
        warp(SamplingParams {
            top_p: Some(0.9),
            ..Default::default()
        }),
    );
}

#[test]
fn min_p() {
    check(
        "min_p_0.05",
        warp(SamplingParams {
            min_p: Some(0.05),
            ..Default::default()
        }),
    );
}

#[test]
fn typical() {
    check(
        "typical_0.9",
        warp(SamplingParams {
            typical_p: Some(0.9),
            ..Default::default()
        }),
    );
}

#[test]
fn repetition_penalty() {
    check(
        "repetition_penalty_1.3",
        SamplingParams {
            repetition_penalty: Some(1.3),
            ..Default::default()
        },
    );
}

#[test]
fn no_repeat_ngram() {
    check(
        "no_repeat_ngram_3",
        SamplingParams {
            no_repeat_ngram_size: Some(3),
            ..Default::default()
        },
    );
}

#[test]
fn chain_default_order() {
    check(
        "chain_rep1.1_temp0.8_topk40_topp0.95_minp0.02",
        SamplingParams {
            repetition_penalty: Some(1.1),
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            min_p: Some(0.02),
            ..Default::default()
        },
    );
}

#[test]
fn chain_explicit_order() {
    use ProcessorKind::*;
    check(
        "chain_rep1.1_temp0.8_topk40_topp0.95_minp0.02",
        SamplingParams {
            repetition_penalty: Some(1.1),
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            min_p: Some(0.02),
            order: Some(vec![RepetitionPenalty, Temperature, TopK, TopP, MinP]),
            ..Default::default()
        },
    );
}
