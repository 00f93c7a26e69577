//! Shared fixture helpers for the model tests.
#![allow(dead_code)]

use burn::tensor::{Tensor, backend::Backend};
use hearth_backend::HearthBackend;
use hearth_models::{CausalLm, ForwardOptions, HostModel, HostSession};
use safetensors::SafeTensors;
use std::path::PathBuf;

/// `$HEARTH_FIXTURES` or `../shared/fixtures` next to the repository. Panics (fails the test)
/// when missing: fixtures are the definition of correct and must never be skipped.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("HEARTH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    assert!(
        dir.join("models").is_dir(),
        "fixtures not found at {} (set HEARTH_FIXTURES)",
        dir.display()
    );
    dir
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        let p = model_dir(name).join("reference.safetensors");
        Self {
            bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("reference header")
    }
    pub fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }
    pub fn ids(&self, key: &str) -> Vec<u32> {
        let st = self.st();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("missing {key}"));
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    }
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    num / den.max(1e-30)
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// A forward the fixture checks can drive: burn's [`CausalLm`] or the host [`HostModel`].
pub trait FixtureForward {
    /// Its KV cache / session.
    type Session;
    /// Vocabulary size.
    fn vocab(&self) -> usize;
    /// A fresh session for `rows` sequences of the model's full context.
    fn session(&self, rows: usize) -> Self::Session;
    /// Logits (`[B, T, V]` or `[B, 1, V]`, flattened, with their dims) and hidden states.
    fn run(&self, tokens: &[Vec<u32>], s: &mut Self::Session, opts: ForwardOptions) -> Run;
}

/// Host copies of one forward's outputs.
pub struct Run {
    pub logits: Vec<f32>,
    pub dims: [usize; 3],
    pub hidden: Vec<Vec<f32>>,
}

impl<B: HearthBackend> FixtureForward for CausalLm<B> {
    type Session = hearth_attention::ContiguousKvCache<B>;
    fn vocab(&self) -> usize {
        self.config().vocab_size
    }
    fn session(&self, rows: usize) -> Self::Session {
        self.new_cache(rows, None)
    }
    fn run(&self, tokens: &[Vec<u32>], s: &mut Self::Session, opts: ForwardOptions) -> Run {
        let out = self.forward(tokens, s, opts).unwrap();
        Run {
            dims: out.logits.dims(),
            logits: host(out.logits),
            hidden: out.hidden_states.into_iter().map(host).collect(),
        }
    }
}

impl FixtureForward for HostModel {
    type Session = HostSession;
    fn vocab(&self) -> usize {
        self.config().vocab_size
    }
    fn session(&self, rows: usize) -> Self::Session {
        self.new_session(rows, None)
    }
    fn run(&self, tokens: &[Vec<u32>], s: &mut Self::Session, opts: ForwardOptions) -> Run {
        let out = self.forward(tokens, s, opts).unwrap();
        Run {
            dims: out.dims,
            logits: out.logits.to_vec(),
            hidden: (0..out.num_hidden_states())
                .map(|l| out.hidden_state(l).unwrap().to_vec())
                .collect(),
        }
    }
}

/// Runs fixture model `name` on backend `B` (default device) through burn's forward; see
/// [`check_forward`].
pub fn check_model<B: HearthBackend>(name: &str, tol: f64) -> MaxErrors {
    let dev = B::Device::default();
    let model = CausalLm::<B>::from_dir(&model_dir(name), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_forward(name, &model, tol)
}

/// Runs fixture model `name` through the host forward ([`HostModel`], CPU); see
/// [`check_forward`].
pub fn check_host_model(name: &str, tol: f64) -> MaxErrors {
    let dev = Default::default();
    let model =
        CausalLm::<hearth_backend::Cpu>::from_dir(&model_dir(name), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    let host = HostModel::from_model(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_forward(name, &host, tol)
}

/// Checks a forward of fixture model `name` against its float64 transformers reference:
/// prefill logits and every hidden state, greedy ids (exact) with each step's logits,
/// and both prompts batched (logits as alone, same greedy ids). Every comparison is
/// `rel_err ≤ tol`; panics (fails the test) on the first mismatch. Returns the largest errors
/// seen, for reporting.
pub fn check_forward<M: FixtureForward>(name: &str, model: &M, tol: f64) -> MaxErrors {
    let mut worst = MaxErrors::default();
    let r = Reference::open(name);
    let vocab = model.vocab();
    let mut prompts = Vec::new();
    for p in 0..2 {
        let ids = r.ids(&format!("prompt{p}.input_ids"));
        // prefill with hidden states
        let mut cache = model.session(1);
        let out = model.run(
            std::slice::from_ref(&ids),
            &mut cache,
            ForwardOptions {
                hidden_states: true,
                last_only: false,
            },
        );
        let (ref_logits, _) = r.f32(&format!("prompt{p}.prefill_logits"));
        let e = rel_err(&out.logits, &ref_logits);
        assert!(e <= tol, "{name} prompt{p}: prefill logits rel err {e:e}");
        worst.prefill_logits = worst.prefill_logits.max(e);
        let (ref_h, shape) = r.f32(&format!("prompt{p}.hidden_states"));
        assert_eq!(shape[0], out.hidden.len(), "{name}: number of hidden states");
        let per = shape[1] * shape[2];
        for (l, h) in out.hidden.iter().enumerate() {
            let e = rel_err(h, &ref_h[l * per..(l + 1) * per]);
            assert!(e <= tol, "{name} prompt{p}: hidden state {l} rel err {e:e}");
            worst.hidden_states = worst.hidden_states.max(e);
        }
        // greedy decode through the cache, one token at a time
        let mut cache = model.session(1);
        let ref_ids = r.ids(&format!("prompt{p}.greedy_ids"));
        let (ref_steps, _) = r.f32(&format!("prompt{p}.greedy_step_logits"));
        let mut next = ids.clone();
        let mut got = Vec::new();
        for step in 0..ref_ids.len() {
            let out = model.run(
                &[next.clone()],
                &mut cache,
                ForwardOptions {
                    hidden_states: false,
                    last_only: true,
                },
            );
            let logits = out.logits;
            let e = rel_err(&logits, &ref_steps[step * vocab..(step + 1) * vocab]);
            assert!(e <= tol, "{name} prompt{p}: greedy step {step} logits rel err {e:e}");
            worst.step_logits = worst.step_logits.max(e);
            let tok = argmax(&logits);
            got.push(tok);
            next = vec![tok];
        }
        assert_eq!(got, ref_ids, "{name} prompt{p}: greedy ids");
        prompts.push((ids, ref_logits, ref_ids));
    }

    // both prompts in one ragged batch: same logits as alone
    let mut cache = model.session(2);
    let batch = vec![prompts[0].0.clone(), prompts[1].0.clone()];
    let out = model.run(&batch, &mut cache, ForwardOptions::default());
    let [_, t, v] = out.dims;
    let all = out.logits;
    for (row, (ids, ref_logits, _)) in prompts.iter().enumerate() {
        let n = ids.len();
        let got = &all[row * t * v..row * t * v + n * v];
        let e = rel_err(got, ref_logits);
        assert!(e <= tol, "{name}: batched row {row} rel err {e:e}");
        worst.batched_logits = worst.batched_logits.max(e);
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
        let out = model.run(
            &next,
            &mut cache,
            ForwardOptions {
                hidden_states: false,
                last_only: true,
            },
        );
        let l = out.logits;
        next = (0..2).map(|row| vec![argmax(&l[row * v..(row + 1) * v])]).collect();
        for row in 0..2 {
            got[row].push(next[row][0]);
        }
    }
    for row in 0..2 {
        assert_eq!(got[row], prompts[row].2, "{name}: batched greedy ids row {row}");
    }
    worst
}

/// The largest relative errors [`check_model`] saw, each against the float64 reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaxErrors {
    /// Prefill logits, both prompts.
    pub prefill_logits: f64,
    /// Embeddings and every layer's output.
    pub hidden_states: f64,
    /// Logits of each greedy decode step through the KV cache.
    pub step_logits: f64,
    /// Prefill logits of the two prompts as one ragged batch.
    pub batched_logits: f64,
}

/// The fixture models' names.
#[allow(dead_code)] // not every test binary runs all of them
pub const MODELS: [&str; 10] = [
    "llama",
    "llama_tied_bf16",
    "mistral",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
];

/// Greedy decode of fixture model `name` on backend `B` through
/// [`hearth_models::host::Decoder::greedy_steps`] (burn's forward: the argmax on the device,
/// each step fed there and enqueued before the last token is read back): the transformers
/// reference's greedy ids, exactly, for both prompts; and stopping early returns the tokens up
/// to the stop.
#[allow(dead_code)]
pub fn check_device_greedy<B: HearthBackend>(name: &str) {
    use hearth_models::host::Decoder;
    let dev = B::Device::default();
    let model = CausalLm::<B>::from_dir(&model_dir(name), &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dec = Decoder::Burn(&model);
    let r = Reference::open(name);
    let last = ForwardOptions {
        hidden_states: false,
        last_only: true,
    };
    for p in 0..2 {
        let ids = r.ids(&format!("prompt{p}.input_ids"));
        let ref_ids = r.ids(&format!("prompt{p}.greedy_ids"));
        let mut s = dec.new_session(1, None);
        let first = argmax(dec.forward(std::slice::from_ref(&ids), &mut s, last).unwrap().data);
        let mut seen = Vec::new();
        let rest = dec
            .greedy_steps(first, ref_ids.len() - 1, &mut s, |t| {
                seen.push(t);
                true
            })
            .unwrap();
        assert_eq!(rest, seen, "{name} prompt{p}: tokens returned = tokens seen");
        let got: Vec<u32> = std::iter::once(first).chain(rest).collect();
        assert_eq!(got, ref_ids, "{name} prompt{p}: device greedy ids");
        // stopped after 3 tokens: those 3, and the session one step past them
        let mut s = dec.new_session(1, None);
        let first = argmax(dec.forward(std::slice::from_ref(&ids), &mut s, last).unwrap().data);
        let mut n = 0;
        let stopped = dec
            .greedy_steps(first, ref_ids.len() - 1, &mut s, |_| {
                n += 1;
                n < 3
            })
            .unwrap();
        assert_eq!(stopped, ref_ids[1..4], "{name} prompt{p}: stopped early");
        assert_eq!(
            s.seq_len(0),
            ids.len() + 4,
            "{name} prompt{p}: the step past the stop is cached"
        );
    }
}
