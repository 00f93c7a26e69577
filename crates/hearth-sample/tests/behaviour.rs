//! Behaviour of individual processors, samplers, validation errors and stop conditions.

use hearth_sample::{ProcessorKind, SampleError, Sampler, SamplingParams, StopCondition, StopReason, StopStrings};

const NEG: f32 = f32::NEG_INFINITY;

fn run(params: SamplingParams, logits: &[f32], hist: &[u32], n_prompt: usize) -> Vec<f32> {
    let mut s = Sampler::new(params).unwrap();
    let mut l = logits.to_vec();
    s.process(&mut l, hist, n_prompt).unwrap();
    l
}

// ---------- processors ----------

#[test]
fn logit_bias_adds_and_bans() {
    let p = SamplingParams {
        logit_bias: vec![(1, 2.5), (2, NEG), (1, 0.5)],
        ..Default::default()
    };
    assert_eq!(run(p, &[0.0, 1.0, 5.0, -1.0], &[], 0), vec![0.0, 4.0, NEG, -1.0]);
}

#[test]
fn presence_frequency_count_generated_only() {
    // Prompt [0, 0], generated [1, 1, 2]: token 0 untouched (prompt only).
    let p = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..Default::default()
    };
    let out = run(p, &[1.0, 1.0, 1.0, 1.0], &[0, 0, 1, 1, 2], 2);
    assert_eq!(out, vec![1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.25 - 0.5, 1.0]);
}

#[test]
fn repetition_penalty_divides_positive_multiplies_negative_once() {
    let p = SamplingParams {
        repetition_penalty: Some(2.0),
        ..Default::default()
    };
    // Token 0 seen three times: penalised once (transformers gathers/scatters unique ids).
    let out = run(p, &[4.0, -4.0, 4.0], &[0, 1, 0, 0], 1);
    assert_eq!(out, vec![2.0, -8.0, 4.0]);
}

#[test]
fn incremental_history_matches_fresh_sampler() {
    let p = SamplingParams {
        repetition_penalty: Some(1.5),
        frequency_penalty: 0.3,
        ..Default::default()
    };
    let mut reused = Sampler::new(p.clone()).unwrap();
    let mut hist = vec![3u32, 4];
    for step in 0..12u32 {
        let logits: Vec<f32> = (0..10).map(|i| ((i * 7 + step * 3) % 11) as f32 - 5.0).collect();
        let mut a = logits.clone();
        reused.process(&mut a, &hist, 2).unwrap();
        let b = run(p.clone(), &logits, &hist, 2);
        assert_eq!(a, b, "step {step}");
        hist.push(step % 5);
        if step == 6 {
            hist[3] = 9; // history rewritten: sampler must rebuild its counts
        }
    }
}

#[test]
fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
    let p = SamplingParams {
        no_repeat_ngram_size: Some(3),
        ..Default::default()
    };
    // Last two tokens (1, 2) appeared before followed by 3 and by 4.
    let out = run(p.clone(), &[0.0; 6], &[1, 2, 3, 5, 1, 2, 4, 1, 2], 3);
    assert_eq!(out, vec![0.0, 0.0, 0.0, NEG, NEG, 0.0]);
    // Fewer tokens than n: nothing banned.
    assert_eq!(run(p, &[0.0; 6], &[1, 2], 2), vec![0.0; 6]);
    // n = 1 bans every token already present.
    let p1 = SamplingParams {
        no_repeat_ngram_size: Some(1),
        ..Default::default()
    };
    assert_eq!(run(p1, &[0.0; 4], &[2, 0], 2), vec![NEG, 0.0, NEG, 0.0]);
}

#[test]
fn banned_sequences_follow_bad_words_ids() {
    let p = SamplingParams {
        banned_sequences: vec![vec![0], vec![5, 6, 1], vec![9, 2]],
        ..Default::default()
    };
    let out = run(p, &[1.0; 10], &[4, 5, 6], 3);
    // [0] always banned; [5,6,1] completes after "5 6"; [9,2] not applicable.
    assert_eq!(out[0], NEG);
    assert_eq!(out[1], NEG);
    assert_eq!(out[2], 1.0);
    assert_eq!(out.iter().filter(|v| v.is_finite()).count(), 8);
}

#[test]
fn min_new_tokens_suppresses_eos_until_reached() {
    let p = SamplingParams {
        min_new_tokens: 2,
        eos_token_ids: vec![3],
        ..Default::default()
    };
    let mut s = Sampler::new(p).unwrap();
    let logits = [0.0, 0.0, 0.0, 9.0];
    assert_eq!(s.sample(&mut logits.clone(), &[1, 1], 1, 1).unwrap().token, 0); // 1 generated
    assert_eq!(s.sample(&mut logits.clone(), &[1, 1, 0], 1, 2).unwrap().token, 3); // 2 generated
}

#[test]
fn custom_order_changes_result() {
    // Temperature before vs after a logit bias: (l + b) / t differs from l / t + b.
    let base = SamplingParams {
        temperature: 0.5,
        logit_bias: vec![(0, 1.0)],
        ..Default::default()
    };
    let default = run(base.clone(), &[1.0, 0.0], &[], 0);
    assert_eq!(default, vec![4.0, 0.0]);
    let custom = SamplingParams {
        order: Some(vec![ProcessorKind::Temperature, ProcessorKind::LogitBias]),
        ..base
    };
    assert_eq!(run(custom, &[1.0, 0.0], &[], 0), vec![3.0, 0.0]);
}

#[test]
fn processors_after_truncation_keep_candidates_consistent() {
    // Top-k first, then a bias that bans the best kept token: sampling must pick the other.
    let p = SamplingParams {
        temperature: 1.0,
        top_k: Some(2),
        logit_bias: vec![(1, NEG)],
        order: Some(vec![ProcessorKind::TopK, ProcessorKind::LogitBias]),
        top_logprobs: 5,
        ..Default::default()
    };
    let mut s = Sampler::new(p).unwrap();
    let mut l = [0.0, 5.0, 4.0, 3.0];
    let out = s.sample(&mut l, &[], 0, 0).unwrap();
    assert_eq!(l, [NEG, NEG, 4.0, NEG]);
    assert_eq!(out.token, 2);
    assert_eq!(out.top_logprobs, vec![(2, 0.0)]);
}

#[test]
fn greedy_skips_warpers_and_picks_lowest_id_on_ties() {
    let p = SamplingParams {
        top_k: Some(1),
        top_p: Some(0.1),
        top_logprobs: 2,
        ..Default::default()
    };
    let mut s = Sampler::new(p).unwrap();
    let mut l = [1.0, 3.0, 3.0, 0.0];
    let out = s.sample(&mut l, &[], 0, 0).unwrap();
    assert_eq!(out.token, 1);
    assert_eq!(l, [1.0, 3.0, 3.0, 0.0], "greedy must not apply warpers");
    let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
    let want = (3.0 - z.ln()) as f32;
    assert!((out.logprob - want).abs() < 1e-6);
    assert_eq!(out.top_logprobs.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn logprobs_are_normalised_over_kept_tokens() {
    let p = SamplingParams {
        temperature: 1.0,
        top_k: Some(2),
        top_logprobs: 4,
        seed: 3,
        ..Default::default()
    };
    let mut s = Sampler::new(p).unwrap();
    let out = s.sample(&mut [2.0, 1.0, 0.0, -1.0], &[], 0, 0).unwrap();
    assert_eq!(out.top_logprobs.len(), 2);
    let total: f32 = out.top_logprobs.iter().map(|t| t.1.exp()).sum();
    assert!((total - 1.0).abs() < 1e-6);
    let lp_of = |t: u32| out.top_logprobs.iter().find(|x| x.0 == t).unwrap().1;
    assert_eq!(out.logprob, lp_of(out.token));
}

fn frequencies(params: SamplingParams, logits: &[f32], n: u64) -> Vec<f64> {
    let mut s = Sampler::new(params).unwrap();
    let mut counts = vec![0usize; logits.len()];
    for step in 0..n {
        counts[s.sample(&mut logits.to_vec(), &[], 0, step).unwrap().token as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

#[test]
fn categorical_matches_softmax_frequencies() {
    let logits = [0.0f32, 1.0, 2.0, -1.0];
    let want: Vec<f64> = {
        let e: Vec<f64> = logits.iter().map(|&l| (l as f64 / 0.7).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    let got = frequencies(
        SamplingParams {
            temperature: 0.7,
            seed: 11,
            ..Default::default()
        },
        &logits,
        40_000,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.01, "got {got:?} want {want:?}");
    }
}

#[test]
fn categorical_on_large_dense_vocab_matches_softmax() {
    // Dense path (no truncation), vocab spanning several chunks.
    let mut logits = vec![-30.0f32; 5000];
    logits[10] = 1.0;
    logits[2500] = 0.0;
    logits[4999] = 2.0;
    let got = frequencies(
        SamplingParams {
            temperature: 1.0,
            seed: 5,
            ..Default::default()
        },
        &logits,
        20_000,
    );
    let z = 1f64.exp() + 1.0 + 2f64.exp();
    assert!((got[10] - 1f64.exp() / z).abs() < 0.012);
    assert!((got[2500] - 1.0 / z).abs() < 0.012);
    assert!((got[4999] - 2f64.exp() / z).abs() < 0.012);
}

#[test]
fn seeds_and_steps_change_draws() {
    let logits = vec![0.0f32; 64];
    let draw = |seed, step| {
        let p = SamplingParams {
            temperature: 1.0,
            seed,
            ..Default::default()
        };
        Sampler::new(p)
            .unwrap()
            .sample(&mut logits.clone(), &[], 0, step)
            .unwrap()
            .token
    };
    let by_step: std::collections::HashSet<u32> = (0..50).map(|s| draw(1, s)).collect();
    let by_seed: std::collections::HashSet<u32> = (0..50).map(|s| draw(s, 0)).collect();
    assert!(by_step.len() > 20 && by_seed.len() > 20);
}

#[test]
fn large_vocab_top_p_histogram_path() {
    // Flat-ish distribution: the top-256 fast path is not enough, the histogram path runs.
    let v = 20_000;
    let logits: Vec<f32> = (0..v).map(|i| ((i * 7919) % 1000) as f32 / 250.0).collect();
    let out = run(
        SamplingParams {
            temperature: 1.0,
            top_p: Some(0.9),
            ..Default::default()
        },
        &logits,
        &[],
        0,
    );
    let mut idx: Vec<usize> = (0..v).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut cum = 0.0;
    let mut n = 0;
    for &i in &idx {
        if cum >= 0.9 * z {
            break;
        }
        cum += e[i];
        n += 1;
    }
    assert!(n > 256);
    let kept: Vec<usize> = idx.iter().copied().filter(|&i| out[i] > NEG).collect();
    assert_eq!(kept, idx[..n].to_vec());
}

// ---------- validation ----------

fn err(p: SamplingParams) -> SampleError {
    p.validate().unwrap_err()
}

#[test]
fn validation_errors() {
    let d = SamplingParams::default;
    assert!(d().validate().is_ok());
    assert_eq!(
        err(SamplingParams {
            temperature: -0.1,
            ..d()
        }),
        SampleError::InvalidTemperature(-0.1)
    );
    assert!(matches!(
        err(SamplingParams {
            temperature: f32::NAN,
            ..d()
        }),
        SampleError::InvalidTemperature(_)
    ));
    assert_eq!(err(SamplingParams { top_k: Some(0), ..d() }), SampleError::InvalidTopK);
    assert_eq!(
        err(SamplingParams {
            top_p: Some(0.0),
            ..d()
        }),
        SampleError::InvalidTopP(0.0)
    );
    assert_eq!(
        err(SamplingParams {
            top_p: Some(1.01),
            ..d()
        }),
        SampleError::InvalidTopP(1.01)
    );
    assert!(matches!(
        err(SamplingParams {
            top_p: Some(f32::NAN),
            ..d()
        }),
        SampleError::InvalidTopP(_)
    ));
    assert!(
        SamplingParams {
            top_p: Some(1.0),
            ..d()
        }
        .validate()
        .is_ok()
    );
    assert_eq!(
        err(SamplingParams {
            min_p: Some(-0.01),
            ..d()
        }),
        SampleError::InvalidMinP(-0.01)
    );
    assert_eq!(
        err(SamplingParams {
            min_p: Some(1.5),
            ..d()
        }),
        SampleError::InvalidMinP(1.5)
    );
    assert!(
        SamplingParams {
            min_p: Some(0.0),
            ..d()
        }
        .validate()
        .is_ok()
    );
    assert_eq!(
        err(SamplingParams {
            typical_p: Some(0.0),
            ..d()
        }),
        SampleError::InvalidTypicalP(0.0)
    );
    assert_eq!(
        err(SamplingParams {
            typical_p: Some(2.0),
            ..d()
        }),
        SampleError::InvalidTypicalP(2.0)
    );
    assert_eq!(
        err(SamplingParams {
            repetition_penalty: Some(0.0),
            ..d()
        }),
        SampleError::InvalidRepetitionPenalty(0.0)
    );
    assert!(matches!(
        err(SamplingParams {
            repetition_penalty: Some(f32::NAN),
            ..d()
        }),
        SampleError::InvalidRepetitionPenalty(_)
    ));
    assert!(matches!(
        err(SamplingParams {
            presence_penalty: f32::NAN,
            ..d()
        }),
        SampleError::InvalidPenalty {
            name: "presence_penalty",
            ..
        }
    ));
    assert!(matches!(
        err(SamplingParams {
            frequency_penalty: f32::NAN,
            ..d()
        }),
        SampleError::InvalidPenalty {
            name: "frequency_penalty",
            ..
        }
    ));
    assert!(matches!(
        err(SamplingParams {
            logit_bias: vec![(4, f32::NAN)],
            ..d()
        }),
        SampleError::InvalidLogitBias { token: 4, .. }
    ));
    assert!(matches!(
        err(SamplingParams {
            logit_bias: vec![(4, f32::INFINITY)],
            ..d()
        }),
        SampleError::InvalidLogitBias { token: 4, .. }
    ));
    assert_eq!(
        err(SamplingParams {
            no_repeat_ngram_size: Some(0),
            ..d()
        }),
        SampleError::InvalidNoRepeatNgramSize
    );
    assert_eq!(
        err(SamplingParams {
            banned_sequences: vec![vec![1], vec![]],
            ..d()
        }),
        SampleError::EmptyBannedSequence { index: 1 }
    );
    assert_eq!(
        err(SamplingParams {
            order: Some(vec![ProcessorKind::TopK, ProcessorKind::TopK]),
            ..d()
        }),
        SampleError::DuplicateProcessor(ProcessorKind::TopK)
    );
    // Sampler::new validates too.
    assert_eq!(
        Sampler::new(SamplingParams { top_k: Some(0), ..d() }).unwrap_err(),
        SampleError::InvalidTopK
    );
}

#[test]
fn error_messages_name_field_and_value() {
    let e = err(SamplingParams {
        min_p: Some(1.5),
        ..Default::default()
    });
    let msg = e.to_string();
    assert!(msg.contains("min_p") && msg.contains("1.5"), "{msg}");
    let msg = err(SamplingParams {
        presence_penalty: f32::NAN,
        ..Default::default()
    })
    .to_string();
    assert!(msg.contains("presence_penalty") && msg.contains("NaN"), "{msg}");
}

#[test]
fn bad_logits_and_ids_are_typed_errors() {
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_p: Some(0.5),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.sample(&mut [], &[], 0, 0), Err(SampleError::EmptyLogits));
    assert_eq!(
        s.sample(&mut [0.0, f32::NAN], &[], 0, 0),
        Err(SampleError::NanLogit { index: 1 })
    );
    assert_eq!(
        s.sample(&mut [f32::INFINITY, 0.0], &[], 0, 0),
        Err(SampleError::PositiveInfiniteLogit { index: 0 })
    );
    assert_eq!(s.sample(&mut [NEG; 3], &[], 0, 0), Err(SampleError::AllLogitsMasked));
    assert_eq!(
        s.sample(&mut [0.0; 3], &[1, 3], 0, 0),
        Err(SampleError::TokenOutOfRange {
            token: 3,
            vocab_size: 3
        })
    );
    assert_eq!(
        s.sample(&mut [0.0; 3], &[1], 2, 0),
        Err(SampleError::PromptLengthOutOfRange { n_prompt: 2, len: 1 })
    );
    // Processing that removes everything is an error, not an empty candidate set.
    let mut s = Sampler::new(SamplingParams {
        logit_bias: vec![(0, NEG), (1, NEG)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.sample(&mut [0.0, 1.0], &[], 0, 0), Err(SampleError::AllLogitsMasked));
    let mut s = Sampler::new(SamplingParams {
        logit_bias: vec![(5, 1.0)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        s.sample(&mut [0.0, 1.0], &[], 0, 0),
        Err(SampleError::TokenOutOfRange {
            token: 5,
            vocab_size: 2
        })
    );
    let mut s = Sampler::new(SamplingParams {
        temperature: 1e-30,
        ..Default::default()
    })
    .unwrap();
    assert!(matches!(
        s.sample(&mut [1e30, 0.0], &[], 0, 0),
        Err(SampleError::PositiveInfiniteLogit { .. })
    ));
}

// ---------- stop conditions ----------

fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
    let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for p in pieces {
        let (text, hit) = s.push(p);
        // Never emit anything that contains a stop string or ends with a stop-string prefix
        // that was later completed.
        out.push_str(&text);
        if hit {
            return (out, true);
        }
    }
    out.push_str(&s.finish());
    (out, false)
}

#[test]
fn stop_string_split_across_tokens_is_caught_and_not_emitted() {
    let mut s = StopStrings::new(vec!["<|im_end|>".into()]);
    assert_eq!(s.push("Hi there<|"), ("Hi there".to_string(), false));
    assert_eq!(s.push("im_"), (String::new(), false));
    assert_eq!(s.push("end|>more"), (String::new(), true));
    assert!(s.is_stopped());
    assert_eq!(s.push("x"), (String::new(), true));
    assert_eq!(s.finish(), "");
    assert_eq!(stream(&["END"], &["abcE", "N", "Dxyz"]), ("abc".to_string(), true));
}

#[test]
fn partial_match_that_is_not_a_stop_is_emitted() {
    let mut s = StopStrings::new(vec!["</s>".into()]);
    assert_eq!(s.push("a </"), ("a ".to_string(), false));
    assert_eq!(s.push("b>"), ("</b>".to_string(), false));
    // Held at end of stream is flushed.
    assert_eq!(s.push(" <"), (" ".to_string(), false));
    assert_eq!(s.finish(), "<");
    assert_eq!(stream(&["abc"], &["ab", "ab", "x"]), ("ababx".to_string(), false));
}

#[test]
fn overlapping_prefixes_and_multiple_stops() {
    // "aab": after "aa" both "a" prefixes must be held; earliest match wins.
    assert_eq!(stream(&["aab"], &["xa", "a", "a", "b!"]), ("xa".to_string(), true));
    assert_eq!(
        stream(&["world", "lo w"], &["hel", "lo wor", "ld"]),
        ("hel".to_string(), true)
    );
    assert_eq!(
        stream(&["\n\n", "Q:"], &["A: 1\n", "Q", ":"]),
        ("A: 1\n".to_string(), true)
    );
    // Stop string inside a single delta.
    assert_eq!(stream(&["STOP"], &["abSTOPcd"]), ("ab".to_string(), true));
}

#[test]
fn unicode_stop_strings() {
    assert_eq!(stream(&["。终"], &["你好", "。", "终了"]), ("你好".to_string(), true));
    assert_eq!(stream(&["é!"], &["caf", "é", "s"]), ("cafés".to_string(), false));
    assert_eq!(stream(&[""], &["abc"]), ("abc".to_string(), false));
}

#[test]
fn stop_condition_eos_and_max_tokens() {
    let c = StopCondition::new(vec![0, 7], 3);
    assert_eq!(c.check(5, 1), None);
    assert_eq!(c.check(7, 2), Some(StopReason::Eos));
    assert_eq!(c.check(5, 3), Some(StopReason::MaxTokens));
    assert_eq!(c.check(0, 3), Some(StopReason::Eos));
}
