//! Host-side mixture-of-experts routing for hearth: one typed, tested routing spec for every
//! supported family ([`RouterSpec`]), shared-expert specs ([`SharedExpertSpec`]), load
//! statistics ([`LoadStats`], [`format_table`]) and DeepSeek-V3's auxiliary-loss-free bias
//! balancing ([`BiasBalancer`]).
//!
//! ```
//! use hearth_moe::{LoadStats, RouterSpec};
//!
//! let spec = RouterSpec::mixtral(8, 2)?;
//! let logits: Vec<f32> = (0..3 * 8).map(|i| ((i * 7) % 5) as f32).collect();
//! let routing = spec.route(&logits, 3, None)?;
//! for group in routing.expert_groups() {
//!     // gather `group.tokens`, run expert `group.expert`, scale by `group.weights`, scatter-add
//!     assert_eq!(group.tokens.len(), group.weights.len());
//! }
//! let mut stats = LoadStats::new(8);
//! stats.record(&routing)?;
//! assert_eq!(stats.total(), 6);
//! # Ok::<(), hearth_moe::MoeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balance;
mod error;
pub mod router;
mod shared;
mod stats;

pub use balance::{BiasBalancer, BiasBalancerConfig};
pub use error::MoeError;
pub use router::{ExpertGroup, GroupLimit, RouterSpec, Routing, RoutingBuffers, ScoringFunc, hf_defaults};
pub use shared::{SharedExpertGate, SharedExpertSpec};
pub use stats::{EntropyUnit, LoadStats, format_table};
