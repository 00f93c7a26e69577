//! KV caches and the per-row bookkeeping of batched, ragged sequences.
//!
//! Model code talks to a cache only through [`KvCache`]: it asks for the [`BatchPositions`] of
//! the next chunk, hands each layer's new keys/values to [`KvCache::update`] and gets back
//! everything that chunk may attend to, then calls [`KvCache::advance`]. Rows of a batch may sit
//! at different positions (continuous batching); a paged cache implements the same trait.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use hearth_backend::{HearthBackend, RopeTables};

/// Errors of cache bookkeeping.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// A row would grow past the cache's capacity (the model's context).
    #[error("sequence {row} needs {needed} positions but the KV cache holds {capacity}")]
    Full {
        /// Batch row.
        row: usize,
        /// Positions needed after this chunk.
        needed: usize,
        /// Capacity per row.
        capacity: usize,
    },
    /// The chunk has a different number of rows than the cache.
    #[error("batch has {got} rows but the KV cache was built for {expected}")]
    BatchMismatch {
        /// Rows in the cache.
        expected: usize,
        /// Rows in the chunk.
        got: usize,
    },
    /// Layer index past the cache's layers.
    #[error("layer {layer} out of range ({layers} layers)")]
    Layer {
        /// Requested layer.
        layer: usize,
        /// Layers in the cache.
        layers: usize,
    },
}

/// Where each row of a batch chunk sits: `past[b]` tokens already cached, `new[b]` tokens in this
/// chunk (rows are right-padded to the longest `new`).
///
/// ```
/// use hearth_attention::BatchPositions;
/// let p = BatchPositions { past: vec![0, 5], new: vec![2, 1] };
/// assert_eq!(p.positions(), vec![vec![0, 1], vec![5, 5]]);
/// assert_eq!(p.key_len(), 6);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchPositions {
    /// Tokens already in the cache, per row.
    pub past: Vec<usize>,
    /// Tokens in this chunk, per row.
    pub new: Vec<usize>,
}

impl BatchPositions {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.past.len()
    }

    /// Padded chunk length (the longest row).
    pub fn chunk_len(&self) -> usize {
        self.new.iter().copied().max().unwrap_or(0)
    }

    /// Keys visible to the chunk: the longest `past + new`.
    pub fn key_len(&self) -> usize {
        self.past.iter().zip(&self.new).map(|(p, n)| p + n).max().unwrap_or(0)
    }

    /// Absolute position of every (row, chunk slot); padding slots repeat the row's last position.
    pub fn positions(&self) -> Vec<Vec<usize>> {
        let t = self.chunk_len();
        self.past
            .iter()
            .zip(&self.new)
            .map(|(&p, &n)| (0..t).map(|i| p + i.min(n.saturating_sub(1))).collect())
            .collect()
    }

    /// Additive attention mask `[B, T, S]` (0 = attend, −inf = masked) for causal attention with
    /// an optional sliding window (a query at `q` sees keys `k` with `k ≤ q` and `q − k < window`).
    /// Padding slots attend to their row's first key so that softmax stays finite.
    pub fn mask_values(&self, window: Option<usize>) -> Vec<f32> {
        let (t, s) = (self.chunk_len(), self.key_len());
        let mut m = vec![f32::NEG_INFINITY; self.rows() * t * s];
        for (b, (&p, &n)) in self.past.iter().zip(&self.new).enumerate() {
            for i in 0..t {
                let row = &mut m[(b * t + i) * s..(b * t + i + 1) * s];
                if i >= n {
                    row[0] = 0.0;
                    continue;
                }
                let q = p + i;
                let lo = window.map_or(0, |w| (q + 1).saturating_sub(w));
                for v in &mut row[lo..=q] {
                    *v = 0.0;
                }
            }
        }
        m
    }

    /// [`Self::mask_values`] as a device tensor.
    pub fn mask<B: Backend>(&self, window: Option<usize>, device: &B::Device) -> Tensor<B, 3> {
        let shape = [self.rows(), self.chunk_len(), self.key_len()];
        Tensor::from_data(TensorData::new(self.mask_values(window), shape), device)
    }

    /// Whether every row has the same `past` and `new` (one slice write serves all rows).
    pub fn is_uniform(&self) -> bool {
        self.past.windows(2).all(|w| w[0] == w[1]) && self.new.windows(2).all(|w| w[0] == w[1])
    }
}

/// A chunk's rotated queries, and all keys and values it attends to (see
/// [`KvCache::update_rope`]).
pub type QKV<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// A key/value cache for all layers of one batch of sequences.
///
/// "Keys" and "values" are opaque streams: a multi-head layer stores `[B, Hkv, T, D]` K and V, an
/// MLA layer stores its compressed latent and its RoPE key.
pub trait KvCache<B: Backend> {
    /// Number of rows (sequences).
    fn rows(&self) -> usize;
    /// Tokens already stored for `row`.
    fn seq_len(&self, row: usize) -> usize;
    /// Positions each row can hold.
    fn capacity(&self) -> usize;
    /// Positions of a chunk of `new[b]` tokens per row, after checking capacity.
    fn positions(&self, new: &[usize]) -> Result<BatchPositions, CacheError> {
        if new.len() != self.rows() {
            return Err(CacheError::BatchMismatch {
                expected: self.rows(),
                got: new.len(),
            });
        }
        let past: Vec<usize> = (0..self.rows()).map(|r| self.seq_len(r)).collect();
        for (row, (p, n)) in past.iter().zip(new).enumerate() {
            if p + n > self.capacity() {
                return Err(CacheError::Full {
                    row,
                    needed: p + n,
                    capacity: self.capacity(),
                });
            }
        }
        Ok(BatchPositions {
            past,
            new: new.to_vec(),
        })
    }
    /// Stores the chunk's `k: [B, H, T, Dk]`, `v: [B, H, T, Dv]` for `layer` and returns all
    /// keys and values the chunk may attend to, `[B, H, pos.key_len(), D]`.
    fn update(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        pos: &BatchPositions,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), CacheError>;
    /// Stores the chunk's `kv: [B, H, T, D]` for `layer` in a cache that keeps one tensor per
    /// layer and returns all entries the chunk may attend to, `[B, H, pos.key_len(), D]`: for
    /// attention whose values are part of its keys (MLA attends over `[latent | RoPE key]` rows
    /// with the latent as values, a view of the same rows), so nothing is stored twice and
    /// nothing is concatenated per step. A layer is used either this way or with
    /// [`Self::update`], not both.
    fn update_joint(
        &mut self,
        layer: usize,
        kv: Tensor<B, 4>,
        pos: &BatchPositions,
    ) -> Result<Tensor<B, 4>, CacheError>;
    /// [`Self::update`] with RoPE applied to the chunk's `q` and `k` first (the stored keys
    /// are the rotated ones): `(rotated q, all keys, all values)`. The default rotates with
    /// [`HearthBackend::rope2`] and stores with [`Self::update`]; [`ContiguousKvCache`] does
    /// both in one [`HearthBackend::rope_write`] where it can.
    fn update_rope(
        &mut self,
        layer: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rope: RopeTables<'_, B>,
        pos: &BatchPositions,
    ) -> Result<QKV<B>, CacheError>
    where
        B: HearthBackend,
    {
        rope_then_update(self, layer, q, k, v, rope, pos)
    }
    /// Marks the chunk as stored (call once per forward, after every layer's `update`).
    fn advance(&mut self, pos: &BatchPositions);
    /// Forgets a row's tokens so the row can serve a new sequence.
    fn reset_row(&mut self, row: usize);
}

/// [`KvCache::update_rope`]'s general path: RoPE with [`HearthBackend::rope2`], then
/// [`KvCache::update`].
fn rope_then_update<B: HearthBackend, C: KvCache<B> + ?Sized>(
    cache: &mut C,
    layer: usize,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    rope: RopeTables<'_, B>,
    pos: &BatchPositions,
) -> Result<QKV<B>, CacheError> {
    let (q, k) = B::rope2(q, k, rope.cos, rope.sin, rope.rope_dim, rope.interleaved);
    let (k, v) = cache.update(layer, k, v, pos)?;
    Ok((q, k, v))
}

/// A preallocated `[B, H, capacity, D]` buffer per layer, written in place.
pub struct ContiguousKvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    lens: Vec<usize>,
    capacity: usize,
    device: B::Device,
}

impl<B: Backend> ContiguousKvCache<B> {
    /// A cache for `layers` layers, `rows` sequences of up to `capacity` tokens. Buffers are
    /// allocated on the first write of each layer, with that layer's head count and widths.
    pub fn new(layers: usize, rows: usize, capacity: usize, device: B::Device) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            lens: vec![0; rows],
            capacity,
            device,
        }
    }

    /// Bytes held by the allocated buffers (f32).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.shape().num_elements() + v.shape().num_elements()) * 4)
            .sum()
    }
}

impl<B: hearth_backend::HearthBackend> KvCache<B> for ContiguousKvCache<B> {
    fn rows(&self) -> usize {
        self.lens.len()
    }
    fn seq_len(&self, row: usize) -> usize {
        self.lens[row]
    }
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn update(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        pos: &BatchPositions,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), CacheError> {
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or(CacheError::Layer { layer, layers })?;
        let [b, h, t, dk] = k.dims();
        let dv = v.dims()[3];
        if b != self.lens.len() {
            return Err(CacheError::BatchMismatch {
                expected: self.lens.len(),
                got: b,
            });
        }
        let (mut kc, mut vc) = slot.take().unwrap_or_else(|| {
            (
                Tensor::zeros([b, h, self.capacity, dk], &self.device),
                Tensor::zeros([b, h, self.capacity, dv], &self.device),
            )
        });
        if pos.is_uniform() && pos.new.first() == Some(&t) {
            let p = pos.past[0];
            (kc, vc) = B::write_at2(kc, k, vc, v, [0, 0, p, 0]);
        } else {
            for row in 0..b {
                let (p, n) = (pos.past[row], pos.new[row]);
                if n == 0 {
                    continue;
                }
                let kr = k.clone().slice([row..row + 1, 0..h, 0..n, 0..dk]);
                let vr = v.clone().slice([row..row + 1, 0..h, 0..n, 0..dv]);
                kc = B::write_at(kc, kr, [row, 0, p, 0]);
                vc = B::write_at(vc, vr, [row, 0, p, 0]);
            }
        }
        let s = pos.key_len();
        let out = (B::prefix(kc.clone(), 2, s), B::prefix(vc.clone(), 2, s));
        *slot = Some((kc, vc));
        Ok(out)
    }

    fn update_joint(
        &mut self,
        layer: usize,
        kv: Tensor<B, 4>,
        pos: &BatchPositions,
    ) -> Result<Tensor<B, 4>, CacheError> {
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or(CacheError::Layer { layer, layers })?;
        let [b, h, t, d] = kv.dims();
        if b != self.lens.len() {
            return Err(CacheError::BatchMismatch {
                expected: self.lens.len(),
                got: b,
            });
        }
        // the second tensor of the slot is a one-element placeholder: this layer's values are
        // views of its keys
        let (mut kc, placeholder) = slot.take().unwrap_or_else(|| {
            (
                Tensor::zeros([b, h, self.capacity, d], &self.device),
                Tensor::zeros([1, 1, 1, 1], &self.device),
            )
        });
        if pos.is_uniform() && pos.new.first() == Some(&t) {
            kc = B::write_at(kc, kv, [0, 0, pos.past[0], 0]);
        } else {
            for row in 0..b {
                let (p, n) = (pos.past[row], pos.new[row]);
                if n > 0 {
                    kc = B::write_at(kc, kv.clone().slice([row..row + 1, 0..h, 0..n, 0..d]), [row, 0, p, 0]);
                }
            }
        }
        let out = B::prefix(kc.clone(), 2, pos.key_len());
        *slot = Some((kc, placeholder));
        Ok(out)
    }

    fn update_rope(
        &mut self,
        layer: usize,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        rope: RopeTables<'_, B>,
        pos: &BatchPositions,
    ) -> Result<QKV<B>, CacheError> {
        let [b, _, t, _] = k.dims();
        let uniform = pos.is_uniform() && pos.new.first() == Some(&t) && b == self.lens.len();
        let stored = if uniform {
            self.layers.get_mut(layer).and_then(Option::take)
        } else {
            None
        };
        let Some((kc, vc)) = stored else {
            // the general path (first write of the layer, ragged rows, errors)
            return rope_then_update(self, layer, q, k, v, rope, pos);
        };
        let (q, kc, vc) = B::rope_write(q, k, v, rope, kc, vc, [0, 0, pos.past[0], 0]);
        let s = pos.key_len();
        let out = (q, B::prefix(kc.clone(), 2, s), B::prefix(vc.clone(), 2, s));
        self.layers[layer] = Some((kc, vc));
        Ok(out)
    }

    fn advance(&mut self, pos: &BatchPositions) {
        for (len, n) in self.lens.iter_mut().zip(&pos.new) {
            *len += n;
        }
    }

    fn reset_row(&mut self, row: usize) {
        self.lens[row] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_windowed_and_padded() {
        let p = BatchPositions {
            past: vec![0, 2],
            new: vec![3, 1],
        };
        let m = p.mask_values(Some(2));
        let (t, s) = (3, 3);
        let at = |b: usize, i: usize, j: usize| m[(b * t + i) * s + j] == 0.0;
        // row 0: query 2 sees keys 1,2 (window 2), not 0
        assert!(!at(0, 2, 0) && at(0, 2, 1) && at(0, 2, 2));
        assert!(at(0, 0, 0) && !at(0, 0, 1));
        // row 1: query at position 2 sees keys 1,2
        assert!(!at(1, 0, 0) && at(1, 0, 1) && at(1, 0, 2));
        // padding slots attend to key 0 only
        assert!(at(1, 1, 0) && !at(1, 1, 1));
    }

    #[test]
    fn capacity_is_checked() {
        type B = hearth_backend::Cpu;
        let c = ContiguousKvCache::<B>::new(1, 2, 4, Default::default());
        assert_eq!(
            c.positions(&[5, 1]),
            Err(CacheError::Full {
                row: 0,
                needed: 5,
                capacity: 4
            })
        );
        assert_eq!(
            c.positions(&[1]),
            Err(CacheError::BatchMismatch { expected: 2, got: 1 })
        );
    }

    #[test]
    fn ragged_update_matches_rowwise_writes() {
        type B = hearth_backend::Cpu;
        let dev = Default::default();
        let mut c = ContiguousKvCache::<B>::new(1, 2, 8, dev);
        let k0 = Tensor::<B, 4>::from_data(
            TensorData::new((0..2 * 3 * 2).map(|x| x as f32).collect::<Vec<_>>(), [2, 1, 3, 2]),
            &dev,
        );
        let pos = c.positions(&[3, 2]).unwrap();
        let (k, _) = c.update(0, k0.clone(), k0.clone(), &pos).unwrap();
        c.advance(&pos);
        assert_eq!(k.dims(), [2, 1, 3, 2]);
        let pos = c.positions(&[1, 1]).unwrap();
        assert_eq!(pos.past, vec![3, 2]);
        let k1 = Tensor::<B, 4>::from_data(TensorData::new(vec![100.0f32, 101.0, 200.0, 201.0], [2, 1, 1, 2]), &dev);
        let (k, _) = c.update(0, k1.clone(), k1, &pos).unwrap();
        let v = k.into_data().to_vec::<f32>().unwrap();
        // row 0: keys 0..3 from the first chunk, then 100,101 at position 3
        assert_eq!(&v[0..8], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 101.0]);
        // row 1: first 2 keys of its chunk, then 200,201 at position 2
        assert_eq!(&v[8..14], &[6.0, 7.0, 8.0, 9.0, 200.0, 201.0]);
    }

    #[test]
    fn update_rope_matches_rope_then_update() {
        type B = hearth_backend::Cpu;
        let dev = Default::default();
        let vals = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect::<Vec<_>>();
        let t4 = |v: Vec<f32>, s: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(v, s), &dev);
        let (mut fused, mut plain) = (
            ContiguousKvCache::<B>::new(2, 1, 8, dev),
            ContiguousKvCache::<B>::new(2, 1, 8, dev),
        );
        // a 3-token chunk (the first write: the general path), then two single tokens
        for (step, t) in [3usize, 1, 1].into_iter().enumerate() {
            let pos = fused.positions(&[t]).unwrap();
            let seed = step as f32 * 10.0;
            let (q, k, v) = (
                t4(vals(4 * t * 4, seed), [1, 4, t, 4]),
                t4(vals(2 * t * 4, seed + 1.0), [1, 2, t, 4]),
                t4(vals(2 * t * 4, seed + 2.0), [1, 2, t, 4]),
            );
            let (cos, sin) = (
                t4(vals(t * 4, seed + 3.0), [1, 1, t, 4]),
                t4(vals(t * 4, seed + 4.0), [1, 1, t, 4]),
            );
            let rope = RopeTables {
                cos: &cos,
                sin: &sin,
                rope_dim: 4,
                interleaved: step == 1,
            };
            for layer in 0..2 {
                let (fq, fk, fv) = fused
                    .update_rope(layer, q.clone(), k.clone(), v.clone(), rope, &pos)
                    .unwrap();
                let (pq, pk) = B::rope2(q.clone(), k.clone(), &cos, &sin, 4, step == 1);
                let (pk, pv) = plain.update(layer, pk, v.clone(), &pos).unwrap();
                let host = |x: Tensor<B, 4>| x.into_data().to_vec::<f32>().unwrap();
                assert_eq!(host(fq), host(pq), "q, step {step}");
                assert_eq!(host(fk), host(pk), "keys, step {step}");
                assert_eq!(host(fv), host(pv), "values, step {step}");
            }
            fused.advance(&pos);
            plain.advance(&pos);
        }
        // a layer that does not exist is an error, not a panic
        let pos = fused.positions(&[1]).unwrap();
        let x = t4(vec![0.0; 4], [1, 1, 1, 4]);
        let c = t4(vec![1.0; 4], [1, 1, 1, 4]);
        let rope = RopeTables {
            cos: &c,
            sin: &c,
            rope_dim: 4,
            interleaved: false,
        };
        assert!(matches!(
            fused.update_rope(5, x.clone(), x.clone(), x, rope, &pos),
            Err(CacheError::Layer { layer: 5, layers: 2 })
        ));
    }

    #[test]
    fn joint_update_stores_one_tensor_per_layer() {
        type B = hearth_backend::Cpu;
        let dev = Default::default();
        let mut c = ContiguousKvCache::<B>::new(1, 2, 8, dev);
        let t4 = |v: Vec<f32>, s: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(v, s), &dev);
        // ragged first chunk: row 0 has 2 tokens, row 1 one (its second slot is padding)
        let pos = c.positions(&[2, 1]).unwrap();
        let kv = t4((0..2 * 2 * 3).map(|x| x as f32).collect(), [2, 1, 2, 3]);
        let all = c.update_joint(0, kv, &pos).unwrap();
        assert_eq!(all.dims(), [2, 1, 2, 3]);
        c.advance(&pos);
        // a uniform step: one token per row
        let pos = c.positions(&[1, 1]).unwrap();
        let kv = t4(vec![50.0, 51.0, 52.0, 60.0, 61.0, 62.0], [2, 1, 1, 3]);
        let all = c.update_joint(0, kv, &pos).unwrap();
        assert_eq!(all.dims(), [2, 1, 3, 3]);
        let v = all.into_data().to_vec::<f32>().unwrap();
        assert_eq!(&v[..9], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 50.0, 51.0, 52.0]);
        // row 1: its one token, then the step's at position 1 (slot 2 is not written yet)
        assert_eq!(&v[9..15], &[6.0, 7.0, 8.0, 60.0, 61.0, 62.0]);
        // the placeholder costs one element, not a second cache
        assert_eq!(c.allocated_bytes(), (2 * 8 * 3 + 1) * 4);
        assert!(matches!(
            c.update_joint(3, t4(vec![0.0; 6], [2, 1, 1, 3]), &pos),
            Err(CacheError::Layer { layer: 3, layers: 1 })
        ));
        assert!(matches!(
            c.update_joint(0, t4(vec![0.0; 3], [1, 1, 1, 3]), &pos),
            Err(CacheError::BatchMismatch { expected: 2, got: 1 })
        ));
    }
}
