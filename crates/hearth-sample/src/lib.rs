//! # hearth-sample
//!
//! Logits processing and token sampling for LLM inference on plain `&mut [f32]` rows.
//! No tensor framework, no other hearth crate; fast on 150k-token vocabularies.
//!
//! * Processors with transformers / OpenAI semantics: temperature, top-k, top-p, min-p,
//!   typical, repetition penalty, presence/frequency penalties, no-repeat-n-gram, logit bias,
//!   min-new-tokens EOS suppression and banned sequences, chained in a configurable order
//!   ([`ProcessorKind::DEFAULT_ORDER`]).
//! * Samplers: greedy, seeded categorical (Philox4x32-10 keyed by `(seed, step)`, so results
//!   never depend on batch composition or threads) and top-logprobs.
//! * Stop conditions: EOS ids, max tokens ([`StopCondition`]) and streaming stop strings that
//!   never emit a partial stop string ([`StopStrings`]).
//!
//! ## Semantics notes
//!
//! * Top-k keeps exactly `k` tokens; ties at the cut are broken by lower token id
//!   (transformers keeps every token tied with the k-th value). All rankings use
//!   (logit descending, token id ascending).
//! * Greedy (`temperature == 0`) skips the warpers (temperature, top-k, top-p, min-p,
//!   typical) like transformers; penalties, biases and bans still apply.
//! * `logprob` / `top_logprobs` are log-probabilities under the processed distribution.
//! * Top-k and top-p never sort the whole vocabulary: top-k is a streaming selection; top-p
//!   first tries growing streaming top-k sets, then a mass histogram, and sorts only the
//!   kept prefix plus one boundary bucket. Typical filtering sorts all finite logits.
//!
//! ```
//! use hearth_sample::{Sampler, SamplingParams, StopCondition, StopReason};
//! let params = SamplingParams {
//!     temperature: 0.7, top_k: Some(50), top_p: Some(0.9), repetition_penalty: Some(1.1),
//!     eos_token_ids: vec![2], seed: 42, top_logprobs: 3, ..Default::default()
//! };
//! let mut sampler = Sampler::new(params).unwrap();
//! let stop = StopCondition::new(vec![2], 16);
//! let mut tokens = vec![5u32, 6, 7]; // prompt
//! for step in 0..16u64 {
//!     let mut logits: Vec<f32> = (0..100).map(|i| ((i * 37 + step as usize * 11) % 17) as f32 * 0.3).collect();
//!     let out = sampler.sample(&mut logits, &tokens, 3, step).unwrap();
//!     tokens.push(out.token);
//!     if let Some(reason) = stop.check(out.token, step as usize + 1) {
//!         assert!(matches!(reason, StopReason::Eos | StopReason::MaxTokens));
//!         break;
//!     }
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod kernels;
mod params;
mod rng;
mod sampler;
mod stop;

pub use error::SampleError;
pub use params::{ProcessorKind, SamplingParams};
pub use rng::{philox4x32_10, uniform};
pub use sampler::{Sampled, Sampler};
pub use stop::{StopCondition, StopReason, StopStrings};
