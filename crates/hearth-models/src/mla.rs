//! Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 §2.1).
//!
//! Keys and values are reconstructed from a per-token latent `c = RMSNorm(W_DKV · x)` of rank
//! `kv_lora_rank`, plus one decoupled RoPE key shared by all heads. The cache stores only `c`
//! and the rotated RoPE key. Attention runs in the *absorbed* form: the key up-projection is
//! folded into the query (`q_lat = q_nope · W_UK`) and the value up-projection is applied after
//! attention, so every head attends over the same `[S, rank + rope]` latent keys — grouped-query
//! attention with a single KV head.

use crate::attention::AttnContext;
use crate::config::{MlaConfig, ModelConfig};
use crate::error::ModelError;
use crate::layers::{Linear, Loader, RmsNorm};
use burn::tensor::{Tensor, TensorData};
use hearth_attention::{KvCache, RopeLayout, apply_rope};
use hearth_backend::HearthBackend;

pub(crate) enum QueryProj<B: HearthBackend> {
    Direct(Linear<B>),
    LowRank {
        a: Linear<B>,
        norm: RmsNorm<B>,
        b: Linear<B>,
    },
}

/// `q_a_layernorm` / `kv_a_layernorm` epsilon: DeepSeek's reference code and transformers build
/// these norms with `DeepseekV3RMSNorm(rank)`, i.e. the default eps 1e-6, not `rms_norm_eps`.
const LORA_NORM_EPS: f64 = 1e-6;

/// DeepSeek MLA attention layer.
pub struct MlaAttention<B: HearthBackend> {
    pub(crate) q: QueryProj<B>,
    pub(crate) kv_a: Linear<B>,
    pub(crate) kv_norm: RmsNorm<B>,
    /// `[H, nope, rank]`: key up-projection per head.
    pub(crate) w_uk: Tensor<B, 3>,
    /// `[H, rank, v]`: value up-projection per head, transposed.
    pub(crate) w_uv: Tensor<B, 3>,
    pub(crate) o: Linear<B>,
    pub(crate) dims: MlaConfig,
    pub(crate) heads: usize,
    pub(crate) rope_layout: RopeLayout,
    pub(crate) scale: f64,
}

impl<B: HearthBackend> MlaAttention<B> {
    /// Loads `{prefix}.{q_a_proj,q_a_layernorm,q_b_proj | q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj}`.
    pub fn load(l: &Loader<B>, cfg: &ModelConfig, prefix: &str) -> Result<Self, ModelError> {
        let m = cfg.mla.clone().expect("MLA config");
        let (hid, h) = (cfg.hidden_size, cfg.num_heads);
        let qk = m.qk_nope_head_dim + m.qk_rope_head_dim;
        let q = match m.q_lora_rank {
            Some(r) => QueryProj::LowRank {
                a: l.linear(&format!("{prefix}.q_a_proj"), hid, r, false)?,
                norm: l.rms_norm(&format!("{prefix}.q_a_layernorm.weight"), r, LORA_NORM_EPS)?,
                b: l.linear(&format!("{prefix}.q_b_proj"), r, h * qk, false)?,
            },
            None => QueryProj::Direct(l.linear(&format!("{prefix}.q_proj"), hid, h * qk, false)?),
        };
        let r = m.kv_lora_rank;
        let (nope, vd) = (m.qk_nope_head_dim, m.v_head_dim);
        let (kvb, _) = l
            .store
            .f32(&format!("{prefix}.kv_b_proj.weight"), Some(&[h * (nope + vd), r]))?;
        let mut uk = Vec::with_capacity(h * nope * r);
        let mut uv = vec![0.0f32; h * r * vd];
        for head in 0..h {
            let base = head * (nope + vd);
            uk.extend_from_slice(&kvb[base * r..(base + nope) * r]);
            for j in 0..vd {
                for c in 0..r {
                    uv[(head * r + c) * vd + j] = kvb[(base + nope + j) * r + c];
                }
            }
        }
        Ok(Self {
            q,
            kv_a: l.linear(
                &format!("{prefix}.kv_a_proj_with_mqa"),
                hid,
                r + m.qk_rope_head_dim,
                false,
            )?,
            kv_norm: l.rms_norm(&format!("{prefix}.kv_a_layernorm.weight"), r, LORA_NORM_EPS)?,
            w_uk: Tensor::from_data(TensorData::new(uk, [h, nope, r]), &l.device),
            w_uv: Tensor::from_data(TensorData::new(uv, [h, r, vd]), &l.device),
            o: l.linear(&format!("{prefix}.o_proj"), h * vd, hid, false)?,
            dims: m,
            heads: h,
            rope_layout: cfg.rope_layout,
            scale: cfg.attention_scale,
        })
    }

    /// Bytes of weights one forward reads.
    pub fn weight_bytes(&self) -> usize {
        let q = match &self.q {
            QueryProj::Direct(p) => p.weight_bytes(),
            QueryProj::LowRank { a, b, .. } => a.weight_bytes() + b.weight_bytes(),
        };
        q + self.kv_a.weight_bytes()
            + self.o.weight_bytes()
            + (self.w_uk.shape().num_elements() + self.w_uv.shape().num_elements()) * 4
    }

    /// `x: [B, T, hidden]` → `[B, T, hidden]`; caches the latent and the RoPE key.
    pub fn forward<C: KvCache<B>>(
        &self,
        x: Tensor<B, 3>,
        layer: usize,
        cache: &mut C,
        ctx: &AttnContext<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [b, t, _] = x.dims();
        let MlaConfig {
            kv_lora_rank: r,
            qk_nope_head_dim: nope,
            qk_rope_head_dim: rope,
            v_head_dim: vd,
            ..
        } = self.dims;
        let h = self.heads;
        let q = match &self.q {
            QueryProj::Direct(p) => p.forward(x.clone()),
            QueryProj::LowRank { a, norm, b } => b.forward(norm.forward(a.forward(x.clone()))),
        };
        let q = q.reshape([b, t, h, nope + rope]).swap_dims(1, 2);
        let q_nope = q.clone().narrow(3, 0, nope);
        let q_rot = apply_rope(q.narrow(3, nope, rope), ctx.cos, ctx.sin, self.rope_layout);

        let ckv = self.kv_a.forward(x);
        let latent = self.kv_norm.forward(ckv.clone().narrow(2, 0, r)).unsqueeze_dim::<4>(1);
        let k_rot = apply_rope(
            ckv.narrow(2, r, rope).unsqueeze_dim::<4>(1),
            ctx.cos,
            ctx.sin,
            self.rope_layout,
        );
        // the cache holds `[latent | rotated RoPE key]` rows; the values are the latent part of
        // the same rows (a view), so a step concatenates only its own new rows
        let k_full = cache.update_joint(layer, Tensor::cat(vec![latent, k_rot], 3), ctx.pos)?;
        let s = k_full.dims()[2];
        debug_assert_eq!(k_full.dims(), [b, 1, s, r + rope]);
        let latent = B::prefix(k_full.clone(), 3, r);

        let q_lat = B::matmul(q_nope, self.w_uk.clone().unsqueeze_dim::<4>(0).expand([b, h, nope, r]));
        let q_full = Tensor::cat(vec![q_lat, q_rot], 3);
        let o_lat = B::gqa_attention(q_full, k_full, latent, ctx.mask.clone(), self.scale);
        let o = B::matmul(o_lat, self.w_uv.clone().unsqueeze_dim::<4>(0).expand([b, h, r, vd]));
        Ok(self.o.forward(o.swap_dims(1, 2).reshape([b, t, h * vd])))
    }
}
