//! Building blocks shared by every decoder: linear projections, RMSNorm, the SwiGLU MLP, and the
//! loader that turns checkpoint tensors into them.

use crate::error::ModelError;
use crate::weights::TensorSource;
use burn::tensor::{Tensor, TensorData, activation};
use hearth_backend::{HearthBackend, NormSums, PackedFormat, PackedMatrix, PreNorm, Weight, ops, profile};
use hearth_quant::kernels::{self, WeightFormat};
use hearth_quant::{AlignedBytes, WeightBytes};
use std::sync::Arc;

/// Weights at least this large that do not start on a cache line are copied to one that does
/// (by [`HostWeight::into_preferred_layout`]).
const MIN_ALIGNED_COPY: usize = 64 * 1024;

/// Where a linear layer's weight lives.
#[derive(Clone, Debug)]
pub enum LinearWeight<B: HearthBackend> {
    /// A device tensor `[in, out]` (a transposed view of the checkpoint's row-major
    /// `[out, in]`), multiplied with [`HearthBackend::matmul`].
    Device(Tensor<B, 2>),
    /// Packed blocks `[out, in]` on the device (GGUF Q8_0/Q4_0/Q4_K/Q6_K re-laid-out by
    /// [`HearthBackend::upload_packed`]), multiplied by [`HearthBackend::packed_matmul`]: what
    /// non-host backends use for quantized weights, at the packed size in device memory.
    Packed(PackedMatrix<B>),
    /// Packed rows `[out, in]` in host memory, multiplied by hearth's CPU kernels.
    Host(Arc<HostWeight>),
}

impl<B: HearthBackend> LinearWeight<B> {
    /// The weight as an operand of the backend's fused products ([`Weight`]), or `None` for
    /// host weights (multiplied by the CPU kernels).
    pub fn as_weight(&self) -> Option<Weight<'_, B>> {
        match self {
            LinearWeight::Device(w) => Some(Weight::Dense(w)),
            LinearWeight::Packed(p) => Some(Weight::Packed(p)),
            LinearWeight::Host(_) => None,
        }
    }
}

/// A packed `[rows = out, cols = in]` weight for the CPU kernels.
#[derive(Debug)]
pub struct HostWeight {
    /// Storage format of the rows.
    pub format: WeightFormat,
    /// Row-major packed bytes (borrowed from the checkpoint's memory map where possible).
    pub bytes: hearth_quant::WeightBytes,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

impl HostWeight {
    /// Row `row` as f32 (a lookup into a packed embedding table).
    ///
    /// ```
    /// use hearth_models::layers::HostWeight;
    /// use hearth_quant::kernels::WeightFormat;
    /// let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let w = HostWeight { format: WeightFormat::F32, bytes: bytemuck::cast_slice(&v).to_vec().into(), rows: 2, cols: 3 };
    /// let mut out = [0.0f32; 3];
    /// w.row_f32(1, &mut out);
    /// assert_eq!(out, [4.0, 5.0, 6.0]);
    /// ```
    ///
    /// # Panics
    /// If `row >= self.rows` or `out.len() != self.cols` (callers check token ids against the
    /// vocabulary first).
    pub fn row_f32(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "embedding row {row} out of range"
        );
        if self.format.is_interleaved() {
            kernels::interleaved::dequantize_row(self.format, &self.bytes, self.cols, row, out)
                .expect("interleaved sizes are checked at load");
            return;
        }
        let rb = self.bytes.len() / self.rows;
        kernels::reference::dequantize_row(self.format, &self.bytes[row * rb..(row + 1) * rb], self.cols, out);
    }

    /// The same weight in the layout the CPU kernels run fastest on
    /// ([`WeightFormat::preferred_layout`]: Q8_0/Q4_0 rows interleaved by 16 on AVX-512), in a
    /// buffer aligned to 64 bytes; a weight already in that layout is kept as it is if it is
    /// aligned (or small), else copied to an aligned buffer. The source pages of a repacked or
    /// copied weight are released if they were memory-mapped, so the copy does not add to the
    /// resident size.
    pub fn into_preferred_layout(self) -> Result<Self, ModelError> {
        let want = self.format.preferred_layout();
        let err = |e: kernels::KernelError| ModelError::Dtype {
            file: "<repacking for the CPU kernels>".into(),
            tensor: format!("{}×{} {:?}", self.rows, self.cols, self.format),
            dtype: e.to_string(),
        };
        let bytes = if want != self.format {
            let len = want.row_bytes(self.cols).map_err(err)? * want.stored_rows(self.rows);
            let mut out = AlignedBytes::zeroed(len);
            kernels::interleaved::repack_into(self.format, &self.bytes, self.rows, self.cols, out.as_mut_slice())
                .map_err(err)?;
            out
        } else if !self.bytes.is_aligned() && self.bytes.len() >= MIN_ALIGNED_COPY
            || self.bytes.is_mapped() && AlignedBytes::huge_pages_for(self.bytes.len())
        {
            // rows on cache-line boundaries (a GGUF aligns tensors to 32 bytes, safetensors
            // to 8): no SIMD load straddles two lines; and big mapped weights onto huge pages
            // (file maps use 4 KiB pages: a TLB miss per 4 KiB streamed at every decode step)
            AlignedBytes::copy_of(&self.bytes)
        } else {
            return Ok(self);
        };
        self.bytes.release_pages();
        Ok(Self {
            format: want,
            bytes: WeightBytes::Aligned(bytes),
            rows: self.rows,
            cols: self.cols,
        })
    }
}

/// `y = x·Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear<B: HearthBackend> {
    /// The weight.
    pub weight: LinearWeight<B>,
    /// Optional bias `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: HearthBackend> Linear<B> {
    /// Input width.
    pub fn in_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Device(w) => w.dims()[0],
            LinearWeight::Packed(p) => p.cols(),
            LinearWeight::Host(h) => h.cols,
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::Device(w) => w.dims()[1],
            LinearWeight::Packed(p) => p.rows(),
            LinearWeight::Host(h) => h.rows,
        }
    }

    /// Bytes of weight read by one forward (the decode bandwidth cost).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Device(w) => w.shape().num_elements() * w.dtype().size(),
            LinearWeight::Packed(p) => p.device_bytes(),
            LinearWeight::Host(h) => h.bytes.len(),
        }
    }

    /// Applies the projection to the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let (inp, out) = (self.in_features(), self.out_features());
        let y = match &self.weight {
            LinearWeight::Device(w) => B::matmul(x.reshape([rows, inp]), w.clone()),
            LinearWeight::Packed(p) => {
                B::packed_matmul(x.reshape([rows, inp]), p).expect("packed weight sizes are checked at upload")
            }
            LinearWeight::Host(h) => {
                let device = x.device();
                let xs = x
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("f32 activations");
                let mut ys = vec![0.0f32; rows * out];
                kernels::matmul(h.format, &h.bytes, h.rows, h.cols, &xs, rows, &mut ys)
                    .expect("packed weight sizes are checked at load");
                Tensor::from_data(TensorData::new(ys, [rows, out]), &device)
            }
        };
        let y = match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        };
        let mut shape = dims;
        shape[D - 1] = out;
        y.reshape(shape)
    }
}

impl<B: HearthBackend> Linear<B> {
    /// `residual + x · Wᵀ (+ b)` over the last dimension: one [`HearthBackend::matmul_add`]
    /// (the addition in the product's epilogue on the cubecl backends) for a weight without
    /// bias on the device, else [`Self::forward`] and an addition.
    pub fn forward_add(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, inp] = x.dims();
        match (self.weight.as_weight(), &self.bias) {
            (Some(w), None) => {
                let out = self.out_features();
                B::matmul_add(x.reshape([b * t, inp]), w, residual.reshape([b * t, out]))
                    .expect("weight sizes are checked at load")
                    .reshape([b, t, out])
            }
            _ => residual + self.forward(x),
        }
    }

    /// `x · Wᵀ (+ b)` sent where `residual` says ([`Residual`]): with [`Residual::Sums`] a
    /// weight without bias on the device goes through one [`HearthBackend::matmul_add_sums`]
    /// (on the cubecl backends the addition, `h ⊙ g` and `Σh²` in the product's epilogue),
    /// anything else through [`Self::forward`] and [`Residual::finish`]. Returns the block's
    /// output and, for [`Residual::Sums`], the next block's input.
    pub fn forward_residual<'a>(
        &self,
        x: Tensor<B, 3>,
        residual: Residual<'a, B>,
    ) -> (Tensor<B, 3>, Option<BlockInput<'a, B>>) {
        let [b, t, inp] = x.dims();
        match (self.weight.as_weight(), &self.bias, residual) {
            (
                Some(w),
                None,
                Residual::Sums {
                    residual,
                    next,
                    sums,
                    slot,
                },
            ) => {
                let out = self.out_features();
                let (h, hg) = B::matmul_add_sums(
                    x.reshape([b * t, inp]),
                    w,
                    residual.reshape([b * t, out]),
                    &next.weight,
                    sums,
                    slot,
                )
                .expect("weight and norm sizes are checked at load; the decoder sizes the sums");
                (
                    h.reshape([b, t, out]),
                    Some(BlockInput::Summed(hg.reshape([b, t, out]), next, sums, slot)),
                )
            }
            (_, _, Residual::Add(r)) => (self.forward_add(x, r), None),
            (_, _, residual) => residual.finish(self.forward(x)),
        }
    }
}

/// Where a block's output goes: returned as is, added to the residual stream, or added to it
/// with the next block's norm carried as sums of squares ([`NormSums`]: the next block's
/// first products apply the norm, no RMSNorm launch between them).
pub enum Residual<'a, B: HearthBackend> {
    /// The block's output alone.
    None,
    /// `residual + block`.
    Add(Tensor<B, 3>),
    /// `h = residual + block`, and the next block's input `h ⊙ next.weight` with `Σh²` in
    /// `sums` at `slot` ([`BlockInput::Summed`]).
    Sums {
        /// The residual stream before the block.
        residual: Tensor<B, 3>,
        /// The next block's norm.
        next: &'a RmsNorm<B>,
        /// The forward's sums.
        sums: &'a NormSums<B>,
        /// The next block's slot in `sums`.
        slot: usize,
    },
}

impl<'a, B: HearthBackend> Residual<'a, B> {
    /// Whether the output comes back with the residual added.
    pub fn adds(&self) -> bool {
        !matches!(self, Residual::None)
    }

    /// Sends a computed block output `d` where this says (burn ops and
    /// [`HearthBackend::sums_norm`]): the block's output and, for [`Residual::Sums`], the next
    /// block's input.
    pub fn finish(self, d: Tensor<B, 3>) -> (Tensor<B, 3>, Option<BlockInput<'a, B>>) {
        match self {
            Residual::None => (d, None),
            Residual::Add(r) => (r + d, None),
            Residual::Sums {
                residual,
                next,
                sums,
                slot,
            } => {
                let h = residual + d;
                let [b, t, n] = h.dims();
                let hg = B::sums_norm(h.clone().reshape([b * t, n]), &next.weight, sums, slot)
                    .expect("norm sizes are checked at load; the decoder sizes the sums");
                (h, Some(BlockInput::Summed(hg.reshape([b, t, n]), next, sums, slot)))
            }
        }
    }
}

/// The input of a block: already normalised, the residual stream with the RMSNorm that the
/// block folds into its first products ([`HearthBackend::norm_matmul3`],
/// [`HearthBackend::norm_matmul_silu`]), or the stream with the norm's weight applied and its
/// sums of squares carried ([`HearthBackend::sums_matmul3`],
/// [`HearthBackend::sums_matmul_silu`]).
pub enum BlockInput<'a, B: HearthBackend> {
    /// `RMSNorm(x)`, computed.
    Normed(Tensor<B, 3>),
    /// The residual stream `x` and the norm still to apply to it.
    Raw(Tensor<B, 3>, &'a RmsNorm<B>),
    /// `x ⊙ norm.weight`, with `Σx²` per row in the sums at the slot.
    Summed(Tensor<B, 3>, &'a RmsNorm<B>, &'a NormSums<B>, usize),
}

impl<B: HearthBackend> BlockInput<'_, B> {
    /// The normalised input (the norm applied now for [`BlockInput::Raw`] and
    /// [`BlockInput::Summed`]).
    pub fn normed(self) -> Tensor<B, 3> {
        match self {
            BlockInput::Normed(h) => h,
            BlockInput::Raw(x, norm) => norm.forward(x),
            BlockInput::Summed(hg, norm, sums, slot) => {
                let [b, t, n] = hg.dims();
                ops::sums_normed(hg.reshape([b * t, n]), sums, slot, norm.eps)
                    .expect("the decoder sizes the sums")
                    .reshape([b, t, n])
            }
        }
    }

    /// `[B, T, hidden]` of the input.
    pub fn dims(&self) -> [usize; 3] {
        match self {
            BlockInput::Normed(t) | BlockInput::Raw(t, _) | BlockInput::Summed(t, ..) => t.dims(),
        }
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

    /// The norm as an operand of the backend's fused products.
    pub fn pre(&self) -> PreNorm<'_, B> {
        PreNorm {
            weight: &self.weight,
            eps: self.eps,
        }
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
    /// Bytes of weight one forward reads.
    pub fn weight_bytes(&self) -> usize {
        self.gate.weight_bytes() + self.up.weight_bytes() + self.down.weight_bytes()
    }

    /// Applies the MLP to the last dimension. Gate/up weights without biases, both packed or
    /// both dense on the device, go through [`HearthBackend::packed_matmul_silu`] /
    /// [`HearthBackend::matmul_silu`] (one launch on the cubecl backends).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dev = x.device();
        let h = self.gate_up(x);
        profile::scope::<B, _>(&dev, "mlp.down", || self.down.forward(h))
    }

    /// The MLP on a block input, its output sent where `residual` says
    /// ([`Linear::forward_residual`] of the down projection): with device gate/up weights
    /// without biases a [`BlockInput::Raw`] input goes through
    /// [`HearthBackend::norm_matmul_silu`] (on the cubecl backends the norm is folded into
    /// the gate/up launch) and a [`BlockInput::Summed`] one through
    /// [`HearthBackend::sums_matmul_silu`]. Returns the output and, for
    /// [`Residual::Sums`], the next block's input.
    pub fn forward_block<'a>(
        &self,
        input: BlockInput<'_, B>,
        residual: Residual<'a, B>,
    ) -> (Tensor<B, 3>, Option<BlockInput<'a, B>>) {
        let folded = match (&input, self.gate.weight.as_weight(), self.up.weight.as_weight()) {
            (BlockInput::Raw(..) | BlockInput::Summed(..), Some(_), Some(_)) => {
                self.gate.bias.is_none() && self.up.bias.is_none()
            }
            _ => false,
        };
        let h = match input {
            BlockInput::Summed(hg, norm, sums, slot) if folded => {
                let dev = hg.device();
                let [b, t, inp] = hg.dims();
                let (g, u) = (self.gate.weight.as_weight(), self.up.weight.as_weight());
                let (g, u) = (g.expect("checked above"), u.expect("checked above"));
                profile::scope::<B, _>(&dev, "mlp.sums_gate_up_silu", || {
                    B::sums_matmul_silu(hg.reshape([b * t, inp]), sums, slot, norm.eps, g, u)
                        .expect("weight sizes are checked at load")
                        .reshape([b, t, self.gate.out_features()])
                })
            }
            BlockInput::Raw(x, norm) if folded => {
                let dev = x.device();
                let [b, t, inp] = x.dims();
                let (g, u) = (self.gate.weight.as_weight(), self.up.weight.as_weight());
                let (g, u) = (g.expect("checked above"), u.expect("checked above"));
                profile::scope::<B, _>(&dev, "mlp.norm_gate_up_silu", || {
                    B::norm_matmul_silu(x.reshape([b * t, inp]), norm.pre(), g, u)
                        .expect("weight sizes are checked at load")
                        .reshape([b, t, self.gate.out_features()])
                })
            }
            input => self.gate_up(input.normed()),
        };
        let dev = h.device();
        profile::scope::<B, _>(&dev, "mlp.down", || self.down.forward_residual(h, residual))
    }

    /// `silu(gate(x)) · up(x)`.
    fn gate_up<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dev = x.device();
        let dims = x.dims();
        match (&self.gate.weight, &self.up.weight, &self.gate.bias, &self.up.bias) {
            (LinearWeight::Packed(g), LinearWeight::Packed(u), None, None) => {
                let rows: usize = dims[..D - 1].iter().product();
                let mut shape = dims;
                shape[D - 1] = g.rows();
                profile::scope::<B, _>(&dev, "mlp.gate_up_silu", || {
                    B::packed_matmul_silu(x.reshape([rows, dims[D - 1]]), g, u)
                        .expect("packed weight sizes are checked at upload")
                        .reshape(shape)
                })
            }
            (LinearWeight::Device(g), LinearWeight::Device(u), None, None) => {
                let rows: usize = dims[..D - 1].iter().product();
                let mut shape = dims;
                shape[D - 1] = g.dims()[1];
                profile::scope::<B, _>(&dev, "mlp.gate_up_silu", || {
                    B::matmul_silu(x.reshape([rows, dims[D - 1]]), g, u).reshape(shape)
                })
            }
            _ => {
                let (g, u) = profile::scope::<B, _>(&dev, "mlp.gate_up", || {
                    (self.gate.forward(x.clone()), self.up.forward(x))
                });
                profile::scope::<B, _>(&dev, "mlp.silu_mul", || B::silu_mul(g, u))
            }
        }
    }
}

/// `x · Wᵀ + b` for three projections of the same input `x: [B, T, in]` (attention's q, k,
/// v): one [`HearthBackend::packed_matmul3`] when all three weights are packed on the device,
/// one [`HearthBackend::matmul3`] when all three are dense device tensors, else three
/// [`Linear::forward`]s.
pub fn linear3<B: HearthBackend>(x: Tensor<B, 3>, l: [&Linear<B>; 3]) -> [Tensor<B, 3>; 3] {
    let [b, t, inp] = x.dims();
    let ys = match (&l[0].weight, &l[1].weight, &l[2].weight) {
        (LinearWeight::Packed(p0), LinearWeight::Packed(p1), LinearWeight::Packed(p2)) => {
            B::packed_matmul3(x.reshape([b * t, inp]), [p0, p1, p2]).expect("packed weight sizes are checked at upload")
        }
        (LinearWeight::Device(w0), LinearWeight::Device(w1), LinearWeight::Device(w2)) => {
            B::matmul3(x.reshape([b * t, inp]), [w0, w1, w2])
        }
        _ => return [l[0].forward(x.clone()), l[1].forward(x.clone()), l[2].forward(x)],
    };
    with_biases(ys, l, b, t)
}

/// The three `[B·T, Nᵢ]` products of [`linear3`] with each layer's bias added, as `[B, T, Nᵢ]`.
fn with_biases<B: HearthBackend>(ys: [Tensor<B, 2>; 3], l: [&Linear<B>; 3], b: usize, t: usize) -> [Tensor<B, 3>; 3] {
    let mut i = 0;
    ys.map(|y| {
        let n = y.dims()[1];
        let y = match &l[i].bias {
            Some(bias) => y + bias.clone().unsqueeze_dim::<2>(0),
            None => y,
        };
        i += 1;
        y.reshape([b, t, n])
    })
}

/// [`linear3`] on a block input: with three device weights a [`BlockInput::Raw`] input goes
/// through one [`HearthBackend::norm_matmul3`] (the norm folded into the q/k/v launch on the
/// cubecl backends) and a [`BlockInput::Summed`] one through [`HearthBackend::sums_matmul3`]
/// (the norm applied in the launch's epilogue), biases added after; anything else normalises
/// first.
pub fn linear3_block<B: HearthBackend>(input: BlockInput<'_, B>, l: [&Linear<B>; 3]) -> [Tensor<B, 3>; 3] {
    let (Some(w0), Some(w1), Some(w2)) = (
        l[0].weight.as_weight(),
        l[1].weight.as_weight(),
        l[2].weight.as_weight(),
    ) else {
        return linear3(input.normed(), l);
    };
    let [b, t, inp] = input.dims();
    let ys = match input {
        BlockInput::Raw(x, norm) => B::norm_matmul3(x.reshape([b * t, inp]), norm.pre(), [w0, w1, w2]),
        BlockInput::Summed(hg, norm, sums, slot) => {
            B::sums_matmul3(hg.reshape([b * t, inp]), sums, slot, norm.eps, [w0, w1, w2])
        }
        normed => return linear3(normed.normed(), l),
    };
    with_biases(ys.expect("weight sizes are checked at load"), l, b, t)
}

/// Reads tensors from a [`WeightStore`](crate::WeightStore) onto a device, checking shapes.
pub struct Loader<'a, B: HearthBackend> {
    /// The checkpoint.
    pub store: &'a dyn TensorSource,
    /// Target device.
    pub device: B::Device,
    /// Quantize f32/bf16 matrices to this format while loading: any kernel format on host
    /// backends; on device backends the formats with a device kernel ([`device_format`]),
    /// uploaded packed.
    pub quant: Option<WeightFormat>,
    /// Ignore the source's packed form and dequantize to f32.
    pub unpacked: bool,
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
        Ok(RmsNorm {
            weight: self.vector(name, len)?,
            eps,
        })
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
    /// On host-memory backends the weight stays packed in row-major `[out, in]` for the CPU
    /// kernels; elsewhere it is uploaded packed when [`Self::device_packed`] gives blocks, and
    /// otherwise becomes an f32 device tensor `[out, in]` used through its transposed view.
    pub fn linear(&self, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Linear<B>, ModelError> {
        let name = format!("{prefix}.weight");
        let weight = if B::HOST_KERNELS {
            LinearWeight::Host(Arc::new(self.host_weight(&name, out, inp)?))
        } else if let Some(p) = self.device_packed(&name, out, inp)? {
            LinearWeight::Packed(p)
        } else {
            // HF's row-major [out, in] as is, used through a transposed view: the device
            // backends' matrix × vector reads each output's weights as one contiguous row
            let (w, _) = self.store.f32(&name, Some(&[out, inp]))?;
            LinearWeight::Device(Tensor::<B, 2>::from_data(TensorData::new(w, [out, inp]), &self.device).transpose())
        };
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// A `[rows, cols]` matrix as device blocks, when it should be one: the source's own
    /// packing if the device runs it ([`device_format`]: GGUF Q8_0/Q4_0/Q4_K/Q6_K) and
    /// `unpacked` is off, else — for float sources, or any source with `unpacked` — the f32
    /// values quantized on the host to `self.quant` when that is a device format and the row
    /// length allows (as [`Self::host_weight`] does for the CPU kernels). `Ok(None)` means
    /// "use f32" (no `quant`, packed formats without a device kernel such as Q4_1, rows that
    /// are not whole blocks).
    pub fn device_packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedMatrix<B>>, ModelError> {
        let upload = |format: PackedFormat, bytes: &[u8]| {
            B::upload_packed(format, bytes, rows, cols, &self.device).map_err(|source| ModelError::Backend {
                tensor: name.into(),
                source,
            })
        };
        if !self.unpacked
            && let Some(p) = self.store.packed(name, rows, cols)?
        {
            if let Some(f) = device_format(p.format) {
                return upload(f, &p.bytes).map(Some);
            }
            if !matches!(p.format, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16) {
                return Ok(None); // blocks the device cannot run: dequantized to f32
            }
        }
        if let Some(q) = self.quant
            && let Some(f) = device_format(q)
            && cols.is_multiple_of(q.block_size())
        {
            let (w, _) = self.store.f32(name, Some(&[rows, cols]))?;
            let bytes = hearth_quant::quantize_to_vec(q.ggml(), &w).map_err(|e| ModelError::Dtype {
                file: "<in-situ quantization>".into(),
                tensor: name.into(),
                dtype: format!("{q:?}: {e}"),
            })?;
            return upload(f, &bytes).map(Some);
        }
        Ok(None)
    }

    /// A packed host matrix: the source's own packing if it has one, else f32 quantized to
    /// `self.quant` when the row length allows, else plain f32.
    pub fn host_weight(&self, name: &str, rows: usize, cols: usize) -> Result<HostWeight, ModelError> {
        let w = self.host_weight_as(name, rows, cols, self.quant)?;
        if self.unpacked {
            Ok(w)
        } else {
            w.into_preferred_layout()
        }
    }

    /// [`Self::host_weight`] with an explicit in-situ quantization (`None`: keep the source's
    /// format; used for embedding tables, which stay as stored).
    pub fn host_weight_as(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        quant: Option<WeightFormat>,
    ) -> Result<HostWeight, ModelError> {
        if !self.unpacked
            && let Some(p) = self.store.packed(name, rows, cols)?
        {
            // float checkpoints (mapped in place) still go through in-situ quantization
            let float_src = matches!(p.format, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16);
            let requantize =
                quant.is_some_and(|q| q != p.format && q != WeightFormat::F32 && cols.is_multiple_of(q.block_size()));
            if !(float_src && requantize) {
                return Ok(HostWeight {
                    format: p.format,
                    bytes: p.bytes,
                    rows,
                    cols,
                });
            }
        }
        let (w, _) = self.store.f32(name, Some(&[rows, cols]))?;
        if let Some(q) = quant
            && q != WeightFormat::F32
            && cols.is_multiple_of(q.block_size())
        {
            let bytes = hearth_quant::quantize_to_vec(q.ggml(), &w).map_err(|e| ModelError::Dtype {
                file: "<in-situ quantization>".into(),
                tensor: name.into(),
                dtype: format!("{q:?}: {e}"),
            })?;
            return Ok(HostWeight {
                format: q,
                bytes: bytes.into(),
                rows,
                cols,
            });
        }
        Ok(HostWeight {
            format: WeightFormat::F32,
            bytes: bytemuck::cast_slice(&w).to_vec().into(),
            rows,
            cols,
        })
    }

    /// A gated MLP with projections named `gate`, `up`, `down` under `prefix`.
    pub fn mlp(
        &self,
        prefix: &str,
        hidden: usize,
        inter: usize,
        bias: bool,
        names: [&str; 3],
    ) -> Result<Mlp<B>, ModelError> {
        Ok(Mlp {
            gate: self.linear(&format!("{prefix}.{}", names[0]), hidden, inter, bias)?,
            up: self.linear(&format!("{prefix}.{}", names[1]), hidden, inter, bias)?,
            down: self.linear(&format!("{prefix}.{}", names[2]), inter, hidden, bias)?,
        })
    }
}

/// The device packed format of a kernel weight format, for the formats the device kernels run
/// on their blocks (Q8_0, Q4_0, Q4_K, Q6_K); `None` for float formats (those become f32
/// device tensors) and for blocks without a device kernel (Q4_1).
///
/// ```
/// use hearth_models::layers::device_format;
/// use hearth_quant::kernels::WeightFormat;
/// assert_eq!(device_format(WeightFormat::Q4_K), Some(hearth_backend::PackedFormat::Q4_K));
/// assert_eq!(device_format(WeightFormat::Q4_1), None);
/// assert_eq!(device_format(WeightFormat::F32), None);
/// ```
pub fn device_format(f: WeightFormat) -> Option<PackedFormat> {
    match f {
        WeightFormat::Q8_0 => Some(PackedFormat::Q8_0),
        WeightFormat::Q4_0 => Some(PackedFormat::Q4_0),
        WeightFormat::Q4_K => Some(PackedFormat::Q4_K),
        WeightFormat::Q6_K => Some(PackedFormat::Q6_K),
        // (the interleaved CPU layouts never come from a source: they are made at load)
        WeightFormat::F32
        | WeightFormat::Bf16
        | WeightFormat::F16
        | WeightFormat::Q4_1
        | WeightFormat::Q8_0x16
        | WeightFormat::Q4_0x16 => None,
    }
}

/// `sigmoid(x)` re-exported for gates.
pub fn sigmoid<B: HearthBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    activation::sigmoid(x)
}
