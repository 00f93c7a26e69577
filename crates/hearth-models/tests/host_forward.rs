//! The host forward against burn's forward on random-weight models with the features the
//! fixtures do not reach: dynamic-NTK RoPE past its original context, linear RoPE, partial
//! rotary, q/k/v/o and MLP biases, sliding windows shorter than the decode, MLA without a query
//! LoRA, packed (Q8_0) weights; plus its typed errors.

use hearth_models::host::{DecodeSession, Decoder};
use hearth_models::{CausalLm, ForwardOptions, HostModel, LoadOptions, ModelConfig, ModelError, TensorSource};
use serde_json::{Value, json};

type B = hearth_backend::Cpu;

/// Deterministic random weights: uniform with variance 1/fan_in; norms around 1, biases small.
struct RandomWeights;

impl TensorSource for RandomWeights {
    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let shape = expected.expect("the loader gives every shape").to_vec();
        let n: usize = shape.iter().product();
        let mut s = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        });
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let v = if name.contains("norm") {
            (0..n).map(|_| 1.0 + 0.2 * next()).collect()
        } else if name.ends_with(".bias") || name.contains("correction_bias") {
            (0..n).map(|_| 0.1 * next()).collect()
        } else {
            let amp = (3.0 / *shape.last().unwrap() as f32).sqrt();
            (0..n).map(|_| next() * amp).collect()
        };
        Ok((v, shape))
    }
}

fn base(model_type: &str) -> Value {
    json!({
        "model_type": model_type, "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "eos_token_id": 2
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn load(cfg: &Value, opts: &LoadOptions) -> CausalLm<B> {
    let cfg = ModelConfig::from_json(cfg, "test config").unwrap();
    CausalLm::<B>::load_with(cfg, &RandomWeights, &Default::default(), opts).unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    num / den.max(1e-30)
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

const LAST: ForwardOptions = ForwardOptions {
    hidden_states: false,
    last_only: true,
};

/// Prefill (all positions), greedy decode, and a ragged two-row batch with batched decode at
/// different positions: host logits == burn logits within `tol`, and the same greedy ids.
fn compare(name: &str, cfg: &Value, opts: &LoadOptions, tol: f64) {
    let model = load(cfg, opts);
    let host = HostModel::from_model(&model).unwrap();
    let (burn, hostd) = (Decoder::Burn(&model), Decoder::<B>::Host(&host));
    let prompts: [Vec<u32>; 2] = [
        (0..13).map(|i| (i * 31 + 5) % 97).collect(),
        (0..6).map(|i| (i * 17 + 3) % 97).collect(),
    ];
    let mut worst = 0.0f64;
    for p in &prompts {
        let (mut sb, mut sh) = (burn.new_session(1, None), hostd.new_session(1, None));
        let lb = burn
            .forward(std::slice::from_ref(p), &mut sb, ForwardOptions::default())
            .unwrap();
        let lb = lb.data.to_vec();
        let lh = hostd
            .forward(std::slice::from_ref(p), &mut sh, ForwardOptions::default())
            .unwrap();
        worst = worst.max(rel_err(lh.data, &lb));
        let mut tok = argmax(&lb[lb.len() - 97..]);
        for step in 0..20 {
            let lb = burn.forward(&[vec![tok]], &mut sb, LAST).unwrap().data.to_vec();
            let lh = hostd.forward(&[vec![tok]], &mut sh, LAST).unwrap();
            let e = rel_err(lh.data, &lb);
            assert!(e <= tol, "{name}: decode step {step} rel err {e:e}");
            worst = worst.max(e);
            if tol < 1e-4 {
                assert_eq!(argmax(lh.data), argmax(&lb), "{name}: greedy id at step {step}");
            }
            tok = argmax(&lb);
        }
    }
    // ragged batch, then decode with the rows at different positions
    let (mut sb, mut sh) = (burn.new_session(2, None), hostd.new_session(2, None));
    let batch = prompts.to_vec();
    let lb = burn.forward(&batch, &mut sb, ForwardOptions::default()).unwrap();
    let (t, lb) = (lb.len, lb.data.to_vec());
    let lh = hostd.forward(&batch, &mut sh, ForwardOptions::default()).unwrap();
    assert_eq!((lh.rows, lh.len, lh.vocab), (2, t, 97));
    for (r, p) in prompts.iter().enumerate() {
        let span = r * t * 97..(r * t + p.len()) * 97;
        worst = worst.max(rel_err(&lh.data[span.clone()], &lb[span]));
    }
    let mut next: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(r, p)| vec![argmax(&lb[(r * t + p.len() - 1) * 97..(r * t + p.len()) * 97])])
        .collect();
    for step in 0..8 {
        let lb = burn.forward(&next, &mut sb, LAST).unwrap().data.to_vec();
        let lh = hostd.forward(&next, &mut sh, LAST).unwrap();
        let e = rel_err(lh.data, &lb);
        assert!(e <= tol, "{name}: batched decode step {step} rel err {e:e}");
        worst = worst.max(e);
        next = (0..2).map(|r| vec![argmax(&lb[r * 97..(r + 1) * 97])]).collect();
    }
    assert!(worst <= tol, "{name}: rel err {worst:e}");
    assert_eq!(sh.seq_len(0), sb.seq_len(0));
    assert_eq!(sh.seq_len(1), sb.seq_len(1));
    eprintln!("{name}: host vs burn max rel err {worst:e}");
}

#[test]
fn dynamic_ntk_past_original_context_with_biases_and_partial_rotary() {
    let cfg = with(
        base("llama"),
        json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
               "max_position_embeddings": 8, "attention_bias": true, "mlp_bias": true,
               "partial_rotary_factor": 0.5}),
    );
    // the sessions hold 40 positions although the config says 8: dynamic NTK past it
    let model = load(&cfg, &LoadOptions::default());
    assert_eq!(model.config().rope.dim, 8);
    let host = HostModel::from_model(&model).unwrap();
    let p: Vec<u32> = (0..20).map(|i| (i * 7 + 1) % 97).collect();
    let mut cb = model.new_cache(1, Some(40));
    let lb = model.forward(std::slice::from_ref(&p), &mut cb, LAST).unwrap().logits;
    let lb = lb.into_data().to_vec::<f32>().unwrap();
    let mut sh = host.new_session(1, Some(40));
    let lh = host.forward(std::slice::from_ref(&p), &mut sh, LAST).unwrap();
    let e = rel_err(lh.logits, &lb);
    assert!(e <= 1e-5, "dynamic prefill rel err {e:e}");
    let mut tok = argmax(&lb);
    for step in 0..10 {
        let lb = model.forward(&[vec![tok]], &mut cb, LAST).unwrap().logits;
        let lb = lb.into_data().to_vec::<f32>().unwrap();
        let lh = host.forward(&[vec![tok]], &mut sh, LAST).unwrap();
        let e = rel_err(lh.logits, &lb);
        assert!(e <= 1e-5, "dynamic decode step {step} rel err {e:e}");
        tok = argmax(&lb);
    }
}

#[test]
fn linear_rope_with_biases() {
    let cfg = with(
        base("llama"),
        json!({"rope_scaling": {"rope_type": "linear", "factor": 3.0}, "attention_bias": true, "mlp_bias": true}),
    );
    compare("linear", &cfg, &LoadOptions::default(), 1e-5);
}

#[test]
fn sliding_window_shorter_than_the_decode() {
    let cfg = with(base("mistral"), json!({"sliding_window": 5}));
    compare("mistral window 5", &cfg, &LoadOptions::default(), 1e-5);
}

#[test]
fn qwen3_per_head_and_olmoe_full_qk_norm() {
    compare("qwen3", &base("qwen3"), &LoadOptions::default(), 1e-5);
    let olmoe = with(
        base("olmoe"),
        json!({"num_experts": 8, "num_experts_per_tok": 3, "norm_topk_prob": false, "intermediate_size": 32}),
    );
    compare("olmoe", &olmoe, &LoadOptions::default(), 1e-5);
}

#[test]
fn qwen2_moe_shared_expert_gate() {
    let cfg = with(
        base("qwen2_moe"),
        json!({"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
               "shared_expert_intermediate_size": 40, "norm_topk_prob": false, "decoder_sparse_step": 1,
               "mlp_only_layers": []}),
    );
    compare("qwen2_moe", &cfg, &LoadOptions::default(), 1e-5);
}

fn deepseek(q_lora: Value) -> Value {
    with(
        base("deepseek_v3"),
        json!({"q_lora_rank": q_lora, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
               "v_head_dim": 12, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
               "moe_intermediate_size": 16, "n_shared_experts": 1, "first_k_dense_replace": 1,
               "routed_scaling_factor": 2.5, "norm_topk_prob": true, "num_key_value_heads": 4,
               "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                                "original_max_position_embeddings": 16}}),
    )
}

#[test]
fn mla_with_and_without_query_lora() {
    compare("deepseek q_lora", &deepseek(json!(24)), &LoadOptions::default(), 1e-5);
    compare(
        "deepseek direct q",
        &deepseek(Value::Null),
        &LoadOptions::default(),
        1e-5,
    );
}

#[test]
fn packed_q8_0_weights() {
    // The kernels quantize activations to 8 bits, so the two forwards' last-bit float
    // differences can move an activation quant by one step. The host-vs-burn difference must stay
    // well inside the quantization error itself (Q8_0 model vs the f32 model).
    let cfg = with(base("llama"), json!({"hidden_size": 64, "intermediate_size": 128}));
    let q8 = load(
        &cfg,
        &LoadOptions {
            quant: Some(hearth_quant::kernels::WeightFormat::Q8_0),
            unpacked: false,
        },
    );
    let f32_model = load(&cfg, &LoadOptions::default());
    let host = HostModel::from_model(&q8).unwrap();
    let (burn, hostd, exact) = (Decoder::Burn(&q8), Decoder::<B>::Host(&host), Decoder::Burn(&f32_model));
    let p: Vec<u32> = (0..13).map(|i| (i * 31 + 5) % 97).collect();
    let (mut sb, mut sh, mut se) = (
        burn.new_session(1, None),
        hostd.new_session(1, None),
        exact.new_session(1, None),
    );
    let (mut host_vs_burn, mut quant_err) = (0.0f64, 0.0f64);
    let mut input = p.clone();
    for _ in 0..20 {
        let lb = burn.forward(&[input.clone()], &mut sb, LAST).unwrap().data.to_vec();
        let le = exact.forward(&[input.clone()], &mut se, LAST).unwrap().data.to_vec();
        let lh = hostd.forward(&[input.clone()], &mut sh, LAST).unwrap();
        host_vs_burn = host_vs_burn.max(rel_err(lh.data, &lb));
        quant_err = quant_err.max(rel_err(&lb, &le));
        input = vec![argmax(&le)];
    }
    eprintln!("q8_0: host vs burn {host_vs_burn:e}, Q8_0 vs f32 {quant_err:e}");
    assert!(quant_err > 0.0);
    assert!(
        host_vs_burn <= quant_err.max(1e-5),
        "host vs burn {host_vs_burn:e} exceeds the quantization error {quant_err:e}"
    );
}

#[test]
fn typed_errors() {
    let model = load(&base("llama"), &LoadOptions::default());
    let host = HostModel::from_model(&model).unwrap();
    let other = HostModel::from_model(&load(&base("qwen3"), &LoadOptions::default())).unwrap();
    let mut s = host.new_session(1, Some(4));
    let e = host.forward(&[vec![]], &mut s, LAST).err().unwrap();
    assert!(matches!(e, ModelError::EmptyInput(_)), "{e}");
    let e = host.forward(&[vec![1, 97]], &mut s, LAST).err().unwrap();
    assert!(
        matches!(
            e,
            ModelError::TokenOutOfRange {
                id: 97,
                position: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = host.forward(&[vec![1], vec![2]], &mut s, LAST).err().unwrap();
    assert!(matches!(e, ModelError::Cache(_)), "{e}");
    let e = host.forward(&[vec![1; 5]], &mut s, LAST).err().unwrap();
    assert!(matches!(e, ModelError::Cache(_)), "{e}");
    assert_eq!(s.seq_len(0), 0, "a failed forward leaves the session as it was");
    let mut wrong = other.new_session(1, Some(4));
    let e = host.forward(&[vec![1]], &mut wrong, LAST).err().unwrap();
    assert!(matches!(e, ModelError::Config { .. }), "{e}");
    // a session of the other forward
    let mut burn_session: DecodeSession<B> = Decoder::Burn(&model).new_session(1, Some(4));
    let e = Decoder::Host(&host)
        .forward(&[vec![1]], &mut burn_session, LAST)
        .err()
        .unwrap();
    assert!(matches!(e, ModelError::Config { .. }), "{e}");
    // and a full session reports Full, then works again after reset_row
    host.forward(&[vec![1, 2, 3, 4]], &mut s, LAST).unwrap();
    assert!(host.forward(&[vec![5]], &mut s, LAST).is_err());
    s.reset_row(0);
    assert!(host.forward(&[vec![5]], &mut s, LAST).is_ok());
    // the kernels-only yardstick runs on the model's own sessions only
    host.kernels_only_step(&mut s).unwrap();
    assert!(host.kernels_only_step(&mut wrong).is_err());
}
