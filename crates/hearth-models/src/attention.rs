//! Multi-head self-attention of the Llama family: grouped KV heads, optional q/k/v/o biases
//! (Qwen2), q/k RMSNorm per head (Qwen3) or over the whole projection (OLMoE), RoPE, causal
//! or sliding-window masking, KV cache.

use crate::config::{ModelConfig, QkNorm};
use crate::error::ModelError;
use crate::layers::{BlockInput, Linear, Loader, Residual, RmsNorm, linear3_block};
use burn::tensor::Tensor;
use hearth_attention::{BatchPositions, KvCache, RopeLayout};
use hearth_backend::{HearthBackend, RopeTables, profile};

/// Per-forward inputs shared by every attention layer.
pub struct AttnContext<'a, B: HearthBackend> {
    /// Where each row sits.
    pub pos: &'a BatchPositions,
    /// RoPE cos `[B, 1, T, rope_dim]`.
    pub cos: &'a Tensor<B, 4>,
    /// RoPE sin `[B, 1, T, rope_dim]`.
    pub sin: &'a Tensor<B, 4>,
    /// Additive mask `[B, T, S]` for this layer's window.
    pub mask: &'a Tensor<B, 3>,
}

/// Standard (grouped-query) attention.
#[derive(Clone, Debug)]
pub struct MultiHeadAttention<B: HearthBackend> {
    pub(crate) q: Linear<B>,
    pub(crate) k: Linear<B>,
    pub(crate) v: Linear<B>,
    pub(crate) o: Linear<B>,
    pub(crate) q_norm: Option<RmsNorm<B>>,
    pub(crate) k_norm: Option<RmsNorm<B>>,
    pub(crate) qk_norm: QkNorm,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rope_dim: usize,
    pub(crate) rope_layout: RopeLayout,
    pub(crate) scale: f64,
}

impl<B: HearthBackend> MultiHeadAttention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj` (and `q_norm`/`k_norm`).
    pub fn load(l: &Loader<B>, cfg: &ModelConfig, prefix: &str) -> Result<Self, ModelError> {
        let (h, hkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let hid = cfg.hidden_size;
        let (q_norm, k_norm) = match cfg.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (
                Some(l.rms_norm(&format!("{prefix}.q_norm.weight"), d, cfg.rms_norm_eps)?),
                Some(l.rms_norm(&format!("{prefix}.k_norm.weight"), d, cfg.rms_norm_eps)?),
            ),
            QkNorm::Full => (
                Some(l.rms_norm(&format!("{prefix}.q_norm.weight"), h * d, cfg.rms_norm_eps)?),
                Some(l.rms_norm(&format!("{prefix}.k_norm.weight"), hkv * d, cfg.rms_norm_eps)?),
            ),
        };
        Ok(Self {
            q: l.linear(&format!("{prefix}.q_proj"), hid, h * d, cfg.qkv_bias)?,
            k: l.linear(&format!("{prefix}.k_proj"), hid, hkv * d, cfg.qkv_bias)?,
            v: l.linear(&format!("{prefix}.v_proj"), hid, hkv * d, cfg.qkv_bias)?,
            o: l.linear(&format!("{prefix}.o_proj"), h * d, hid, cfg.o_bias)?,
            q_norm,
            k_norm,
            qk_norm: cfg.qk_norm,
            heads: h,
            kv_heads: hkv,
            head_dim: d,
            rope_dim: cfg.rope.dim,
            rope_layout: cfg.rope_layout,
            scale: cfg.attention_scale,
        })
    }

    /// Bytes of projection weights one forward reads.
    pub fn weight_bytes(&self) -> usize {
        self.q.weight_bytes() + self.k.weight_bytes() + self.v.weight_bytes() + self.o.weight_bytes()
    }

    /// `x: [B, T, hidden]` → `[B, T, hidden]`, writing this chunk's K/V into `cache`, the
    /// output sent where `residual` says (the addition, and for [`Residual::Sums`] the next
    /// block's input, in the output projection's epilogue: [`Linear::forward_residual`]).
    /// A [`BlockInput::Raw`] or [`BlockInput::Summed`] input is normalised inside the q/k/v
    /// products.
    pub fn forward<'a, C: KvCache<B>>(
        &self,
        x: BlockInput<'_, B>,
        layer: usize,
        cache: &mut C,
        ctx: &AttnContext<B>,
        residual: Residual<'a, B>,
    ) -> Result<(Tensor<B, 3>, Option<BlockInput<'a, B>>), ModelError> {
        let [b, t, _] = x.dims();
        let dev = ctx.cos.device();
        let (h, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let [mut q, mut k, v] =
            profile::scope::<B, _>(&dev, "attn.qkv", || linear3_block(x, [&self.q, &self.k, &self.v]));
        if self.qk_norm == QkNorm::Full {
            q = self.q_norm.as_ref().expect("q_norm").forward(q);
            k = self.k_norm.as_ref().expect("k_norm").forward(k);
        }
        let mut q = q.reshape([b, t, h, d]);
        let mut k = k.reshape([b, t, hkv, d]);
        if self.qk_norm == QkNorm::PerHead {
            q = self.q_norm.as_ref().expect("q_norm").forward(q);
            k = self.k_norm.as_ref().expect("k_norm").forward(k);
        }
        let rope = RopeTables {
            cos: ctx.cos,
            sin: ctx.sin,
            rope_dim: self.rope_dim,
            interleaved: self.rope_layout == RopeLayout::Interleaved,
        };
        let v = v.reshape([b, t, hkv, d]).swap_dims(1, 2);
        // RoPE on q and k, and this chunk's k and v into the cache (one launch on the cubecl
        // backends)
        let (q, k, v) = profile::scope::<B, _>(&dev, "attn.rope_kv_cache", || {
            cache.update_rope(layer, q.swap_dims(1, 2), k.swap_dims(1, 2), v, rope, ctx.pos)
        })?;
        let o = profile::scope::<B, _>(&dev, "attn.sdpa", || {
            B::gqa_attention(q, k, v, ctx.mask.clone(), self.scale)
        });
        Ok(profile::scope::<B, _>(&dev, "attn.o", || {
            let o = o.swap_dims(1, 2).reshape([b, t, h * d]);
            self.o.forward_residual(o, residual)
        }))
    }
}
