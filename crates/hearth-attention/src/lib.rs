//! hearth-attention: rotary embeddings, causal / grouped-query / sliding-window attention and
//! KV caches, usable on their own in any burn model.
//!
//! ```
//! use hearth_attention::{BatchPositions, ContiguousKvCache, KvCache};
//! type B = hearth_backend::Cpu;
//! let cache = ContiguousKvCache::<B>::new(2, 1, 64, Default::default());
//! let pos = cache.positions(&[3]).unwrap();
//! assert_eq!(pos.positions(), vec![vec![0, 1, 2]]);
//! ```

pub mod cache;
pub mod rope;

pub use cache::{BatchPositions, CacheError, ContiguousKvCache, KvCache, QKV};
pub use rope::{RopeConfig, RopeLayout, RopeScaling, RopeTable, apply_rope};
