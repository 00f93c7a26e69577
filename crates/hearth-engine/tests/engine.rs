//! Engine behaviour on the fixture checkpoints: greedy generation equals transformers' greedy
//! ids, chat templates render, stop strings and errors behave.

use hearth_engine::generate::Finish;
use hearth_engine::{ChatMessage, Engine, EngineError, Event, GenerateRequest, Prompt, SamplingParams};
use safetensors::SafeTensors;
use std::path::PathBuf;

type B = hearth_backend::Cpu;

fn model_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    let d = dir.join("models").join(name);
    assert!(d.is_dir(), "fixture {} missing (set HEARTH_FIXTURES)", d.display());
    d
}

fn ids(name: &str, key: &str) -> Vec<u32> {
    let bytes = std::fs::read(model_dir(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

fn collect(engine: &Engine<B>, req: GenerateRequest) -> (Vec<u32>, String, Finish) {
    let (mut toks, mut text) = (Vec::new(), String::new());
    for ev in engine.generate(req).unwrap() {
        match ev.unwrap() {
            Event::Token { id, text: t, .. } => {
                toks.push(id);
                text.push_str(&t);
            }
            Event::Done { finish, tail, .. } => {
                text.push_str(&tail);
                return (toks, text, finish);
            }
        }
    }
    panic!("no Done event");
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in ["llama", "qwen3", "mixtral", "deepseek_v3"] {
        let engine = Engine::<B>::from_dir(&model_dir(name), &Default::default()).unwrap();
        let prompt = ids(name, "prompt0.input_ids");
        let want = ids(name, "prompt0.greedy_ids");
        // the reference never stops at EOS; keep generating past it
        let req = GenerateRequest {
            prompt: Prompt::Ids(prompt),
            params: SamplingParams::default(),
            max_new_tokens: want.len(),
            stop_strings: vec![],
        };
        let mut engine = engine;
        engine.eos_token_ids.clear();
        let (got, text, finish) = collect(&engine, req);
        assert_eq!(got, want, "{name}");
        assert_eq!(finish, Finish::MaxTokens);
        // streamed text is the decode of the ids
        assert_eq!(
            text,
            engine.tokenizer.decode(&got, true).unwrap(),
            "{name}: streamed text"
        );
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let engine = Engine::<B>::from_dir(&model_dir("llama"), &Default::default()).unwrap();
    let req = |seed| GenerateRequest {
        prompt: Prompt::Text("hello".into()),
        params: SamplingParams {
            temperature: 1.5,
            seed,
            ..Default::default()
        },
        max_new_tokens: 12,
        stop_strings: vec![],
    };
    let a = collect(&engine, req(1)).0;
    assert_eq!(a, collect(&engine, req(1)).0);
    assert!(
        (2..6).any(|s| collect(&engine, req(s)).0 != a),
        "different seeds never differ"
    );
}

#[test]
fn stop_string_ends_generation_and_is_not_emitted() {
    let engine = Engine::<B>::from_dir(&model_dir("llama"), &Default::default()).unwrap();
    let base = GenerateRequest::text("hello").max_new_tokens(16);
    let (_, text, _) = collect(&engine, base.clone());
    // pick a stop string from the middle of the greedy text
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 6, "greedy text too short: {text:?}");
    let stop: String = chars[3..6].iter().collect();
    let (_, stopped, finish) = collect(
        &engine,
        GenerateRequest {
            stop_strings: vec![stop.clone()],
            ..base
        },
    );
    assert_eq!(finish, Finish::StopString);
    let cut = text.find(&stop).unwrap();
    assert_eq!(stopped, text[..cut]);
}

#[test]
fn chat_template_renders_from_tokenizer_config() {
    let engine = Engine::<B>::from_dir(&model_dir("llama"), &Default::default()).unwrap();
    let t = engine.tokenizer.chat_template.as_ref().unwrap();
    let s = t.render(&[ChatMessage::new("user", " Hi ")], true).unwrap();
    assert_eq!(
        s,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let ids = engine
        .encode_prompt(&Prompt::Chat(vec![ChatMessage::new("user", "Hi")]))
        .unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 0).count(), 1, "exactly one BOS");
}

#[test]
fn errors_are_typed() {
    let engine = Engine::<B>::from_dir(&model_dir("llama"), &Default::default()).unwrap();
    let long = Prompt::Ids(vec![5; engine.model.config().max_position_embeddings]);
    let r = engine.generate(GenerateRequest {
        prompt: long,
        ..GenerateRequest::text("")
    });
    assert!(matches!(r.err(), Some(EngineError::PromptTooLong { .. })));
    let bad = GenerateRequest {
        params: SamplingParams {
            top_p: Some(0.0),
            ..Default::default()
        },
        ..GenerateRequest::text("x")
    };
    assert!(matches!(engine.generate(bad).err(), Some(EngineError::Sample(_))));
    assert!(matches!(
        engine
            .generate(GenerateRequest {
                prompt: Prompt::Ids(vec![]),
                ..GenerateRequest::text("")
            })
            .err(),
        Some(EngineError::EmptyPrompt)
    ));
    let oov = GenerateRequest {
        prompt: Prompt::Ids(vec![100_000]),
        ..GenerateRequest::text("")
    };
    let first = engine.generate(oov).unwrap().next().unwrap();
    assert!(matches!(
        first,
        Err(EngineError::Model(hearth_models::ModelError::TokenOutOfRange { .. }))
    ));
}
