//! hearth-models: HuggingFace config parsing, safetensors weight loading and the model
//! definitions, generic over any [`hearth_backend::HearthBackend`].
//!
//! ```no_run
//! use hearth_models::{CausalLm, ForwardOptions};
//! type B = hearth_backend::Cpu;
//! let dev = Default::default();
//! let model = CausalLm::<B>::from_dir(std::path::Path::new("path/to/checkpoint"), &dev).unwrap();
//! let mut cache = model.new_cache(1, None);
//! let out = model.forward(&[vec![1, 2, 3]], &mut cache, ForwardOptions::default()).unwrap();
//! assert_eq!(out.logits.dims()[2], model.config().vocab_size);
//! ```

pub mod attention;
pub mod config;
pub mod convert;
pub mod decoder;
pub mod error;
pub mod gguf;
pub mod gguf_vocab;
pub mod host;
pub mod layers;
pub mod mla;
pub mod moe;
pub mod synthetic;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use decoder::{CausalLm, ForwardOptions, ForwardOutput, LoadOptions};
pub use error::ModelError;
pub use host::{DecodeSession, Decoder, HostModel, HostSession};
pub use weights::{PackedTensor, TensorSource, WeightStore};
