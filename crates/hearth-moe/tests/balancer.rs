//! BiasBalancer: exact update rule, and (proptest) convergence on skewed router logits.

use hearth_moe::{BiasBalancer, BiasBalancerConfig, LoadStats, MoeError, RouterSpec, ScoringFunc};
use proptest::prelude::*;

/// SplitMix64 + Box-Muller for synthetic router logits.
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
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// `[n_tokens, n]` logits: unit Gaussian noise plus a strong fixed per-expert skew.
fn skewed_batch(rng: &mut Rng, skew: &[f32], n_tokens: usize) -> Vec<f32> {
    (0..n_tokens)
        .flat_map(|_| skew.iter().map(|&s| s + rng.normal()).collect::<Vec<_>>())
        .collect()
}

fn ratio(spec: &RouterSpec, logits: &[f32], n_tokens: usize, bias: &[f32]) -> f64 {
    let r = spec.route(logits, n_tokens, Some(bias)).unwrap();
    assert!(r.topk_weights().iter().all(|w| w.is_finite()));
    let mut s = LoadStats::new(spec.n_experts);
    s.record(&r).unwrap();
    s.max_mean_ratio().unwrap()
}

#[test]
fn update_rule_is_sign_of_mean_minus_load() {
    let mut b = BiasBalancer::new(4, 0.25).unwrap();
    b.update(&[3, 1, 2, 2]).unwrap(); // mean 2
    assert_eq!(b.bias(), &[-0.25, 0.25, 0.0, 0.0]);
    b.update(&[0, 0, 0, 0]).unwrap(); // empty batch: nothing to balance
    assert_eq!(b.bias(), &[-0.25, 0.25, 0.0, 0.0]);
    b.update(&[0, 0, 0, 1]).unwrap(); // mean 0.25
    assert_eq!(b.bias(), &[0.0, 0.5, 0.25, -0.25]);
    assert_eq!(b.updates(), 3);
    assert_eq!(
        b.update(&[1, 2]),
        Err(MoeError::ExpertCountMismatch { expected: 4, actual: 2 })
    );
    assert!(matches!(BiasBalancer::new(4, 0.0), Err(MoeError::InvalidGamma(_))));
    assert!(matches!(
        BiasBalancer::new(4, f32::INFINITY),
        Err(MoeError::InvalidGamma(_))
    ));
    assert!(matches!(
        BiasBalancer::with_bias(vec![0.0, f32::NAN], 0.1),
        Err(MoeError::NonFiniteBias { expert: 1, .. })
    ));
    // huge counts do not overflow the exact integer comparison
    let mut b = BiasBalancer::new(2, 1.0).unwrap();
    b.update(&[u64::MAX, u64::MAX - 1]).unwrap();
    assert_eq!(b.bias(), &[-1.0, 1.0]);
}

#[test]
fn balancing_is_off_by_default() {
    assert!(BiasBalancerConfig::default().build(64).unwrap().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // deterministic in CI; set PROPTEST_CASES to explore more
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x4D6F_4542),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn balancer_drives_load_toward_uniform(
        seed in any::<u64>(),
        n_pow in 3u32..=5,          // 8, 16, 32 experts
        k_raw in 1usize..=4,
        skew_strength in 3.0f32..5.0,
        sigmoid in any::<bool>(),
        grouped in any::<bool>(),
    ) {
        let n = 1usize << n_pow;
        // k <= n / 4 so that a skew can show up in max/mean (bounded by n / k)
        let k = k_raw.min(n / 4);
        let scoring = if sigmoid { ScoringFunc::Sigmoid } else { ScoringFunc::Softmax };
        let mut spec = RouterSpec::new(n, k, scoring).with_correction_bias(true).with_renormalize(true);
        if grouped {
            spec = spec.with_group_limit(4, 2);
        }
        spec.validate().unwrap();
        let mut rng = Rng(seed);
        // strong per-expert skew: a random permutation of a linear ramp
        let mut skew: Vec<f32> = (0..n).map(|e| skew_strength * e as f32 / (n - 1) as f32).collect();
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            skew.swap(i, j);
        }
        let eval_tokens = 4096;
        let eval = skewed_batch(&mut rng, &skew, eval_tokens);
        let before = ratio(&spec, &eval, eval_tokens, &vec![0.0; n]);

        // A coarse phase, then a finer step: the sign update keeps fluctuating by about gamma,
        // so gamma is chosen relative to the score scale (softmax scores are ~1/n).
        let (coarse, fine) = if sigmoid { (0.01, 0.002) } else { (0.2 / n as f32, 0.04 / n as f32) };
        let mut balancer = BiasBalancer::new(n, coarse).unwrap();
        let batch_tokens = 128;
        for step in 0..600 {
            if step == 200 {
                balancer.set_gamma(fine).unwrap();
            }
            let batch = skewed_batch(&mut rng, &skew, batch_tokens);
            let routing = spec.route(&batch, batch_tokens, Some(balancer.bias())).unwrap();
            balancer.update_from_routing(&routing).unwrap();
            prop_assert!(balancer.bias().iter().all(|b| b.is_finite()));
            prop_assert!(routing.topk_weights().iter().all(|w| w.is_finite()));
        }
        let after = ratio(&spec, &eval, eval_tokens, balancer.bias());
        prop_assert!(before > 2.0, "skew must start unbalanced: {before}");
        // much closer to 1: at most half the initial excess load remains
        prop_assert!(after - 1.0 <= 0.5 * (before - 1.0), "after {after} (before {before})");
        prop_assert!(after < 3.0, "after {after} (before {before})");
    }
}
