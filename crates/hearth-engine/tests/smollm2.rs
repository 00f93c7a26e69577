//! Golden test on the real SmolLM2-135M-Instruct Q4_1 GGUF (downloaded on first use via
//! `fetch::smollm2()`; the test fails, never skips, when it cannot be obtained).

use burn::tensor::Tensor;
use hearth_engine::gguf_tokenizer::{tokenizer_from_gguf, write_hf_tokenizer};
use hearth_engine::{ChatMessage, Engine, Event, GenerateRequest, Tokenizer};
use hearth_models::convert::{HfDtype, gguf_to_hf};
use hearth_models::gguf::GgufSource;
use hearth_models::{CausalLm, ForwardOptions};
use std::time::Instant;

type B = hearth_backend::Cpu;

const PROMPT: &str = "The capital of France is";
const IDS: [u32; 5] = [504, 3575, 282, 4649, 314];

fn greedy_text(engine: &Engine<B>, n: usize) -> String {
    let mut text = String::new();
    let t = Instant::now();
    let mut count = 0;
    for ev in engine
        .generate(GenerateRequest::text(PROMPT).max_new_tokens(n))
        .unwrap()
    {
        match ev.unwrap() {
            Event::Token { text: s, .. } => {
                text.push_str(&s);
                count += 1;
            }
            Event::Done { tail, .. } => text.push_str(&tail),
        }
    }
    eprintln!(
        "{count} tokens in {:.2?} ({:.1} tok/s incl. prefill)",
        t.elapsed(),
        count as f64 / t.elapsed().as_secs_f64()
    );
    text
}

fn prefill_logits(model: &CausalLm<B>) -> Vec<f32> {
    let mut cache = model.new_cache(1, Some(64));
    let out = model
        .forward(&[IDS.to_vec()], &mut cache, ForwardOptions::default())
        .unwrap();
    let t: Tensor<B, 3> = out.logits;
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
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

#[test]
fn smollm2_gguf_golden() {
    let path = hearth_engine::fetch::smollm2().unwrap_or_else(|e| panic!("could not obtain SmolLM2: {e}"));
    let dev = Default::default();

    // tokenizer from GGUF metadata
    let src = GgufSource::open(&path).unwrap();
    let tok = tokenizer_from_gguf(src.file()).unwrap();
    assert_eq!(tok.encode(PROMPT, true).unwrap(), IDS);
    assert_eq!(tok.decode(&IDS, false).unwrap(), PROMPT);
    let chat = tok.chat_template.as_ref().expect("chat template");
    let rendered = chat.render(&[ChatMessage::new("user", "Hi!")], true).unwrap();
    assert!(
        rendered.ends_with("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"),
        "{rendered:?}"
    );
    assert!(rendered.starts_with("<|im_start|>system\n"), "{rendered:?}");
    assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));

    // model from GGUF
    let t = Instant::now();
    let engine = Engine::<B>::from_gguf(&path, &dev).unwrap();
    eprintln!("GGUF load: {:.2?}", t.elapsed());
    let text = greedy_text(&engine, 4);
    assert!(text.starts_with(" Paris."), "{text:?}");
    drop(engine);
    // The packed path quantizes activations to 8 bits (as llama.cpp does); the exactness check
    // against the converted checkpoint uses the same dequantized weights in f32.
    let opts = hearth_models::LoadOptions {
        unpacked: true,
        ..Default::default()
    };
    let engine = Engine::<B>::from_gguf_with(&path, &dev, &opts).unwrap();
    assert_eq!(greedy_text(&engine, 4), text, "packed and dequantized paths disagree");
    let logits_gguf = prefill_logits(&engine.model);
    drop(engine);
    drop(src);

    // GGUF → HF safetensors (f32) + tokenizer files, loaded through the HF path
    let dir = std::env::temp_dir().join(format!("hearth-smollm2-{}", std::process::id()));
    gguf_to_hf(&path, &dir, HfDtype::F32).unwrap();
    write_hf_tokenizer(&hearth_quant::gguf::GgufFile::open(&path).unwrap(), &dir).unwrap();
    let model = CausalLm::<B>::from_dir(&dir, &dev).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.encode(PROMPT, true).unwrap(), IDS);
    assert!(tok.chat_template.is_some());
    let logits_hf = prefill_logits(&model);
    let e = rel_err(&logits_gguf, &logits_hf);
    assert!(e <= 1e-4, "prefill logits rel err {e}");
    let engine = Engine::new(model, tok).unwrap();
    assert_eq!(greedy_text(&engine, 4), text);
    let _ = std::fs::remove_dir_all(&dir);
}
