//! MoE checkpoints no other test has seen (`tests/moe_unseen/*/`, made by
//! `tests/moe_unseen/make_unseen.py`): other expert counts and top-k, Qwen2-MoE sparse steps and
//! `mlp_only_layers`, DeepSeek-V3 without `q_lora_rank`, with 8 expert groups, a non-zero
//! correction bias and `rope_interleave = false`, a Mixtral sliding window, 40- and 64-token
//! prompts. Each against its float64 transformers reference: prefill logits and every hidden
//! state (rel ≤ 1e-4), then greedy decoding one token at a time through the KV cache — each
//! step's logits (rel ≤ 1e-4) and the ids exactly.

mod common;
use common::{argmax, host, rel_err};

use hearth_models::{CausalLm, ForwardOptions};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

type B = hearth_backend::Cpu;
const TOL: f64 = 1e-4;

fn unseen_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/moe_unseen")
}

/// Every checkpoint directory (one with a `config.json`), sorted.
fn checkpoints() -> Vec<PathBuf> {
    let root = unseen_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn f32s(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ids(st: &SafeTensors<'_>, key: &str) -> Vec<u32> {
    let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
    t.data()
        .chunks_exact(8)
        .map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).expect("token id"))
        .collect()
}

/// Largest errors seen: (prefill logits, hidden states, greedy step logits).
fn check(dir: &Path) -> (f64, f64, f64) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let dev = Default::default();
    let model = CausalLm::<B>::from_dir(dir, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(model.config().moe.is_some(), "{name}: parsed as a dense model");
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    let r = SafeTensors::deserialize(&bytes).expect("reference header");
    let vocab = model.config().vocab_size;
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for p in 0..2 {
        let prompt = ids(&r, &format!("prompt{p}.input_ids"));
        let mut cache = model.new_cache(1, None);
        let out = model
            .forward(
                std::slice::from_ref(&prompt),
                &mut cache,
                ForwardOptions {
                    hidden_states: true,
                    last_only: false,
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = rel_err(&host(out.logits), &f32s(&r, &format!("prompt{p}.prefill_logits")));
        assert!(
            e <= TOL,
            "{name} prompt{p} ({} tokens): prefill logits rel err {e:e}",
            prompt.len()
        );
        worst.0 = worst.0.max(e);
        let ref_h = f32s(&r, &format!("prompt{p}.hidden_states"));
        assert_eq!(
            out.hidden_states.len(),
            model.config().num_layers + 1,
            "{name}: number of hidden states"
        );
        let per = prompt.len() * model.config().hidden_size;
        assert_eq!(
            ref_h.len(),
            per * out.hidden_states.len(),
            "{name}: reference hidden states"
        );
        for (l, h) in out.hidden_states.into_iter().enumerate() {
            let e = rel_err(&host(h), &ref_h[l * per..(l + 1) * per]);
            assert!(e <= TOL, "{name} prompt{p}: hidden state {l} rel err {e:e}");
            worst.1 = worst.1.max(e);
        }

        // greedy: prefill, then one token per step through the cache
        let ref_ids = ids(&r, &format!("prompt{p}.greedy_ids"));
        let ref_steps = f32s(&r, &format!("prompt{p}.greedy_step_logits"));
        assert!(!ref_ids.is_empty(), "{name}: no greedy reference");
        let mut cache = model.new_cache(1, None);
        let mut next = prompt.clone();
        let mut got = Vec::with_capacity(ref_ids.len());
        for step in 0..ref_ids.len() {
            let out = model
                .forward(
                    &[next],
                    &mut cache,
                    ForwardOptions {
                        hidden_states: false,
                        last_only: true,
                    },
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let logits = host(out.logits);
            assert_eq!(logits.len(), vocab, "{name}: last_only logits shape");
            let e = rel_err(&logits, &ref_steps[step * vocab..(step + 1) * vocab]);
            assert!(e <= TOL, "{name} prompt{p}: greedy step {step} logits rel err {e:e}");
            worst.2 = worst.2.max(e);
            let tok = argmax(&logits);
            got.push(tok);
            next = vec![tok];
        }
        assert_eq!(got, ref_ids, "{name} prompt{p}: greedy ids");
    }
    worst
}

#[test]
fn unseen_moe_checkpoints_match_transformers() {
    let dirs = checkpoints();
    assert!(
        dirs.len() >= 8,
        "expected the generated checkpoints in {} (run make_unseen.py there), found {}",
        unseen_dir().display(),
        dirs.len()
    );
    // check every checkpoint, then report all failures at once
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        match std::panic::catch_unwind(|| check(dir)) {
            Ok((prefill, hidden, steps)) => {
                eprintln!("{name:<24} prefill {prefill:.2e}  hidden {hidden:.2e}  greedy steps {steps:.2e}")
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("{name:<24} FAILED: {msg}");
                failures.push(name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "checkpoints not matching transformers: {failures:?}"
    );
}
