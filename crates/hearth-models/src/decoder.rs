//! The decoder-only transformer shared by every family hearth runs (Llama, Mistral, Qwen2/3,
//! Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3). Differences between families are data in
//! [`ModelConfig`]: biases, q/k norms, sliding windows, MoE layers, MLA attention.
//!
//! ```text
//! h₀ = Embed(tokens)
//! hᵢ₊₁ = hᵢ + Attn(RMSNorm(hᵢ)) ;  hᵢ₊₁ += FFN(RMSNorm(hᵢ₊₁))      (FFN: MLP or MoE)
//! logits = RMSNorm(h_L) · W_outᵀ
//! ```

use crate::attention::{AttnContext, MultiHeadAttention};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{BlockInput, HostWeight, Linear, LinearWeight, Loader, Mlp, Residual, RmsNorm};
use crate::mla::MlaAttention;
use crate::moe::MoeBlock;
use crate::weights::{TensorSource, WeightStore};
use burn::tensor::{Int, Tensor, TensorData};
use hearth_attention::{ContiguousKvCache, KvCache};
use hearth_backend::{HearthBackend, NormSums, PackedFormat, profile};
use hearth_moe::LoadStats;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub(crate) enum Attention<B: HearthBackend> {
    Mha(MultiHeadAttention<B>),
    Mla(MlaAttention<B>),
}

pub(crate) enum Ffn<B: HearthBackend> {
    Dense(Mlp<B>),
    Moe(Box<MoeBlock<B>>),
}

pub(crate) struct DecoderLayer<B: HearthBackend> {
    pub(crate) input_norm: RmsNorm<B>,
    pub(crate) attn: Attention<B>,
    pub(crate) post_norm: RmsNorm<B>,
    pub(crate) ffn: Ffn<B>,
    pub(crate) window: Option<usize>,
}

/// The token embedding: a device tensor, or (host backends) plain rows shared with the host
/// forward ([`crate::host::HostModel`]) and gathered on the host.
pub(crate) enum Embedding<B: HearthBackend> {
    Device(Tensor<B, 2>),
    Host(Arc<HostWeight>),
}

/// How to load weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Quantize f32/bf16/f16 matrices to this kernel format while loading (the embedding
    /// table stays as stored, norms f32). Every format on the CPU backend; on GPU backends
    /// Q8_0, Q4_0, Q4_K and Q6_K, kept packed on the device (others are a
    /// [`ModelError::Config`] error). Matrices whose rows are not whole blocks stay f32.
    pub quant: Option<hearth_quant::kernels::WeightFormat>,
    /// Dequantize packed source tensors (GGUF blocks) to f32 instead of keeping them packed:
    /// the exact reference path, at 4–8× the memory.
    pub unpacked: bool,
}

/// What a forward pass should return besides logits.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Return the embeddings and every layer's output (`num_layers + 1` tensors `[B, T, hidden]`).
    pub hidden_states: bool,
    /// Compute logits only at each row's last real token (`[B, 1, vocab]`): what generation needs.
    pub last_only: bool,
}

/// Result of [`CausalLm::forward`].
pub struct ForwardOutput<B: HearthBackend> {
    /// `[B, T, vocab]`, or `[B, 1, vocab]` with `last_only`.
    pub logits: Tensor<B, 3>,
    /// Embeddings and each layer's output, if requested (the last one after the final norm,
    /// as transformers reports it).
    pub hidden_states: Vec<Tensor<B, 3>>,
}

/// A decoder-only causal language model.
pub struct CausalLm<B: HearthBackend> {
    pub(crate) cfg: ModelConfig,
    pub(crate) embed: Embedding<B>,
    pub(crate) layers: Vec<DecoderLayer<B>>,
    pub(crate) norm: RmsNorm<B>,
    pub(crate) lm_head: Linear<B>,
    device: B::Device,
}

impl<B: HearthBackend> CausalLm<B> {
    /// Loads config and weights from a HF checkpoint directory.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let cfg = ModelConfig::from_dir(dir)?;
        let store = WeightStore::open(dir)?;
        Self::load(cfg, &store, device)
    }

    /// Builds the model from a parsed config and an open checkpoint.
    pub fn load(cfg: ModelConfig, store: &dyn TensorSource, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_with(cfg, store, device, &LoadOptions::default())
    }

    /// [`Self::load`] with options (in-situ quantization, the unpacked reference path).
    ///
    /// Errors: those of loading, and [`ModelError::Config`] when `opts.quant` asks a
    /// non-host backend for a format without a device kernel.
    pub fn load_with(
        cfg: ModelConfig,
        store: &dyn TensorSource,
        device: &B::Device,
        opts: &LoadOptions,
    ) -> Result<Self, ModelError> {
        if let Some(q) = opts.quant
            && q != hearth_quant::kernels::WeightFormat::F32
            && !B::HOST_KERNELS
            && crate::layers::device_format(q).is_none()
        {
            return Err(ModelError::Config {
                file: "--quant".into(),
                field: "quant".into(),
                reason: format!(
                    "{q:?} has no device kernel: this backend quantizes weights to q8_0, q4_0, q4_k or q6_k \
                     (or computes in f32 without --quant); the CPU backend runs every format"
                ),
            });
        }
        let l = Loader::<B> {
            store,
            device: device.clone(),
            quant: opts.quant,
            unpacked: opts.unpacked,
        };
        let (hid, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed_name = "model.embed_tokens.weight";
        let tied_head = cfg.tie_word_embeddings && !store.contains("lm_head.weight");
        let lm_head = if tied_head {
            l.linear("model.embed_tokens", hid, cfg.vocab_size, false)?
        } else {
            l.linear("lm_head", hid, cfg.vocab_size, false)?
        };
        let embed = if B::HOST_KERNELS {
            // kept as stored (GGUF blocks, mapped bf16/f16/f32 rows): no f32 copy of the table
            let stored = l.host_weight_as(embed_name, cfg.vocab_size, hid, None)?;
            match &lm_head.weight {
                // a tied head holding the same blocks in another layout serves the lookups too
                // (one copy of the table)
                LinearWeight::Host(h) if tied_head && !opts.unpacked && h.format.base() == stored.format => {
                    drop(stored);
                    Embedding::Host(h.clone())
                }
                _ if !opts.unpacked => Embedding::Host(Arc::new(stored.into_preferred_layout()?)),
                _ => Embedding::Host(Arc::new(stored)),
            }
        } else {
            Embedding::Device(l.tensor(embed_name, [cfg.vocab_size, hid])?)
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let attn = if cfg.mla.is_some() {
                Attention::Mla(MlaAttention::load(&l, &cfg, &format!("{p}.self_attn"))?)
            } else {
                Attention::Mha(MultiHeadAttention::load(&l, &cfg, &format!("{p}.self_attn"))?)
            };
            let ffn = if cfg.is_sparse(i) {
                Ffn::Moe(Box::new(MoeBlock::load(&l, &cfg, &p)?))
            } else {
                let names = ["gate_proj", "up_proj", "down_proj"];
                Ffn::Dense(l.mlp(&format!("{p}.mlp"), hid, cfg.intermediate_size, cfg.mlp_bias, names)?)
            };
            layers.push(DecoderLayer {
                input_norm: l.rms_norm(&format!("{p}.input_layernorm.weight"), hid, eps)?,
                attn,
                post_norm: l.rms_norm(&format!("{p}.post_attention_layernorm.weight"), hid, eps)?,
                ffn,
                window: cfg.sliding_window[i],
            });
        }
        Ok(Self {
            norm: l.rms_norm("model.norm.weight", hid, eps)?,
            cfg,
            embed,
            layers,
            lm_head,
            device: device.clone(),
        })
    }

    /// Bytes of weights one decode step reads: every dense matrix, the top-k routed experts of
    /// each MoE layer (assuming average expert size), one embedding row. The bandwidth floor of
    /// decode is this ÷ memory bandwidth.
    pub fn decode_weight_bytes(&self) -> usize {
        self.lm_head.weight_bytes() + self.cfg.hidden_size * 4 + self.layer_weight_bytes(true)
    }

    /// Projection and expert bytes of all layers (`decode`: only the top-k routed experts).
    fn layer_weight_bytes(&self, decode: bool) -> usize {
        let attn = |l: &DecoderLayer<B>| match &l.attn {
            Attention::Mha(m) => m.weight_bytes(),
            Attention::Mla(m) => m.weight_bytes(),
        };
        let ffn = |l: &DecoderLayer<B>| match &l.ffn {
            Ffn::Dense(m) => m.weight_bytes(),
            Ffn::Moe(m) if decode => m.decode_weight_bytes(),
            Ffn::Moe(m) => m.weight_bytes(),
        };
        self.layers.iter().map(|l| attn(l) + ffn(l)).sum()
    }

    /// Bytes of every weight the model holds (packed where packed): embedding table, all
    /// projections and experts, norms. A tied LM head that computes on the embedding table's
    /// own bytes (GGUF, mapped checkpoints) is counted once. With [`Self::decode_weight_bytes`]
    /// this is the yardstick for memory use: peak RSS ≈ this + the KV cache.
    ///
    /// ```no_run
    /// # let model = hearth_models::CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// assert!(model.weight_bytes() >= model.decode_weight_bytes());
    /// ```
    pub fn weight_bytes(&self) -> usize {
        let hid = self.cfg.hidden_size;
        let embed = match &self.embed {
            Embedding::Device(t) => t.shape().num_elements() * t.dtype().size(),
            Embedding::Host(e) => e.bytes.len(),
        };
        let head_shares_embedding = match (&self.embed, &self.lm_head.weight) {
            (Embedding::Host(e), crate::layers::LinearWeight::Host(h)) => e.bytes.as_ptr() == h.bytes.as_ptr(),
            _ => false,
        };
        let mut total = embed + (2 * self.layers.len() + 1) * hid * 4;
        if !head_shares_embedding {
            total += self.lm_head.weight_bytes();
        }
        total + self.layer_weight_bytes(false)
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// A fresh contiguous KV cache for `rows` sequences of up to `capacity` tokens
    /// (`None` = the model's `max_position_embeddings`).
    pub fn new_cache(&self, rows: usize, capacity: Option<usize>) -> ContiguousKvCache<B> {
        let cap = capacity.unwrap_or(self.cfg.max_position_embeddings);
        ContiguousKvCache::new(self.cfg.num_layers, rows, cap, self.device.clone())
    }

    /// Per-layer expert load statistics (`None` for dense layers).
    pub fn moe_stats(&self) -> Vec<Option<LoadStats>> {
        self.layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Moe(m) => Some(m.stats()),
                Ffn::Dense(_) => None,
            })
            .collect()
    }

    /// Clears every layer's expert load statistics.
    pub fn reset_moe_stats(&self) {
        for l in &self.layers {
            if let Ffn::Moe(m) = &l.ffn {
                m.reset_stats();
            }
        }
    }

    /// Whether every product that takes or writes the carried norm sums (each MHA layer's
    /// q/k/v and o, each dense MLP's gate/up and down) has a kernel that does: dense device
    /// weights or F32/Q8_0/Q4_0 device blocks. K-quant kernels do not, and their products
    /// would go through the unfused burn-op fallbacks, so such models normalise on their own.
    fn sums_kernels(&self) -> bool {
        let takes = |l: &Linear<B>| match &l.weight {
            LinearWeight::Device(_) => true,
            LinearWeight::Packed(p) => {
                matches!(p.format(), PackedFormat::F32 | PackedFormat::Q8_0 | PackedFormat::Q4_0)
            }
            LinearWeight::Host(_) => false,
        };
        self.layers.iter().all(|l| {
            let attn = match &l.attn {
                Attention::Mha(a) => [&a.q, &a.k, &a.v, &a.o].into_iter().all(takes),
                Attention::Mla(_) => true,
            };
            let ffn = match &l.ffn {
                Ffn::Dense(m) => [&m.gate, &m.up, &m.down].into_iter().all(takes),
                Ffn::Moe(_) => true,
            };
            attn && ffn
        })
    }

    /// Runs one chunk: `tokens[b]` are the next tokens of cache row `b` (rows may differ in
    /// length and in how much they already hold). Advances the cache.
    pub fn forward<C: KvCache<B>>(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut C,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput<B>, ModelError> {
        if tokens.is_empty() || tokens.iter().any(Vec::is_empty) {
            return Err(ModelError::EmptyInput(
                "every batch row needs at least one token".into(),
            ));
        }
        for row in tokens {
            if let Some((position, &id)) = row
                .iter()
                .enumerate()
                .find(|(_, id)| **id as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    position,
                    vocab: self.cfg.vocab_size,
                });
            }
        }
        let new: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let pos = cache.positions(&new)?;
        let (b, t, hid) = (tokens.len(), pos.chunk_len(), self.cfg.hidden_size);
        let mut ids = Vec::with_capacity(b * t);
        let mut valid = Vec::with_capacity(b * t);
        for row in tokens {
            for i in 0..t {
                ids.push(*row.get(i).unwrap_or(&row[row.len() - 1]) as i64);
                valid.push(i < row.len());
            }
        }
        let x = match &self.embed {
            Embedding::Device(e) => profile::scope::<B, _>(&self.device, "embed", || {
                let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [b * t]), &self.device);
                e.clone().select(0, ids).reshape([b, t, hid])
            }),
            Embedding::Host(e) => {
                let mut rows = vec![0.0f32; b * t * hid];
                for (r, id) in rows.chunks_exact_mut(hid).zip(ids) {
                    e.row_f32(id as usize, r);
                }
                Tensor::from_data(TensorData::new(rows, [b, t, hid]), &self.device)
            }
        };

        self.run_layers(x, pos, &new, valid, cache, opts)
    }

    /// One decode step whose tokens are already on the device: `ids[r]` is the next token of
    /// cache row `r` (e.g. the previous step's argmax, never read back), so that a caller can
    /// enqueue this step before it looks at the last one's tokens (see
    /// [`HearthBackend::read_ints_later`]). The ids must be below the vocabulary size (an
    /// argmax over the logits is); they are not checked on the host.
    ///
    /// A model whose embeddings stay on the host reads the ids back first (and checks them).
    ///
    /// Errors: those of [`Self::forward`]; [`ModelError::EmptyInput`] for an empty `ids`.
    pub fn forward_device_ids<C: KvCache<B>>(
        &self,
        ids: Tensor<B, 1, Int>,
        cache: &mut C,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput<B>, ModelError> {
        let b = ids.dims()[0];
        if b == 0 {
            return Err(ModelError::EmptyInput("every batch row needs a token".into()));
        }
        let new = vec![1; b];
        let pos = cache.positions(&new)?;
        let hid = self.cfg.hidden_size;
        let x = match &self.embed {
            Embedding::Device(e) => {
                profile::scope::<B, _>(&self.device, "embed", || e.clone().select(0, ids).reshape([b, 1, hid]))
            }
            Embedding::Host(e) => {
                // host embeddings need the ids here: read them (this waits for the device)
                let ids = ids
                    .into_data()
                    .convert::<i64>()
                    .into_vec::<i64>()
                    .map_err(|err| ModelError::Backend {
                        tensor: "token ids".into(),
                        source: hearth_backend::BackendError::Read(format!("{err:?}")),
                    })?;
                let mut rows = vec![0.0f32; b * hid];
                for (position, (r, &id)) in rows.chunks_exact_mut(hid).zip(&ids).enumerate() {
                    if id < 0 || id as usize >= self.cfg.vocab_size {
                        return Err(ModelError::TokenOutOfRange {
                            id: id as u32,
                            position,
                            vocab: self.cfg.vocab_size,
                        });
                    }
                    e.row_f32(id as usize, r);
                }
                Tensor::from_data(TensorData::new(rows, [b, 1, hid]), &self.device)
            }
        };
        self.run_layers(x, pos, &new, vec![true; b], cache, opts)
    }

    /// The layers, the final norm and the LM head over the embedded chunk `x: [b, t, hidden]`
    /// at `pos` (`new[r]` new tokens in row `r`, `valid` per position).
    fn run_layers<C: KvCache<B>>(
        &self,
        mut x: Tensor<B, 3>,
        pos: hearth_attention::BatchPositions,
        new: &[usize],
        valid: Vec<bool>,
        cache: &mut C,
        opts: ForwardOptions,
    ) -> Result<ForwardOutput<B>, ModelError> {
        let [b, t, hid] = x.dims();
        let table = self.cfg.rope.table(pos.key_len()).map_err(|e| ModelError::Config {
            file: "config.json".into(),
            field: "rope_scaling".into(),
            reason: e.to_string(),
        })?;
        let (cos, sin) = profile::scope::<B, _>(&self.device, "rope_table", || {
            table.tensors::<B>(&pos.positions(), &self.device)
        });
        let mut masks: HashMap<Option<usize>, Tensor<B, 3>> = HashMap::new();
        let mut hidden = Vec::new();
        if opts.hidden_states {
            hidden.push(x.clone());
        }
        let last = self.layers.len().saturating_sub(1);
        let dev = &self.device;
        // Where the backend carries norm sums (`HearthBackend::norm_sums`: the cubecl backends
        // at decode), each block's last product writes `h ⊙ g` and `Σh²` for the next block's
        // norm, applied by that block's first products (attention's q/k/v, the dense MLP's
        // gate/up): no RMSNorm launch between blocks. Slots: 2i for layer i's attention, 2i + 1
        // for its FFN.
        // (only where every product of the chain has a kernel that takes the sums)
        let sums = if self.sums_kernels() {
            B::norm_sums(b * t, 2 * self.layers.len(), dev)
        } else {
            None
        };
        let sums = sums.as_ref();
        let carries_attn = |l: &DecoderLayer<B>| sums.is_some() && matches!(l.attn, Attention::Mha(_));
        let carries_ffn = |l: &DecoderLayer<B>| sums.is_some() && matches!(l.ffn, Ffn::Dense(_));
        // Otherwise blocks that fold the RMSNorm before them into their first products take
        // the raw residual stream, and the block before such a block adds its output to the
        // stream in its last product (o, down). Elsewhere the residual add and the next norm
        // are one `add_rms_norm`. (only where the backend asks for it: `HearthBackend::folds_norms`)
        let fold = B::folds_norms() && sums.is_none();
        let folds_attn = |l: &DecoderLayer<B>| fold && matches!(l.attn, Attention::Mha(_));
        let folds_ffn = |l: &DecoderLayer<B>| fold && matches!(l.ffn, Ffn::Dense(_));
        let mut input = match (self.layers.first(), sums) {
            (Some(l0), Some(s)) if carries_attn(l0) => {
                let hg = profile::scope::<B, _>(dev, "norm", || {
                    B::sums_norm(x.clone().reshape([b * t, hid]), &l0.input_norm.weight, s, 0)
                        .expect("the norm's size is checked at load")
                });
                BlockInput::Summed(hg.reshape([b, t, hid]), &l0.input_norm, s, 0)
            }
            (Some(l0), _) if folds_attn(l0) => BlockInput::Raw(x.clone(), &l0.input_norm),
            (Some(l0), _) => {
                BlockInput::Normed(profile::scope::<B, _>(dev, "norm", || l0.input_norm.forward(x.clone())))
            }
            (None, _) => BlockInput::Normed(self.norm.forward(x.clone())),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let mask = masks
                .entry(layer.window)
                .or_insert_with(|| profile::scope::<B, _>(dev, "mask_upload", || pos.mask::<B>(layer.window, dev)))
                .clone();
            let ctx = AttnContext {
                pos: &pos,
                cos: &cos,
                sin: &sin,
                mask: &mask,
            };
            // x + Attn(RMSNorm(x))
            let to = send_to(
                sums,
                &x,
                carries_ffn(layer),
                folds_ffn(layer),
                &layer.post_norm,
                2 * i + 1,
            );
            let adds = to.adds();
            let (a, carried) = match &layer.attn {
                Attention::Mha(m) => m.forward(input, i, cache, &ctx, to)?,
                Attention::Mla(m) => to.finish(m.forward(input.normed(), i, cache, &ctx)?),
            };
            (x, input) = advance(dev, x, a, adds, carried, &layer.post_norm);
            // x + FFN(RMSNorm(x))
            let next = self.layers.get(i + 1);
            let next_norm = next.map_or(&self.norm, |l| &l.input_norm);
            let to = send_to(
                sums,
                &x,
                next.is_some_and(carries_attn),
                next.is_some_and(folds_attn),
                next_norm,
                2 * i + 2,
            );
            let adds = to.adds();
            let (f, carried) = match &layer.ffn {
                Ffn::Dense(m) => m.forward_block(input, to),
                Ffn::Moe(m) => to.finish(profile::scope::<B, _>(dev, "moe", || {
                    m.forward(input.normed(), &valid, i)
                })?),
            };
            (x, input) = advance(dev, x, f, adds, carried, next_norm);
            if opts.hidden_states && i != last {
                hidden.push(x.clone());
            }
        }
        cache.advance(&pos);
        // the final norm of the last layer's output (or of the embeddings without layers)
        let x = input.normed();
        if opts.hidden_states {
            hidden.push(x.clone());
        }
        let x = if opts.last_only && t > 1 {
            let idx: Vec<i64> = new.iter().enumerate().map(|(r, n)| (r * t + n - 1) as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b]), &self.device);
            x.reshape([b * t, hid]).select(0, idx).reshape([b, 1, hid])
        } else {
            x
        };
        let logits = profile::scope::<B, _>(dev, "lm_head", || self.lm_head.forward(x));
        Ok(ForwardOutput {
            logits,
            hidden_states: hidden,
        })
    }
}

/// Where a block's output goes: with the next block's norm carried as sums when `carries`
/// (and there are sums), added to the stream `x` when the next block `folds` its norm, else
/// alone. `slot` is the next block's in the sums, `next` its norm.
fn send_to<'a, B: HearthBackend>(
    sums: Option<&'a NormSums<B>>,
    x: &Tensor<B, 3>,
    carries: bool,
    folds: bool,
    next: &'a RmsNorm<B>,
    slot: usize,
) -> Residual<'a, B> {
    match sums {
        Some(sums) if carries => Residual::Sums {
            residual: x.clone(),
            next,
            sums,
            slot,
        },
        _ if folds => Residual::Add(x.clone()),
        _ => Residual::None,
    }
}

/// The residual stream after a block whose output is `out`, and the next block's input: `out`
/// itself (already `x + block`: `added`) with the input the block `carried` to the next one,
/// or as a raw input when the next block folds its `norm`; else `x + out` with the
/// normalised input from one `add_rms_norm`.
fn advance<'a, B: HearthBackend>(
    dev: &B::Device,
    x: Tensor<B, 3>,
    out: Tensor<B, 3>,
    added: bool,
    carried: Option<BlockInput<'a, B>>,
    norm: &'a RmsNorm<B>,
) -> (Tensor<B, 3>, BlockInput<'a, B>) {
    if let Some(input) = carried {
        (out, input)
    } else if added {
        (out.clone(), BlockInput::Raw(out, norm))
    } else {
        let (s, h) = profile::scope::<B, _>(dev, "add_norm", || {
            B::add_rms_norm(x, out, norm.weight.clone(), norm.eps)
        });
        (s, BlockInput::Normed(h))
    }
}
