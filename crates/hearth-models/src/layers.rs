//! Building blocks shared by every decoder: linear projections, RMSNorm, the SwiGLU MLP, and the
//! loader that turns checkpoint tensors into them.

use crate::error::ModelError;
use crate::weights::TensorSource;
use burn::tensor::{Tensor, TensorData, activation};
use hearth_backend::HearthBackend;

/// `y = x·Wᵀ + b` with `W` stored transposed (`[in, out]`) so the product is a plain matmul.
#[derive(Clone, Debug)]
pub struct Linear<B: HearthBackend> {
    /// Transposed weight `[in, out]`.
    pub weight: Tensor<B, 2>,
    /// Optional bias `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: HearthBackend> Linear<B> {
    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Applies the projection to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let y = x.reshape([rows, self.in_features()]).matmul(self.weight.clone());
        let y = match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = self.out_features();
        y.reshape(out)
    }
}

/// RMSNorm with a learned scale.
#[derive(Clone, Debug)]
pub struct RmsNorm<B: HearthBackend> {
    /// Scale `[dim]`.
    pub weight: Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: HearthBackend> RmsNorm<B> {
    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::rms_norm(x, self.weight.clone(), self.eps)
    }
}

/// The gated MLP `down(silu(gate(x)) · up(x))` of Llama-family models.
#[derive(Clone, Debug)]
pub struct Mlp<B: HearthBackend> {
    /// Gate projection (`w1`).
    pub gate: Linear<B>,
    /// Up projection (`w3`).
    pub up: Linear<B>,
    /// Down projection (`w2`).
    pub down: Linear<B>,
}

impl<B: HearthBackend> Mlp<B> {
    /// Applies the MLP to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.down.forward(B::silu_mul(self.gate.forward(x.clone()), self.up.forward(x)))
    }
}

/// Reads tensors from a [`WeightStore`] onto a device, checking shapes.
pub struct Loader<'a, B: HearthBackend> {
    /// The checkpoint.
    pub store: &'a dyn TensorSource,
    /// Target device.
    pub device: B::Device,
}

impl<B: HearthBackend> Loader<'_, B> {
    /// A tensor of known shape as an f32 device tensor.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>, ModelError> {
        let (v, _) = self.store.f32(name, Some(&shape))?;
        Ok(Tensor::from_data(TensorData::new(v, shape), &self.device))
    }

    /// A vector (norm scale, bias).
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>, ModelError> {
        self.tensor(name, [len])
    }

    /// An RMSNorm.
    pub fn rms_norm(&self, name: &str, len: usize, eps: f64) -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm { weight: self.vector(name, len)?, eps })
    }

    /// Host copy of a HF `[out, in]` matrix, transposed to `[in, out]`.
    pub fn transposed(&self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>, ModelError> {
        let (v, _) = self.store.f32(name, Some(&[out, inp]))?;
        let mut t = vec![0.0f32; v.len()];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = v[o * inp + i];
            }
        }
        Ok(t)
    }

    /// A linear layer `{prefix}.weight` (`[out, in]` on disk) and optional `{prefix}.bias`.
    pub fn linear(&self, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear<B>, ModelError> {
        let w = self.transposed(&format!("{prefix}.weight"), out, inp)?;
        let weight = Tensor::from_data(TensorData::new(w, [inp, out]), &self.device);
        let bias = if bias { Some(self.vector(&format!("{prefix}.bias"), out)?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// A gated MLP with projections named `gate`, `up`, `down` under `prefix`.
    pub fn mlp(&self, prefix: &str, hidden: usize, inter: usize, bias: bool, names: [&str; 3]) -> Result<Mlp<B>, ModelError> {
        Ok(Mlp {
            gate: self.linear(&format!("{prefix}.{}", names[0]), hidden, inter, bias)?,
            up: self.linear(&format!("{prefix}.{}", names[1]), hidden, inter, bias)?,
            down: self.linear(&format!("{prefix}.{}", names[2]), inter, hidden, bias)?,
        })
    }
}

/// `sigmoid(x)` re-exported for gates.
pub fn sigmoid<B: HearthBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    activation::sigmoid(x)
}
