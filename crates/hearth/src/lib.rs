//! hearth: LLM inference in Rust on burn. This facade re-exports the workspace's crates so an
//! application can depend on one crate; each is also usable on its own.
//!
//! ```
//! let params = hearth::sample::SamplingParams { temperature: 0.7, top_p: Some(0.9), ..Default::default() };
//! assert!(params.validate().is_ok());
//! ```

pub use hearth_attention as attention;
pub use hearth_backend as backend;
pub use hearth_engine as engine;
pub use hearth_models as models;
pub use hearth_moe as moe;
pub use hearth_quant as quant;
pub use hearth_sample as sample;
