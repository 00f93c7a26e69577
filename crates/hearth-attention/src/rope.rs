//! Rotary position embeddings: the inverse-frequency tables of every RoPE variant HF checkpoints
//! use, and their application to query/key heads.
//!
//! The tables follow `transformers.modeling_rope_utils` (default, linear, dynamic NTK, llama3,
//! YaRN with DeepSeek's `mscale`/`mscale_all_dim`) and are computed in f64.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde_json::Value;

/// Errors in a RoPE configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RopeError {
    /// A `rope_type` hearth does not implement.
    #[error("unsupported rope_type `{0}`")]
    UnsupportedType(String),
    /// A field the variant needs is missing or not a number.
    #[error("rope scaling `{rope_type}` needs numeric field `{field}`")]
    MissingField {
        /// Variant.
        rope_type: String,
        /// Field name.
        field: &'static str,
    },
    /// A value out of range (non-positive theta or factor, odd rotary dim, ...).
    #[error("invalid rope parameter `{field}`: {value}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: f64,
    },
}

/// How a checkpoint scales RoPE beyond its training context.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: frequencies divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows once the sequence passes `original_max`.
    Dynamic {
        /// Scale factor.
        factor: f64,
        /// Context length the model was trained with (`max_position_embeddings`).
        original_max: usize,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        /// Scale factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Original context length.
        original_max: usize,
    },
    /// YaRN (incl. DeepSeek's `mscale` and `mscale_all_dim`).
    Yarn {
        /// Scale factor.
        factor: f64,
        /// Original context length.
        original_max: usize,
        /// Fast rotation boundary (default 32).
        beta_fast: f64,
        /// Slow rotation boundary (default 1).
        beta_slow: f64,
        /// DeepSeek `mscale`.
        mscale: Option<f64>,
        /// DeepSeek `mscale_all_dim`.
        mscale_all_dim: Option<f64>,
        /// Explicit `attention_factor`.
        attention_factor: Option<f64>,
        /// Round the correction range to integers (default true).
        truncate: bool,
    },
}

/// A complete RoPE specification for one attention layer.
///
/// ```
/// use hearth_attention::rope::{RopeConfig, RopeScaling};
/// let cfg = RopeConfig { theta: 10000.0, dim: 4, scaling: RopeScaling::Default };
/// let t = cfg.table(16).unwrap();
/// assert_eq!(t.inv_freq, vec![1.0, 0.01]);
/// assert_eq!(t.attention_scaling, 1.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// Base (`rope_theta`).
    pub theta: f64,
    /// Number of rotated dimensions per head (head_dim × partial_rotary_factor).
    pub dim: usize,
    /// Scaling variant.
    pub scaling: RopeScaling,
}

/// Inverse frequencies and the cos/sin multiplier for one sequence length.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// `dim / 2` inverse frequencies.
    pub inv_freq: Vec<f64>,
    /// Multiplier applied to cos and sin (YaRN's attention factor; 1 otherwise).
    pub attention_scaling: f64,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl RopeConfig {
    /// Builds a config from a HF `config.json` object: the legacy `rope_theta` + `rope_scaling`
    /// keys, or transformers v5's `rope_parameters`. `dim` is the rotary dimension and
    /// `max_position_embeddings` the config's value (used by dynamic NTK and YaRN).
    ///
    /// ```
    /// let cfg: serde_json::Value = serde_json::json!({
    ///     "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    /// });
    /// let rope = hearth_attention::rope::RopeConfig::from_hf(&cfg, 8, 2048).unwrap();
    /// assert_eq!(rope.scaling, hearth_attention::rope::RopeScaling::Linear { factor: 2.0 });
    /// ```
    pub fn from_hf(config: &Value, dim: usize, max_position_embeddings: usize) -> Result<Self, RopeError> {
        let params = config
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| config.get("rope_scaling").filter(|v| v.is_object()));
        let theta = params
            .and_then(|p| num(p, "rope_theta"))
            .or_else(|| num(config, "rope_theta"))
            .unwrap_or(10000.0);
        if theta.is_nan() || theta <= 0.0 {
            return Err(RopeError::Invalid {
                field: "rope_theta",
                value: theta,
            });
        }
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(RopeError::Invalid {
                field: "rotary dim",
                value: dim as f64,
            });
        }
        let scaling = match params {
            None => RopeScaling::Default,
            Some(p) => {
                let ty = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string();
                let need = |field: &'static str| {
                    num(p, field).ok_or_else(|| RopeError::MissingField {
                        rope_type: ty.clone(),
                        field,
                    })
                };
                let orig = num(p, "original_max_position_embeddings").map(|x| x as usize);
                match ty.as_str() {
                    "default" => RopeScaling::Default,
                    "linear" => RopeScaling::Linear {
                        factor: need("factor")?,
                    },
                    "dynamic" => RopeScaling::Dynamic {
                        factor: need("factor")?,
                        original_max: orig.unwrap_or(max_position_embeddings),
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: need("factor")?,
                        low_freq_factor: need("low_freq_factor")?,
                        high_freq_factor: need("high_freq_factor")?,
                        original_max: need("original_max_position_embeddings")? as usize,
                    },
                    "yarn" => {
                        let (factor, original_max) = (need("factor")?, orig.unwrap_or(max_position_embeddings));
                        RopeScaling::Yarn {
                            factor,
                            original_max,
                            beta_fast: num(p, "beta_fast").unwrap_or(32.0),
                            beta_slow: num(p, "beta_slow").unwrap_or(1.0),
                            mscale: num(p, "mscale"),
                            mscale_all_dim: num(p, "mscale_all_dim"),
                            attention_factor: num(p, "attention_factor"),
                            truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                        }
                    }
                    other => return Err(RopeError::UnsupportedType(other.to_string())),
                }
            }
        };
        let factor = match &scaling {
            RopeScaling::Default => 1.0,
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. } => *factor,
        };
        if factor.is_nan() || factor <= 0.0 {
            return Err(RopeError::Invalid {
                field: "factor",
                value: factor,
            });
        }
        Ok(RopeConfig { theta, dim, scaling })
    }

    fn base_inv_freq(&self, base: f64) -> Vec<f64> {
        (0..self.dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / self.dim as f64))
            .collect()
    }

    /// The table for sequences up to `seq_len` positions (only dynamic NTK depends on it).
    pub fn table(&self, seq_len: usize) -> Result<RopeTable, RopeError> {
        let dim = self.dim as f64;
        let (inv_freq, attention_scaling) = match &self.scaling {
            RopeScaling::Default => (self.base_inv_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (
                self.base_inv_freq(self.theta).into_iter().map(|f| f / factor).collect(),
                1.0,
            ),
            RopeScaling::Dynamic { factor, original_max } => {
                let len = seq_len.max(*original_max) as f64;
                let om = *original_max as f64;
                let base = self.theta * ((factor * len / om) - (factor - 1.0)).powf(dim / (dim - 2.0));
                (self.base_inv_freq(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let old = *original_max as f64;
                let low_wl = old / low_freq_factor;
                let high_wl = old / high_freq_factor;
                let inv = self
                    .base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let attn = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        yarn_mscale(*factor, *m) / yarn_mscale(*factor, *ma)
                    }
                    _ => yarn_mscale(*factor, 1.0),
                };
                let om = *original_max as f64;
                let corr = |rot: f64| (dim * (om / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * self.theta.ln());
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let inv = (0..self.dim / 2)
                    .map(|i| {
                        let pos_freq = self.theta.powf((2 * i) as f64 / dim);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        interpolation * (1.0 - extra_factor) + extrapolation * extra_factor
                    })
                    .collect();
                (inv, attn)
            }
        };
        Ok(RopeTable {
            inv_freq,
            attention_scaling,
        })
    }
}

/// Memory layout of the rotated pairs inside a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RopeLayout {
    /// HF "rotate half": element `i` pairs with `i + dim/2`.
    #[default]
    Half,
    /// Interleaved pairs `(2i, 2i+1)` (DeepSeek's `rope_interleave`, GGUF/Meta layout).
    Interleaved,
}

impl RopeTable {
    /// cos and sin (times `attention_scaling`) for each position, each `[positions.len(), 2·dim/2]`
    /// in rotate-half layout (the half-table repeated).
    pub fn cos_sin(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half * 2);
        let mut sin = Vec::with_capacity(positions.len() * half * 2);
        for &p in positions {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let a = p as f64 * f;
                    cos.push((a.cos() * self.attention_scaling) as f32);
                    sin.push((a.sin() * self.attention_scaling) as f32);
                }
            }
        }
        (cos, sin)
    }

    /// Device tensors `[B, 1, T, dim]` of cos and sin for a batch of position rows.
    pub fn tensors<B: Backend>(&self, positions: &[Vec<usize>], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let flat: Vec<usize> = positions.iter().flatten().copied().collect();
        let (c, s) = self.cos_sin(&flat);
        let d = self.inv_freq.len() * 2;
        let cos = Tensor::from_data(TensorData::new(c, [b, 1, t, d]), device);
        let sin = Tensor::from_data(TensorData::new(s, [b, 1, t, d]), device);
        (cos, sin)
    }
}

/// Applies RoPE to `x: [B, H, T, dim]` with `cos`/`sin` from [`RopeTable::tensors`].
///
/// With [`RopeLayout::Interleaved`] the pairs are first gathered into rotate-half order
/// (exactly what transformers' DeepSeek code does), so the output is in rotate-half order;
/// apply the same to queries and keys and their dot products are those of interleaved RoPE.
///
/// ```
/// # use burn::tensor::Tensor;
/// use hearth_attention::rope::{apply_rope, RopeConfig, RopeLayout, RopeScaling};
/// type B = hearth_backend::Cpu;
/// let dev = Default::default();
/// let table = RopeConfig { theta: 10000.0, dim: 2, scaling: RopeScaling::Default }.table(8).unwrap();
/// let (cos, sin) = table.tensors::<B>(&[vec![1]], &dev);
/// let x = Tensor::<B, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
/// let y = apply_rope(x, &cos, &sin, RopeLayout::Half).into_data().to_vec::<f32>().unwrap();
/// assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6);
/// ```
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    layout: RopeLayout,
) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let x = match layout {
        RopeLayout::Half => x,
        RopeLayout::Interleaved => x.reshape([b * h, t, d / 2, 2]).swap_dims(2, 3).reshape([b, h, t, d]),
    };
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
