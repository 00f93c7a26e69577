//! hearth-engine: tokenizer and chat template, and the streaming generation loop.
//!
//! ```no_run
//! use hearth_engine::{Engine, GenerateRequest, Event};
//! type B = hearth_backend::Cpu;
//! let engine = Engine::<B>::from_dir(std::path::Path::new("checkpoint"), &Default::default()).unwrap();
//! let req = GenerateRequest::text("The capital of France is").max_new_tokens(8);
//! for event in engine.generate(req).unwrap() {
//!     if let Event::Token { text, .. } = event.unwrap() { print!("{text}"); }
//! }
//! ```

pub mod error;
pub mod fetch;
pub mod generate;
pub mod gguf_tokenizer;
pub mod template;
pub mod tokenizer;

pub use error::EngineError;
pub use generate::{Engine, Event, GenerateRequest, Generation, Prompt, Usage};
pub use hearth_sample::{SamplingParams, StopReason};
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::Tokenizer;
