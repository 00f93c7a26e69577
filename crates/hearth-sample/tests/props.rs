//! Property tests for truncation, penalties and batch-independent determinism.

use hearth_sample::{Sampler, SamplingParams};
use proptest::prelude::*;

const NEG: f32 = f32::NEG_INFINITY;

fn processed(params: SamplingParams, logits: &[f32], hist: &[u32], n_prompt: usize) -> Vec<f32> {
    let mut s = Sampler::new(params).unwrap();
    let mut l = logits.to_vec();
    s.process(&mut l, hist, n_prompt).unwrap();
    l
}

/// Indices sorted by (logit desc, id asc).
fn ranked(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx
}

fn probs(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().copied().fold(NEG, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-20.0f32..20.0, 1..600),
        // Coarse values: lots of exact ties.
        prop::collection::vec((0i32..6).prop_map(|v| v as f32), 1..300),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Top-p keeps the smallest prefix of the sorted distribution whose mass reaches p.
    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p(logits in logits_strategy(), p in 0.01f32..=1.0) {
        let out = processed(SamplingParams { temperature: 1.0, top_p: Some(p), ..Default::default() }, &logits, &[], 0);
        let order = ranked(&logits);
        let kept: Vec<bool> = order.iter().map(|&i| out[i] > NEG).collect();
        let n = kept.iter().filter(|&&k| k).count();
        prop_assert!(n >= 1, "empty candidate set");
        // Prefix property: kept tokens are exactly the first n in rank order, values untouched.
        prop_assert!(kept[..n].iter().all(|&k| k));
        for &i in &order[..n] { prop_assert_eq!(out[i], logits[i]); }
        let pr = probs(&logits);
        let mass: f64 = order[..n].iter().map(|&i| pr[i]).sum();
        let mass_wo_last = mass - pr[order[n - 1]];
        let tol = 1e-5;
        if p < 1.0 {
            prop_assert!(mass >= p as f64 - tol, "mass {mass} < p {p}");
        }
        prop_assert!(mass_wo_last < p as f64 + tol, "not minimal: {mass_wo_last} >= {p}");
    }

    /// Top-k keeps exactly min(k, vocab) tokens: the best by logit, ties broken by lower id.
    #[test]
    fn top_k_keeps_exactly_k(logits in logits_strategy(), k in 1usize..700) {
        let out = processed(SamplingParams { temperature: 1.0, top_k: Some(k), ..Default::default() }, &logits, &[], 0);
        let want = k.min(logits.len());
        let kept: Vec<usize> = (0..out.len()).filter(|&i| out[i] > NEG).collect();
        prop_assert_eq!(kept.len(), want);
        let mut expect: Vec<usize> = ranked(&logits)[..want].to_vec();
        expect.sort();
        prop_assert_eq!(kept, expect);
    }

    /// Min-p keeps exactly the tokens with p >= min_p * p_max (values unchanged).
    #[test]
    fn min_p_keeps_tokens_above_scaled_max(logits in logits_strategy(), mp in 0.001f32..=1.0) {
        let out = processed(SamplingParams { temperature: 1.0, min_p: Some(mp), ..Default::default() }, &logits, &[], 0);
        let pr = probs(&logits);
        let pmax = pr.iter().copied().fold(0.0, f64::max);
        for i in 0..logits.len() {
            let ratio = pr[i] / pmax;
            if ratio >= mp as f64 * (1.0 + 1e-5) {
                prop_assert_eq!(out[i], logits[i]);
            } else if ratio < mp as f64 * (1.0 - 1e-5) {
                prop_assert_eq!(out[i], NEG);
            }
        }
    }

    /// Min-p and typical never return an empty set.
    #[test]
    fn min_p_and_typical_never_empty(logits in logits_strategy(), mp in 0.0f32..=1.0, tp in 0.001f32..=1.0) {
        let out = processed(SamplingParams { temperature: 1.0, min_p: Some(mp), typical_p: Some(tp), ..Default::default() }, &logits, &[], 0);
        prop_assert!(out.iter().any(|&v| v > NEG));
    }

    /// Repetition / presence / frequency penalties touch only seen tokens, with the documented formulas.
    #[test]
    fn penalties_only_touch_seen_tokens(
        logits in prop::collection::vec(-10.0f32..10.0, 8..200),
        hist_raw in prop::collection::vec(any::<u32>(), 0..40),
        n_prompt_frac in 0.0f64..1.0,
        rep in 0.5f32..2.0, pres in -2.0f32..2.0, freq in -2.0f32..2.0,
    ) {
        let v = logits.len() as u32;
        let hist: Vec<u32> = hist_raw.iter().map(|t| t % v).collect();
        let n_prompt = (hist.len() as f64 * n_prompt_frac) as usize;
        let params = SamplingParams {
            repetition_penalty: Some(rep), presence_penalty: pres, frequency_penalty: freq, ..Default::default()
        };
        let out = processed(params, &logits, &hist, n_prompt);
        for (t, (&o, &l)) in out.iter().zip(&logits).enumerate() {
            let t = t as u32;
            let seen = hist.contains(&t);
            let count = hist[n_prompt..].iter().filter(|&&x| x == t).count();
            if !seen {
                prop_assert_eq!(o.to_bits(), l.to_bits(), "unseen token {} changed", t);
            } else {
                let r = if l < 0.0 { l * rep } else { l / rep };
                let expect = if count > 0 { r - (count as f32 * freq + pres) } else { r };
                prop_assert!((o - expect).abs() <= 1e-5 * expect.abs().max(1.0), "token {t}: {o} vs {expect}");
            }
        }
    }

    /// The token drawn depends only on (seed, step, logits): not on which requests share
    /// the batch, the order they are processed in, or the thread they run on.
    #[test]
    fn sampling_is_batch_and_thread_independent(
        reqs in prop::collection::vec((any::<u64>(), 0u64..1000, prop::collection::vec(-5.0f32..5.0, 50..400)), 2..8),
        temp in 0.3f32..2.0,
        top_p in prop::option::of(0.5f32..1.0),
        top_k in prop::option::of(1usize..100),
    ) {
        let make = |seed: u64| SamplingParams { temperature: temp, top_p, top_k, seed, top_logprobs: 3, ..Default::default() };
        // Sequential, in order.
        let seq: Vec<_> = reqs.iter().map(|(seed, step, l)| {
            Sampler::new(make(*seed)).unwrap().sample(&mut l.clone(), &[], 0, *step).unwrap()
        }).collect();
        // Reversed order, one shared sampler per request reused after warming it on other data.
        let mut rev = vec![None; reqs.len()];
        for (i, (seed, step, l)) in reqs.iter().enumerate().rev() {
            let mut s = Sampler::new(make(*seed)).unwrap();
            let mut junk: Vec<f32> = l.iter().rev().copied().collect();
            s.sample(&mut junk, &[], 0, step + 1).unwrap();
            rev[i] = Some(s.sample(&mut l.clone(), &[], 0, *step).unwrap());
        }
        // Parallel: each request on its own thread.
        let par: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = reqs.iter().map(|(seed, step, l)| {
                let params = make(*seed);
                sc.spawn(move || Sampler::new(params).unwrap().sample(&mut l.clone(), &[], 0, *step).unwrap())
            }).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for i in 0..reqs.len() {
            prop_assert_eq!(&seq[i], rev[i].as_ref().unwrap());
            prop_assert_eq!(&seq[i], &par[i]);
        }
    }
}
