//! Every fixture model against HuggingFace transformers (float64 reference): prefill logits and
//! each layer's hidden states (rel ≤ 1e-4), greedy ids (exact) with per-step logits, and
//! batched == alone.

mod common;
use common::*;
use hearth_models::{CausalLm, ForwardOptions};

type B = hearth_backend::Cpu;
const TOL: f64 = 1e-4;

fn check_model(name: &str) {
    let dev = Default::default();
    let model = CausalLm::<B>::from_dir(&model_dir(name), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = Reference::open(name);
    let vocab = model.config().vocab_size;
    let mut prompts = Vec::new();
    for p in 0..2 {
        let ids = r.ids(&format!("prompt{p}.input_ids"));
        // prefill with hidden states
        let mut cache = model.new_cache(1, None);
        let out = model
            .forward(
                std::slice::from_ref(&ids),
                &mut cache,
                ForwardOptions {
                    hidden_states: true,
                    last_only: false,
                },
            )
            .unwrap();
        let (ref_logits, _) = r.f32(&format!("prompt{p}.prefill_logits"));
        let e = rel_err(&host(out.logits), &ref_logits);
        assert!(e <= TOL, "{name} prompt{p}: prefill logits rel err {e:e}");
        let (ref_h, shape) = r.f32(&format!("prompt{p}.hidden_states"));
        assert_eq!(shape[0], out.hidden_states.len(), "{name}: number of hidden states");
        let per = shape[1] * shape[2];
        for (l, h) in out.hidden_states.into_iter().enumerate() {
            let e = rel_err(&host(h), &ref_h[l * per..(l + 1) * per]);
            assert!(e <= TOL, "{name} prompt{p}: hidden state {l} rel err {e:e}");
        }
        // greedy decode through the cache, one token at a time
        let mut cache = model.new_cache(1, None);
        let ref_ids = r.ids(&format!("prompt{p}.greedy_ids"));
        let (ref_steps, _) = r.f32(&format!("prompt{p}.greedy_step_logits"));
        let mut next = ids.clone();
        let mut got = Vec::new();
        for step in 0..ref_ids.len() {
            let out = model
                .forward(
                    &[next.clone()],
                    &mut cache,
                    ForwardOptions {
                        hidden_states: false,
                        last_only: true,
                    },
                )
                .unwrap();
            let logits = host(out.logits);
            let e = rel_err(&logits, &ref_steps[step * vocab..(step + 1) * vocab]);
            assert!(e <= TOL, "{name} prompt{p}: greedy step {step} logits rel err {e:e}");
            let tok = argmax(&logits);
            got.push(tok);
            next = vec![tok];
        }
        assert_eq!(got, ref_ids, "{name} prompt{p}: greedy ids");
        prompts.push((ids, ref_logits, ref_ids));
    }

    // both prompts in one ragged batch: same logits as alone
    let mut cache = model.new_cache(2, None);
    let batch = vec![prompts[0].0.clone(), prompts[1].0.clone()];
    let out = model.forward(&batch, &mut cache, ForwardOptions::default()).unwrap();
    let [_, t, v] = out.logits.dims();
    let all = host(out.logits);
    for (row, (ids, ref_logits, _)) in prompts.iter().enumerate() {
        let n = ids.len();
        let got = &all[row * t * v..row * t * v + n * v];
        let e = rel_err(got, ref_logits);
        assert!(e <= TOL, "{name}: batched row {row} rel err {e:e}");
    }
    // and batched greedy decode with rows at different positions gives the same ids
    let mut next: Vec<Vec<u32>> = (0..2)
        .map(|row| {
            vec![argmax(
                &all[(row * t + prompts[row].0.len() - 1) * v..(row * t + prompts[row].0.len()) * v],
            )]
        })
        .collect();
    let mut got = [vec![next[0][0]], vec![next[1][0]]];
    for _ in 1..prompts[0].2.len() {
        let out = model
            .forward(
                &next,
                &mut cache,
                ForwardOptions {
                    hidden_states: false,
                    last_only: true,
                },
            )
            .unwrap();
        let l = host(out.logits);
        next = (0..2).map(|row| vec![argmax(&l[row * v..(row + 1) * v])]).collect();
        for row in 0..2 {
            got[row].push(next[row][0]);
        }
    }
    for row in 0..2 {
        assert_eq!(got[row], prompts[row].2, "{name}: batched greedy ids row {row}");
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
