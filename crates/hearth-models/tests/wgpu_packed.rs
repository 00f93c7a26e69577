//! Quantized models on the wgpu backend with their weights packed on the device
//! (`LinearWeight::Packed`, multiplied by the packed matrix × vector / dequantize kernels)
//! against an independent computation: the same model in f32 on the CPU backend whose matrices
//! are the quantized weights dequantized back to f32 on the host (`hearth_quant`). Packing must
//! change only where the weights live and how many bytes a step reads, never the math: prefill
//! logits at rel ≤ 1e-4, greedy ids identical, and the decode weight bytes exactly the packed
//! size.
//!
//! Run with `cargo test -p hearth-models --features wgpu --test wgpu_packed`. Without a Vulkan
//! adapter burn-wgpu panics ("No possible adapter available for backend") and every test here
//! fails: nothing falls back to the CPU backend (Mesa's llvmpipe, `mesa-vulkan-drivers`, is
//! an adapter).
#![cfg(feature = "wgpu")]

mod common;
use hearth_backend::{Cpu, HearthBackend, Wgpu};
use hearth_models::{
    CausalLm, ForwardOptions, HostModel, LoadOptions, ModelConfig, ModelError, TensorSource, WeightStore,
};
use hearth_quant::kernels::WeightFormat;

const TOL: f64 = 1e-4;
const EMBED: &str = "model.embed_tokens.weight";

/// `inner` with every linear matrix (2-D, not the embedding; rows of whole blocks) replaced by
/// its `format` quantization dequantized back to f32: the f32 model the packed one must equal.
/// Hands out no packed tensors, so a loader without `quant` computes on these f32 values.
struct Dequantized<'a> {
    inner: &'a dyn TensorSource,
    format: WeightFormat,
}

impl TensorSource for Dequantized<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let (v, shape) = self.inner.f32(name, expected)?;
        if shape.len() != 2 || name == EMBED || !shape[1].is_multiple_of(self.format.block_size()) {
            return Ok((v, shape));
        }
        let bytes = hearth_quant::quantize_to_vec(self.format.ggml(), &v).unwrap();
        let deq = hearth_quant::dequantize_to_vec(self.format.ggml(), &bytes).unwrap();
        assert_ne!(
            deq, v,
            "{name}: quantization changed nothing (the test would prove nothing)"
        );
        Ok((deq, shape))
    }
}

/// A small Llama-shaped model with every width a multiple of 256 (so that the K-quants, whose
/// rows are 256-value super-blocks, pack every matrix), random weights.
struct RandomSource;

fn random_config() -> ModelConfig {
    let v = serde_json::json!({"model_type": "llama", "vocab_size": 512, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 128, "rope_theta": 10000.0, "tie_word_embeddings": false});
    ModelConfig::from_json(&v, "random llama").unwrap()
}

impl TensorSource for RandomSource {
    fn contains(&self, name: &str) -> bool {
        name != "lm_head.weight" || !random_config().tie_word_embeddings
    }
    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let shape = expected.expect("the loader passes shapes").to_vec();
        let n: usize = shape.iter().product();
        let mut s = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0 // [-1, 1)
        };
        let v = if name.contains("norm") {
            (0..n).map(|_| 1.0 + 0.2 * next()).collect()
        } else {
            // 16-value groups of different magnitudes: sub-block scales differ
            let amp = 1.0 / (shape[shape.len() - 1] as f32).sqrt();
            let mut v = Vec::with_capacity(n);
            while v.len() < n {
                let g = amp * (1.5 + next());
                v.extend((0..16.min(n - v.len())).map(|_| g * next()));
            }
            v
        };
        Ok((v, shape))
    }
}

/// One prompt through a model: prefill logits (`[T, vocab]`, more than
/// `MATVEC_MAX_ROWS` rows: the dequantize + matmul path), then `steps` greedy decode steps
/// through the KV cache (one row: the fused packed matrix × vector), with each step's logits.
struct Run {
    prefill: Vec<f32>,
    steps: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn run<B: HearthBackend>(model: &CausalLm<B>, ids: &[u32], steps: usize) -> Run {
    let mut cache = model.new_cache(1, None);
    let out = model
        .forward(&[ids.to_vec()], &mut cache, ForwardOptions::default())
        .unwrap();
    let prefill = common::host(out.logits);
    let v = model.config().vocab_size;
    let mut next = common::argmax(&prefill[(ids.len() - 1) * v..]);
    let mut r = Run {
        prefill,
        steps: Vec::new(),
        greedy: vec![next],
    };
    for _ in 1..steps {
        let out = model
            .forward(
                &[vec![next]],
                &mut cache,
                ForwardOptions {
                    hidden_states: false,
                    last_only: true,
                },
            )
            .unwrap();
        let logits = common::host(out.logits);
        next = common::argmax(&logits);
        r.steps.push(logits);
        r.greedy.push(next);
    }
    r
}

/// Loads `source` on wgpu with `quant` (packed on the device) and, as the reference, on the
/// CPU backend in f32 with the dequantized weights; compares prefill and decode-step logits
/// (rel ≤ [`TOL`]) and greedy ids, and checks that the device model reads exactly the packed
/// bytes. Returns the prefill error and both models.
fn check(
    what: &str,
    cfg: &ModelConfig,
    source: &dyn TensorSource,
    quant: WeightFormat,
    ids: &[u32],
) -> (f64, CausalLm<Wgpu>, CausalLm<Cpu>) {
    let opts = LoadOptions {
        quant: Some(quant),
        unpacked: false,
    };
    let gpu = CausalLm::<Wgpu>::load_with(cfg.clone(), source, &Default::default(), &opts)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let reference = Dequantized {
        inner: source,
        format: quant,
    };
    let cpu = CausalLm::<Cpu>::load_with(cfg.clone(), &reference, &Default::default(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));

    // every linear matrix is packed: the f32 bytes scaled by the format's device words
    let fmt = hearth_models::layers::device_format(quant).unwrap();
    let (f32_bytes, packed_bytes) = (cpu.decode_weight_bytes(), gpu.decode_weight_bytes());
    let embed_row = cfg.hidden_size * 4;
    let per_value = (f32_bytes - embed_row) / 4 / fmt.block_len() * fmt.words_per_block() * 4;
    assert_eq!(packed_bytes, per_value + embed_row, "{what}: device weight bytes");
    assert!(
        packed_bytes * 3 < f32_bytes,
        "{what}: {packed_bytes} vs f32 {f32_bytes}"
    );

    assert!(
        ids.len() > hearth_backend::cube::MATVEC_MAX_ROWS,
        "{what}: prefill must take the matmul path"
    );
    let (got, want) = (run(&gpu, ids, 6), run(&cpu, ids, 6));
    let e = common::rel_err(&got.prefill, &want.prefill);
    assert!(e <= TOL, "{what} {quant:?}: prefill logits rel err {e:e}");
    let mut e_step = 0.0f64;
    for (i, (g, w)) in got.steps.iter().zip(&want.steps).enumerate() {
        let es = common::rel_err(g, w);
        assert!(
            es <= TOL,
            "{what} {quant:?}: decode step {} logits rel err {es:e}",
            i + 1
        );
        e_step = e_step.max(es);
    }
    println!(
        "{what} {quant:?}: prefill rel err {e:.2e}, decode steps {e_step:.2e}, greedy {:?}, weight bytes \
         {packed_bytes} (f32 {f32_bytes})",
        got.greedy
    );
    assert_eq!(got.greedy, want.greedy, "{what} {quant:?}: greedy ids");
    (e, gpu, cpu)
}

fn check_fixture(name: &str, quant: WeightFormat) -> (f64, CausalLm<Wgpu>, CausalLm<Cpu>) {
    let dir = common::model_dir(name);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let ids = common::Reference::open(name).ids("prompt0.input_ids");
    check(name, &cfg, &store, quant, &ids)
}

#[test]
fn llama_q8_0() {
    let (_, gpu, cpu) = check_fixture("llama", WeightFormat::Q8_0);
    // the host forward copies packed device weights back (dequantized): same logits as the
    // f32 reference model's host forward
    let ids = common::Reference::open("llama").ids("prompt0.input_ids");
    let host = |m: HostModel| {
        let mut s = m.new_session(1, None);
        m.forward(std::slice::from_ref(&ids), &mut s, ForwardOptions::default())
            .unwrap()
            .logits
            .to_vec()
    };
    let from_gpu = host(HostModel::from_model(&gpu).unwrap());
    let from_cpu = host(HostModel::from_model(&cpu).unwrap());
    let e = common::rel_err(&from_gpu, &from_cpu);
    println!("llama Q8_0 host forward from device weights: rel err {e:.2e}");
    assert!(e <= TOL, "host forward of packed device weights: {e:e}");
}

#[test]
fn llama_q4_0() {
    check_fixture("llama", WeightFormat::Q4_0);
}

#[test]
fn mixtral_q8_0() {
    check_fixture("mixtral", WeightFormat::Q8_0);
}

#[test]
fn random_llama_q4_k() {
    let ids: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 512).collect();
    check(
        "random llama",
        &random_config(),
        &RandomSource,
        WeightFormat::Q4_K,
        &ids,
    );
}

#[test]
fn random_llama_q6_k() {
    let ids: Vec<u32> = (0..7).map(|i| (i * 101 + 3) % 512).collect();
    check(
        "random llama",
        &random_config(),
        &RandomSource,
        WeightFormat::Q6_K,
        &ids,
    );
}

/// Formats without a device kernel are a typed error on wgpu, not a silent f32 fallback;
/// `quant: F32` and `unpacked` load the f32 reference path.
#[test]
fn unsupported_quant_is_an_error() {
    let dir = common::model_dir("llama");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    for q in [WeightFormat::Q4_1, WeightFormat::Bf16, WeightFormat::F16] {
        let opts = LoadOptions {
            quant: Some(q),
            unpacked: false,
        };
        match CausalLm::<Wgpu>::load_with(cfg.clone(), &store, &Default::default(), &opts) {
            Err(ModelError::Config { field, .. }) => assert_eq!(field, "quant", "{q:?}"),
            Err(e) => panic!("{q:?}: unexpected error {e}"),
            Ok(_) => panic!("{q:?}: loaded"),
        }
    }
    let f32_model = CausalLm::<Wgpu>::load_with(
        cfg.clone(),
        &store,
        &Default::default(),
        &LoadOptions {
            quant: Some(WeightFormat::F32),
            unpacked: true,
        },
    )
    .unwrap();
    let cpu = CausalLm::<Cpu>::load(cfg, &store, &Default::default()).unwrap();
    assert_eq!(f32_model.decode_weight_bytes(), cpu.decode_weight_bytes());
}

/// Q8_0 and Q4_0 blocks with the norms folded into the matvec launches
/// (`hearth_backend::cube::set_fold_norms`) against the same CPU reference.
#[test]
fn llama_folded_norms_q8_0_q4_0() {
    // the fold applies where the norm sums are not carried (they are by default)
    hearth_backend::cube::set_norm_sums(Some(false));
    hearth_backend::cube::set_fold_norms(Some(true));
    for quant in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
        check_fixture("llama", quant);
    }
    hearth_backend::cube::set_fold_norms(None);
    hearth_backend::cube::set_norm_sums(None);
}
