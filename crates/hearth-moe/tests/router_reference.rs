//! The router against a deliberately naive `f64` reference that follows transformers' code
//! literally (full sorts, masked scores), on random inputs for every option combination.

use hearth_moe::{MoeError, RouterSpec, Routing, RoutingBuffers, ScoringFunc};

/// SplitMix64: small deterministic generator for test inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Stable descending argsort (equal values keep ascending index order), like a full
/// `torch.sort(descending=True, stable=True)`.
fn argsort_desc(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).expect("no NaN in reference"));
    idx
}

/// Literal transcription of transformers' routing (Mixtral / Qwen2-MoE / OLMoE routers and
/// `DeepseekV3MoE.route_tokens_to_experts`), generalised to every option combination, in f64.
/// `mask_fill` is what the dropped groups' scores are replaced with (transformers: 0.0).
fn reference(
    spec: &RouterSpec,
    logits: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    mask_fill: f64,
) -> Vec<(Vec<usize>, Vec<f64>)> {
    let n = spec.n_experts;
    let mut out = Vec::new();
    for t in 0..n_tokens {
        let x: Vec<f64> = logits[t * n..(t + 1) * n].iter().map(|&v| f64::from(v)).collect();
        // router_logits.sigmoid() / softmax(router_logits, dim=-1)
        let scores: Vec<f64> = match spec.scoring {
            ScoringFunc::Sigmoid => x.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
            ScoringFunc::Softmax => {
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = x.iter().map(|&v| (v - m).exp()).collect();
                let mut z = 0.0;
                for &v in &e {
                    z += v;
                }
                e.iter().map(|&v| v / z).collect()
            }
        };
        // router_logits_for_choice = router_logits + e_score_correction_bias
        let for_choice: Vec<f64> = match bias {
            Some(b) => scores.iter().zip(b).map(|(&s, &b)| s + f64::from(b)).collect(),
            None => scores.clone(),
        };
        let scores_for_choice = match spec.group_limit {
            None => for_choice.clone(),
            Some(g) => {
                let per = n / g.n_group;
                // group_scores = view(-1, n_group, per).topk(2)[0].sum(-1)
                let group_scores: Vec<f64> = (0..g.n_group)
                    .map(|gi| {
                        let block = &for_choice[gi * per..(gi + 1) * per];
                        let order = argsort_desc(block);
                        order.iter().take(2).map(|&i| block[i]).sum()
                    })
                    .collect();
                // group_idx = topk(group_scores, topk_group); group_mask.scatter_(1, group_idx, 1)
                let group_idx: Vec<usize> = argsort_desc(&group_scores).into_iter().take(g.topk_group).collect();
                let mut group_mask = vec![false; g.n_group];
                for gi in group_idx {
                    group_mask[gi] = true;
                }
                // score_mask = group_mask expanded; masked_fill(~score_mask, fill)
                (0..n)
                    .map(|e| if group_mask[e / per] { for_choice[e] } else { mask_fill })
                    .collect()
            }
        };
        // topk_indices = topk(scores_for_choice, k)
        let topk_indices: Vec<usize> = argsort_desc(&scores_for_choice).into_iter().take(spec.top_k).collect();
        // topk_weights = router_logits.gather(1, topk_indices)  (unbiased)
        let mut w: Vec<f64> = topk_indices.iter().map(|&e| scores[e]).collect();
        if spec.renormalize {
            let denom = w.iter().sum::<f64>() + spec.renorm_epsilon;
            w.iter_mut().for_each(|v| *v /= denom);
        }
        w.iter_mut().for_each(|v| *v *= f64::from(spec.routed_scaling_factor));
        out.push((topk_indices, w));
    }
    out
}

fn assert_matches(spec: &RouterSpec, r: &Routing, want: &[(Vec<usize>, Vec<f64>)], ctx: &str) {
    assert_eq!(r.n_tokens(), want.len(), "{ctx}");
    for (t, (idx, w)) in want.iter().enumerate() {
        assert_eq!(r.token_experts(t), &idx[..], "{ctx}: token {t} experts ({spec:?})");
        for (j, (&got, &exp)) in r.token_weights(t).iter().zip(w).enumerate() {
            assert!(
                (f64::from(got) - exp).abs() <= 1e-6,
                "{ctx}: token {t} slot {j}: got {got}, want {exp}"
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Inputs {
    /// Continuous Gaussian logits (no ties).
    Continuous,
    /// Logits from a small grid, and whole groups duplicated: ties in expert scores and in
    /// group scores.
    Ties,
}

/// Logits `[n_tokens, n]` and a bias `[n]`; for `Ties`, some group blocks of both are copies
/// of other blocks (so group scores tie exactly).
fn make_inputs(
    rng: &mut Rng,
    n: usize,
    n_tokens: usize,
    block: usize,
    kind: Inputs,
    signed_bias: bool,
) -> (Vec<f32>, Vec<f32>) {
    let draw = |rng: &mut Rng| -> f32 {
        match kind {
            Inputs::Continuous => (rng.normal() * 2.0) as f32,
            Inputs::Ties => rng.below(5) as f32 * 0.5 - 1.0,
        }
    };
    let mut logits: Vec<f32> = (0..n * n_tokens).map(|_| draw(rng)).collect();
    let mut bias: Vec<f32> = (0..n)
        .map(|_| match kind {
            Inputs::Continuous => rng.uniform() as f32 * 0.3,
            Inputs::Ties => rng.below(3) as f32 * 0.125,
        })
        .map(|b| if signed_bias { b - 0.2 } else { b })
        .collect();
    if let Inputs::Ties = kind {
        let blocks = n / block;
        if blocks > 1 {
            // duplicate bias blocks
            for dst in 0..blocks {
                if rng.below(2) == 0 {
                    let src = rng.below(blocks as u64) as usize;
                    let copy: Vec<f32> = bias[src * block..(src + 1) * block].to_vec();
                    bias[dst * block..(dst + 1) * block].copy_from_slice(&copy);
                }
            }
            // duplicate logit blocks together with their bias (so biased group scores tie)
            for t in 0..n_tokens {
                let row = &mut logits[t * n..(t + 1) * n];
                for dst in 0..blocks {
                    let src = rng.below(blocks as u64) as usize;
                    if bias[src * block..(src + 1) * block] == bias[dst * block..(dst + 1) * block] && rng.below(2) == 0
                    {
                        let copy: Vec<f32> = row[src * block..(src + 1) * block].to_vec();
                        row[dst * block..(dst + 1) * block].copy_from_slice(&copy);
                    }
                }
            }
        }
    }
    (logits, bias)
}

/// Every combination: scoring × bias × group × renorm × scaling, continuous and tied inputs,
/// two layer shapes.
#[test]
fn router_matches_reference_for_every_option_combination() {
    let mut rng = Rng(0x5EED);
    let mut combos = 0;
    let mut tie_rows_seen = 0usize;
    let mut buf = RoutingBuffers::new();
    // (n_experts, top_k, n_group, topk_group)
    for &(n, k, n_group, topk_group) in &[(16usize, 4usize, 4usize, 2usize), (64, 6, 8, 3), (8, 8, 2, 2)] {
        for scoring in [ScoringFunc::Softmax, ScoringFunc::Sigmoid] {
            for use_bias in [false, true] {
                for use_group in [false, true] {
                    for renorm in [false, true] {
                        for (scale, eps) in [(1.0f32, 0.0f64), (2.5, 1e-20)] {
                            let mut spec = RouterSpec::new(n, k, scoring)
                                .with_correction_bias(use_bias)
                                .with_renormalize(renorm)
                                .with_renorm_epsilon(eps)
                                .with_routed_scaling_factor(scale);
                            if use_group {
                                spec = spec.with_group_limit(n_group, topk_group);
                            }
                            spec.validate().expect("valid spec");
                            combos += 1;
                            for kind in [Inputs::Continuous, Inputs::Ties] {
                                let n_tokens = 24;
                                let block = n / n_group;
                                let (logits, bias) = make_inputs(&mut rng, n, n_tokens, block, kind, false);
                                let b = use_bias.then_some(&bias[..]);
                                let got = spec.route(&logits, n_tokens, b).expect("route");
                                // the same buffers for every spec, size and batch (shrinking,
                                // growing, and after an error) give the same routings
                                let shorter = 1 + rng.below(n_tokens as u64) as usize;
                                let r = spec.route_into(&logits[..shorter * n], shorter, b, &mut buf).unwrap();
                                assert_eq!(*r, spec.route(&logits[..shorter * n], shorter, b).unwrap());
                                let mut bad = logits.clone();
                                bad[n + 1] = f32::NAN;
                                assert!(spec.route_into(&bad, n_tokens, b, &mut buf).is_err());
                                assert_eq!(*spec.route_into(&logits, n_tokens, b, &mut buf).unwrap(), got);
                                // transformers' literal 0.0 mask fill (all scores >= 0 here)
                                let want = reference(&spec, &logits, n_tokens, b, 0.0);
                                let ctx = format!("{kind:?} n={n} k={k}");
                                assert_matches(&spec, &got, &want, &ctx);
                                if let Inputs::Ties = kind {
                                    tie_rows_seen += (0..n_tokens)
                                        .filter(|&t| {
                                            let row = &logits[t * n..(t + 1) * n];
                                            let mut s = row.to_vec();
                                            s.sort_by(f32::total_cmp);
                                            s.windows(2).any(|w| w[0] == w[1])
                                        })
                                        .count();
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(combos, 3 * 2 * 2 * 2 * 2 * 2);
    assert!(tie_rows_seen > 1000, "tie inputs must actually contain ties");
}

/// With negative biased scores, hearth keeps DeepSeek's "mask the rest" semantics (`-inf`
/// fill), checked against the reference with a `-inf` fill, over all combinations.
#[test]
fn signed_bias_matches_reference_with_strict_group_mask() {
    let mut rng = Rng(42);
    for scoring in [ScoringFunc::Softmax, ScoringFunc::Sigmoid] {
        for renorm in [false, true] {
            for kind in [Inputs::Continuous, Inputs::Ties] {
                let spec = RouterSpec::new(32, 5, scoring)
                    .with_correction_bias(true)
                    .with_group_limit(8, 2)
                    .with_renormalize(renorm)
                    .with_routed_scaling_factor(1.5);
                let (logits, bias) = make_inputs(&mut rng, 32, 40, 4, kind, true);
                let got = spec.route(&logits, 40, Some(&bias)).expect("route");
                let want = reference(&spec, &logits, 40, Some(&bias), f64::NEG_INFINITY);
                assert_matches(&spec, &got, &want, "signed bias");
            }
        }
    }
}

/// The documented divergence from transformers' `masked_fill(..., 0.0)`: with negative biased
/// scores transformers would select experts of dropped groups; hearth never does.
#[test]
fn dropped_groups_are_never_selected_even_with_negative_scores() {
    let spec = RouterSpec::deepseek_v3(4, 2, 2, 1, false, 1.0).unwrap();
    let logits = [0.0f32, 0.1, 2.0, 2.0];
    let bias = [-0.1f32, -0.1, -0.95, -0.95];
    // biased: [0.4, 0.425, ~-0.07, ~-0.07]; group 0 sum 0.825 > group 1 sum ~-0.14 -> keep group 0
    let r = spec.route(&logits, 1, Some(&bias)).unwrap();
    assert_eq!(r.token_experts(0), &[1, 0]);
    let literal_hf = reference(&spec, &logits, 1, Some(&bias), 0.0);
    // the literal 0.0 fill still picks [1, 0] here because the kept scores are positive ...
    assert_eq!(literal_hf[0].0, vec![1, 0]);
    // ... but not once the kept group's biased scores are negative:
    let bias = [-0.6f32, -0.6, -1.0, -1.0];
    // biased: [-0.1, -0.075, -0.12, -0.12]; group 0 kept
    let r = spec.route(&logits, 1, Some(&bias)).unwrap();
    assert!(r.token_experts(0).iter().all(|&e| e < 2), "{:?}", r.token_experts(0));
    let literal_hf = reference(&spec, &logits, 1, Some(&bias), 0.0);
    assert_eq!(
        literal_hf[0].0,
        vec![2, 3],
        "transformers' 0.0 fill picks dropped experts"
    );
}

#[test]
fn correction_bias_changes_selection_but_not_weights() {
    let spec = RouterSpec::new(6, 2, ScoringFunc::Sigmoid).with_correction_bias(true);
    let logits = [2.0f32, 1.5, 0.0, -1.0, 0.5, -2.0];
    let zero = [0.0f32; 6];
    let r0 = spec.route(&logits, 1, Some(&zero)).unwrap();
    assert_eq!(r0.token_experts(0), &[0, 1]);

    let bias = [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0];
    let r = spec.route(&logits, 1, Some(&bias)).unwrap();
    assert_eq!(r.token_experts(0), &[3, 0], "the bias promotes expert 3");
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let w = r.token_weights(0);
    assert!(
        (f64::from(w[0]) - sig(-1.0)).abs() < 1e-7,
        "weight is the unbiased sigmoid"
    );
    assert!((f64::from(w[1]) - sig(2.0)).abs() < 1e-7);
    assert!(
        (f64::from(w[0]) - (sig(-1.0) + 1.0)).abs() > 0.5,
        "not the biased score"
    );

    // same with renormalisation and scaling: weights come from unbiased scores only
    let spec = RouterSpec::deepseek_v3(6, 2, 1, 1, true, 2.5).unwrap();
    let r = spec.route(&logits, 1, Some(&bias)).unwrap();
    assert_eq!(r.token_experts(0), &[3, 0]);
    let (a, b) = (sig(-1.0), sig(2.0));
    let want = [2.5 * a / (a + b), 2.5 * b / (a + b)];
    for (g, w) in r.token_weights(0).iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-6);
    }

    // and for softmax scoring
    let spec = RouterSpec::new(6, 2, ScoringFunc::Softmax).with_correction_bias(true);
    let r = spec.route(&logits, 1, Some(&bias)).unwrap();
    assert_eq!(r.token_experts(0), &[3, 0]);
    let z: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
    assert!((f64::from(r.token_weights(0)[0]) - (-1f64).exp() / z).abs() < 1e-7);
}

#[test]
fn ties_lower_index_wins_for_experts_and_groups() {
    // all-equal logits: lowest indices, in index order
    let r = RouterSpec::mixtral(8, 3).unwrap().route(&[1.0; 8], 1, None).unwrap();
    assert_eq!(r.token_experts(0), &[0, 1, 2]);
    // equal values interleaved with larger ones
    let r = RouterSpec::qwen2_moe(6, 3, false)
        .unwrap()
        .route(&[0.0, 1.0, 0.0, 1.0, 0.5, 1.0], 1, None)
        .unwrap();
    assert_eq!(r.token_experts(0), &[1, 3, 5]);
    // k cuts through a tie: the lower index is kept
    let r = RouterSpec::qwen2_moe(4, 2, false)
        .unwrap()
        .route(&[0.0, 1.0, 2.0, 1.0], 1, None)
        .unwrap();
    assert_eq!(r.token_experts(0), &[2, 1]);
    // group ties: groups 1 and 3 tie for the single kept slot -> group 1 wins
    let spec = RouterSpec::deepseek_v3(8, 2, 4, 1, true, 1.0).unwrap();
    let logits = [0.0f32, 0.0, 1.0, 2.0, 0.5, 0.5, 2.0, 1.0];
    let r = spec.route(&logits, 1, Some(&[0.0; 8])).unwrap();
    assert_eq!(r.token_experts(0), &[3, 2]);
    // two groups kept among three tied ones -> groups 0 and 1
    let logits = [1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
    let spec = RouterSpec::deepseek_v3(8, 4, 4, 2, false, 1.0).unwrap();
    let r = spec.route(&logits, 1, Some(&[0.0; 8])).unwrap();
    assert_eq!(r.token_experts(0), &[0, 1, 2, 3]);
}

#[test]
fn softmax_is_numerically_careful() {
    let spec = RouterSpec::qwen2_moe(5, 2, false).unwrap();
    // huge spread and -inf entries
    let logits = [80.0f32, -80.0, 79.5, f32::NEG_INFINITY, 0.0];
    let r = spec.route(&logits, 1, None).unwrap();
    let want = reference(&spec, &logits, 1, None, 0.0);
    assert_matches(&spec, &r, &want, "extreme");
    assert_eq!(r.token_experts(0), &[0, 2]);
    let w = r.token_weights(0);
    assert!((f64::from(w[0]) - 1.0 / (1.0 + (-0.5f64).exp())).abs() < 1e-7);

    // many experts with near-equal logits: weights still ~ 1/n
    let n = 256;
    let spec = RouterSpec::qwen2_moe(n, 8, false).unwrap();
    let logits: Vec<f32> = (0..n).map(|i| 1000.0 + (i as f32) * 1e-3).collect();
    let r = spec.route(&logits, 1, None).unwrap();
    let want = reference(&spec, &logits, 1, None, 0.0);
    assert_matches(&spec, &r, &want, "near-equal");
}

#[test]
fn grouping_by_expert_is_consistent_with_per_token_view() {
    let mut rng = Rng(9);
    let spec = RouterSpec::deepseek_v3(64, 6, 8, 3, true, 2.5).unwrap();
    let n_tokens = 100;
    let (logits, bias) = make_inputs(&mut rng, 64, n_tokens, 8, Inputs::Continuous, false);
    let r = spec.route(&logits, n_tokens, Some(&bias)).unwrap();
    let mut seen = vec![Vec::new(); n_tokens];
    let mut last_expert = None;
    let mut assignments = 0;
    for g in r.expert_groups() {
        assert!(last_expert < Some(g.expert), "active experts ascend");
        last_expert = Some(g.expert);
        assert!(!g.tokens.is_empty());
        assert!(g.tokens.windows(2).all(|w| w[0] < w[1]), "tokens ascend");
        for (&t, &w) in g.tokens.iter().zip(g.weights) {
            seen[t].push((g.expert, w));
            assignments += 1;
        }
    }
    assert_eq!(assignments, n_tokens * 6);
    for (t, mut pairs) in seen.into_iter().enumerate() {
        let mut per_token: Vec<(usize, f32)> = r.token(t).collect();
        per_token.sort_by_key(|p| p.0);
        pairs.sort_by_key(|p| p.0);
        assert_eq!(per_token, pairs);
    }
    let counts = r.expert_counts();
    assert_eq!(counts.iter().sum::<usize>(), n_tokens * 6);
    for (e, &count) in counts.iter().enumerate() {
        assert_eq!(r.expert_group(e).map_or(0, |g| g.tokens.len()), count);
    }
    assert_eq!(r.active_experts().len(), counts.iter().filter(|&&c| c > 0).count());
}

#[test]
fn empty_batch_routes_to_nothing() {
    let r = RouterSpec::mixtral(8, 2).unwrap().route(&[], 0, None).unwrap();
    assert_eq!(r.n_tokens(), 0);
    assert!(r.active_experts().is_empty());
    assert_eq!(r.expert_groups().len(), 0);
}

#[test]
fn family_constructors_follow_transformers_defaults() {
    let m = RouterSpec::mixtral_default();
    assert_eq!((m.n_experts, m.top_k, m.scoring), (8, 2, ScoringFunc::Softmax));
    assert!(m.renormalize && !m.correction_bias && m.group_limit.is_none());
    assert_eq!(m.routed_scaling_factor, 1.0);

    let q2 = RouterSpec::qwen2_moe_default();
    assert_eq!((q2.n_experts, q2.top_k, q2.renormalize), (60, 4, false));
    let q3 = RouterSpec::qwen3_moe_default();
    assert_eq!((q3.n_experts, q3.top_k, q3.renormalize), (128, 8, false));
    assert!(RouterSpec::qwen3_moe(128, 8, true).unwrap().renormalize);
    let o = RouterSpec::olmoe_default();
    assert_eq!((o.n_experts, o.top_k, o.renormalize), (64, 8, false));

    let d = RouterSpec::deepseek_v3_default();
    assert_eq!(d, RouterSpec::deepseek_v3(256, 8, 8, 4, true, 2.5).unwrap());
    assert_eq!(d.scoring, ScoringFunc::Sigmoid);
    assert!(d.correction_bias && d.renormalize);
    assert_eq!(d.renorm_epsilon, 1e-20);
    for spec in [m, q2, q3, o, d] {
        spec.validate().unwrap();
    }
    // Mixtral renormalises, Qwen2 by default does not: same logits, different weights
    let logits = [2.0f32, 1.0, 0.0, -1.0];
    let wm = RouterSpec::mixtral(4, 2).unwrap().route(&logits, 1, None).unwrap();
    let wq = RouterSpec::qwen2_moe(4, 2, false)
        .unwrap()
        .route(&logits, 1, None)
        .unwrap();
    assert_eq!(wm.token_experts(0), wq.token_experts(0));
    assert!((wm.token_weights(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(wq.token_weights(0).iter().sum::<f32>() < 0.95);
}

#[test]
fn bad_specs_are_typed_errors() {
    use MoeError::*;
    assert_eq!(RouterSpec::mixtral(0, 1), Err(ZeroExperts));
    assert_eq!(RouterSpec::mixtral(8, 0), Err(ZeroTopK));
    assert_eq!(
        RouterSpec::mixtral(8, 9),
        Err(TopKExceedsExperts { top_k: 9, n_experts: 8 })
    );
    assert_eq!(
        RouterSpec::deepseek_v3(10, 2, 4, 2, true, 1.0),
        Err(GroupsDoNotDivideExperts {
            n_group: 4,
            n_experts: 10
        })
    );
    assert_eq!(
        RouterSpec::deepseek_v3(16, 2, 0, 0, true, 1.0),
        Err(GroupsDoNotDivideExperts {
            n_group: 0,
            n_experts: 16
        })
    );
    assert_eq!(
        RouterSpec::deepseek_v3(16, 2, 4, 5, true, 1.0),
        Err(TopKGroupOutOfRange {
            topk_group: 5,
            n_group: 4
        })
    );
    assert_eq!(
        RouterSpec::deepseek_v3(16, 2, 4, 0, true, 1.0),
        Err(TopKGroupOutOfRange {
            topk_group: 0,
            n_group: 4
        })
    );
    assert_eq!(
        RouterSpec::deepseek_v3(16, 9, 4, 2, true, 1.0),
        Err(TopKExceedsGroupCapacity {
            top_k: 9,
            topk_group: 2,
            experts_per_group: 4
        })
    );
    assert!(matches!(
        RouterSpec::deepseek_v3(16, 2, 4, 2, true, f32::NAN),
        Err(InvalidScalingFactor(v)) if v.is_nan()
    ));
    assert!(matches!(
        RouterSpec::deepseek_v3(16, 2, 4, 2, true, f32::INFINITY),
        Err(InvalidScalingFactor(_))
    ));
    assert!(matches!(
        RouterSpec::new(4, 1, ScoringFunc::Softmax)
            .with_renorm_epsilon(-1.0)
            .validate(),
        Err(InvalidRenormEpsilon(_))
    ));
}

#[test]
fn bad_inputs_are_typed_errors() {
    use MoeError::*;
    let mixtral = RouterSpec::mixtral(4, 2).unwrap();
    assert_eq!(
        mixtral.route(&[0.0; 7], 2, None),
        Err(LogitsLength {
            n_tokens: 2,
            n_experts: 4,
            actual: 7
        })
    );
    assert_eq!(
        mixtral.route(&[0.0; 8], usize::MAX, None),
        Err(LogitsLength {
            n_tokens: usize::MAX,
            n_experts: 4,
            actual: 8
        })
    );
    let nan = [0.0, 0.0, 0.0, 0.0, 0.0, f32::NAN, 0.0, 0.0];
    match mixtral.route(&nan, 2, None) {
        Err(NonFiniteLogit {
            token: 1,
            expert: 1,
            value,
        }) => assert!(value.is_nan()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        mixtral.route(&[0.0, f32::INFINITY, 0.0, 0.0], 1, None),
        Err(NonFiniteLogit {
            token: 0,
            expert: 1,
            value: f32::INFINITY
        })
    );
    assert_eq!(
        mixtral.route(&[f32::NEG_INFINITY; 4], 1, None),
        Err(NoFiniteLogit { token: 0 })
    );
    assert_eq!(mixtral.route(&[0.0; 4], 1, Some(&[0.0; 4])), Err(UnexpectedBias));

    let ds = RouterSpec::deepseek_v3(4, 2, 2, 1, true, 1.0).unwrap();
    assert_eq!(ds.route(&[0.0; 4], 1, None), Err(MissingBias));
    assert_eq!(
        ds.route(&[0.0; 4], 1, Some(&[0.0; 3])),
        Err(BiasLength { expected: 4, actual: 3 })
    );
    assert_eq!(
        ds.route(&[0.0; 4], 1, Some(&[0.0, 0.0, f32::INFINITY, 0.0])),
        Err(NonFiniteBias {
            expert: 2,
            value: f32::INFINITY
        })
    );
    let nan_ds = ds.route(&[0.0, f32::NAN, 0.0, 0.0], 1, Some(&[0.0; 4]));
    assert!(matches!(
        nan_ds,
        Err(NonFiniteLogit {
            token: 0,
            expert: 1,
            ..
        })
    ));
    // sigmoid accepts -inf (score 0)
    let r = ds
        .route(&[f32::NEG_INFINITY, 0.0, 0.0, 0.0], 1, Some(&[0.0; 4]))
        .unwrap();
    assert_eq!(r.token_experts(0), &[2, 3]);

    assert_eq!(
        Routing::from_topk(4, 2, vec![0, 4], vec![1.0, 1.0]),
        Err(ExpertIndexOutOfRange { index: 4, n_experts: 4 })
    );
    assert_eq!(
        Routing::from_topk(4, 2, vec![0, 1, 2], vec![1.0; 3]),
        Err(TopKTableLength {
            experts: 3,
            weights: 3,
            top_k: 2
        })
    );
}
