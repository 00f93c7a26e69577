//! hearth-backend: which burn backend runs a model, on which device, in which dtype, and the
//! extension trait through which fused or custom kernels plug in per backend.
//!
//! Every model in hearth is generic over `B: HearthBackend`. [`HearthBackend`] is a burn
//! [`Backend`] plus a handful of operations that inference engines fuse (RMSNorm, SwiGLU,
//! rotary embedding, attention over a KV cache). Each has a default implementation written with
//! plain burn ops (the *fallback*), so a new backend works as soon as it implements the trait
//! with an empty body; a backend with a faster kernel overrides just that method.
//!
//! ```
//! use hearth_backend::{BackendKind, DType};
//! let kind: BackendKind = "cpu".parse().unwrap();
//! assert_eq!(kind, BackendKind::Cpu);
//! assert!(kind.is_compiled() || !cfg!(feature = "cpu"));
//! assert_eq!("bf16".parse::<DType>().unwrap(), DType::Bf16);
//! ```

pub use burn;

use burn::tensor::{Tensor, backend::Backend};
use std::str::FromStr;

#[cfg(feature = "cube")]
pub mod cube;
pub mod ops;
mod packed;
pub mod profile;

pub use packed::{BLOCK as PACKED_BLOCK, K_BLOCK as PACKED_K_BLOCK, PackedFormat, PackedMatrix, PackedStorage};

/// The CPU backend used by default (burn's ndarray backend, f32).
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::NdArray<f32>;
/// The wgpu backend (Vulkan, Metal, DX12 through wgpu). Floats default to f32; see
/// [`set_compute_dtype`] for f16.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;
/// The CUDA backend (cubecl, kernels compiled at run time with NVRTC). Floats default to f32;
/// see [`set_compute_dtype`] for f16/bf16.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// Errors of backend and dtype selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The backend name is not one hearth knows.
    #[error("unknown backend `{0}` (expected cpu, wgpu or cuda)")]
    Unknown(String),
    /// The backend exists but this binary was built without its cargo feature.
    #[error("backend `{name}` is not compiled into this build: rebuild with `--features {name}`")]
    NotCompiled {
        /// Backend name.
        name: &'static str,
    },
    /// The backend is compiled in but has no usable device here (no Vulkan adapter, no CUDA
    /// driver or GPU, ...).
    #[error("backend `{backend}` has no usable device: {reason}")]
    DeviceUnavailable {
        /// Backend name.
        backend: &'static str,
        /// What the runtime reported.
        reason: String,
    },
    /// The dtype name is not one hearth knows.
    #[error("unknown dtype `{0}` (expected f32, f16 or bf16)")]
    UnknownDType(String),
    /// The dtype is known but the backend cannot compute in it.
    #[error("dtype {dtype:?} is not supported for compute on backend `{backend}`")]
    DTypeUnsupported {
        /// Requested dtype.
        dtype: DType,
        /// Backend name.
        backend: &'static str,
    },
    /// The backend supports the dtype in general but this device does not (e.g. bf16 on
    /// Vulkan, f16 on a device without `shaderFloat16`).
    #[error("dtype {dtype:?} is not supported for compute on this {backend} device ({device})")]
    DTypeUnsupportedOnDevice {
        /// Requested dtype.
        dtype: DType,
        /// Backend name.
        backend: &'static str,
        /// The device, as burn prints it.
        device: String,
    },
    /// The device's default dtype was already fixed (a tensor was created on it before
    /// [`set_compute_dtype`]).
    #[error("cannot set the compute dtype of {device}: {reason}")]
    DeviceDTypeLocked {
        /// The device, as burn prints it.
        device: String,
        /// burn's reason.
        reason: String,
    },
    /// The packed format name is not one hearth's device kernels know.
    #[error("unknown packed weight format `{0}` (expected f32, q8_0, q4_0, q4_k or q6_k)")]
    UnknownPackedFormat(String),
    /// Packed weight bytes do not match the matrix shape.
    #[error("packed {format:?} weight: {reason}")]
    PackedShape {
        /// Format of the bytes.
        format: PackedFormat,
        /// What is wrong.
        reason: String,
    },
    /// Reading a tensor back from the device failed.
    #[error("reading a tensor back from the device: {0}")]
    Read(String),
    /// Operands of a kernel have incompatible shapes.
    #[error("{op}: {reason}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A compute backend, chosen at run time (`--backend cpu|wgpu|cuda`).
///
/// ```
/// use hearth_backend::BackendKind;
/// assert_eq!(BackendKind::Cuda.name(), "cuda");
/// assert!("tpu".parse::<BackendKind>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// burn-ndarray on the host CPU.
    #[default]
    Cpu,
    /// burn-wgpu (Vulkan and friends).
    Wgpu,
    /// burn-cuda.
    Cuda,
}

impl BackendKind {
    /// Lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this build contains the backend (its cargo feature was enabled).
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Cpu => cfg!(feature = "cpu"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// `Ok(self)` if compiled in, else a [`BackendError::NotCompiled`] that says how to get it.
    pub fn ensure_compiled(self) -> Result<Self, BackendError> {
        if self.is_compiled() {
            Ok(self)
        } else {
            Err(BackendError::NotCompiled { name: self.name() })
        }
    }

    /// Compute dtypes this backend can support in hearth: f32 everywhere; f16 on wgpu (devices
    /// with `shaderFloat16`) and CUDA; bf16 on CUDA (Vulkan has bf16 only as a storage type).
    /// Whether a particular device does is checked by [`set_compute_dtype`] /
    /// [`device_supports`].
    pub fn supports(self, dtype: DType) -> bool {
        match self {
            BackendKind::Cpu => dtype == DType::F32,
            BackendKind::Wgpu => dtype != DType::Bf16,
            BackendKind::Cuda => true,
        }
    }

    /// Checks that `dtype` can be used for compute on this backend.
    pub fn check_dtype(self, dtype: DType) -> Result<(), BackendError> {
        if self.supports(dtype) {
            Ok(())
        } else {
            Err(BackendError::DTypeUnsupported {
                dtype,
                backend: self.name(),
            })
        }
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "ndarray" => Ok(BackendKind::Cpu),
            "wgpu" | "vulkan" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(BackendError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Floating-point dtypes for weights on disk and for compute.
///
/// ```
/// use hearth_backend::DType;
/// assert_eq!(DType::Bf16.size_in_bytes(), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// The burn dtype.
    ///
    /// ```
    /// assert_eq!(hearth_backend::DType::Bf16.burn(), burn::tensor::DType::BF16);
    /// ```
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            DType::F32 => burn::tensor::DType::F32,
            DType::F16 => burn::tensor::DType::F16,
            DType::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// Whether `device` of backend `B` can compute in `dtype` (storage, conversion and arithmetic;
/// burn's `Backend::supports_dtype`).
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use hearth_backend::{Cpu, DType, device_supports};
/// assert!(device_supports::<Cpu>(&Default::default(), DType::F32));
/// # }
/// ```
pub fn device_supports<B: Backend>(device: &B::Device, dtype: DType) -> bool {
    B::supports_dtype(device, dtype.burn())
}

/// Makes `dtype` the float dtype of every tensor later created on `device` (weights are
/// converted on upload; kernels accumulate in f32). Call before any tensor exists on the
/// device. f32 is always accepted (and is a no-op when nothing else was set).
///
/// Errors: [`BackendError::DTypeUnsupported`] if hearth does not support the dtype on this
/// backend kind, [`BackendError::DTypeUnsupportedOnDevice`] if the device lacks it, and
/// [`BackendError::DeviceDTypeLocked`] if the device's defaults are already fixed.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use hearth_backend::{BackendError, BackendKind, Cpu, DType, set_compute_dtype};
/// let dev = Default::default();
/// assert_eq!(set_compute_dtype::<Cpu>(BackendKind::Cpu, &dev, DType::F32), Ok(()));
/// assert!(matches!(
///     set_compute_dtype::<Cpu>(BackendKind::Cpu, &dev, DType::Bf16),
///     Err(BackendError::DTypeUnsupported { .. })
/// ));
/// # }
/// ```
pub fn set_compute_dtype<B: Backend>(kind: BackendKind, device: &B::Device, dtype: DType) -> Result<(), BackendError> {
    kind.check_dtype(dtype)?;
    if dtype == DType::F32 {
        return Ok(()); // every backend hearth builds defaults to f32
    }
    if !device_supports::<B>(device, dtype) {
        return Err(BackendError::DTypeUnsupportedOnDevice {
            dtype,
            backend: kind.name(),
            device: format!("{device:?}"),
        });
    }
    let float = match dtype {
        DType::F32 => burn::tensor::FloatDType::F32,
        DType::F16 => burn::tensor::FloatDType::F16,
        DType::Bf16 => burn::tensor::FloatDType::BF16,
    };
    burn::tensor::backend::set_default_float_dtype::<B>(device, float).map_err(|e| BackendError::DeviceDTypeLocked {
        device: format!("{device:?}"),
        reason: e.to_string(),
    })
}

impl FromStr for DType {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            other => Err(BackendError::UnknownDType(other.to_string())),
        }
    }
}

/// A weight matrix a product reads: dense `[K, N]` (the transposed view of a row-major
/// `[N, K]`, as hearth keeps device weights) or packed blocks `[N, K]`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, Weight};
/// let w = Tensor::<Cpu, 2>::ones([4, 2], &Default::default());
/// assert!(matches!(Weight::Dense(&w), Weight::Dense(_)));
/// # }
/// ```
pub enum Weight<'a, B: HearthBackend> {
    /// A dense `[K, N]` tensor, multiplied with [`HearthBackend::matmul`].
    Dense(&'a Tensor<B, 2>),
    /// Packed `[N, K]` blocks, multiplied with [`HearthBackend::packed_matmul`].
    Packed(&'a PackedMatrix<B>),
}

impl<B: HearthBackend> Clone for Weight<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: HearthBackend> Copy for Weight<'_, B> {}

impl<B: HearthBackend> Weight<'_, B> {
    /// `x · W` for `x: [M, K]`: [`HearthBackend::matmul`] or [`HearthBackend::packed_matmul`].
    ///
    /// Errors: those of [`HearthBackend::packed_matmul`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, Weight};
    /// let dev = Default::default();
    /// let w = Tensor::<Cpu, 2>::ones([4, 2], &dev);
    /// let y = Weight::Dense(&w).product(Tensor::ones([1, 4], &dev)).unwrap();
    /// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![4.0, 4.0]);
    /// # }
    /// ```
    pub fn product(self, x: Tensor<B, 2>) -> Result<Tensor<B, 2>, BackendError> {
        match self {
            Weight::Dense(w) => Ok(B::matmul(x, w.clone())),
            Weight::Packed(p) => B::packed_matmul(x, p),
        }
    }
}

/// One routed expert of a MoE layer, as an operand of [`HearthBackend::moe_experts`]: its
/// gate, up and down projections (`gate, up: [K, I]`, `down: [I, K]` as [`Weight`]s).
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, Expert, Weight};
/// let dev = Default::default();
/// let (gu, d) = (Tensor::<Cpu, 2>::ones([4, 2], &dev), Tensor::<Cpu, 2>::ones([2, 4], &dev));
/// let e = Expert { gate: Weight::Dense(&gu), up: Weight::Dense(&gu), down: Weight::Dense(&d) };
/// assert!(matches!(e.down, Weight::Dense(_)));
/// # }
/// ```
pub struct Expert<'a, B: HearthBackend> {
    /// Gate projection (`w1`).
    pub gate: Weight<'a, B>,
    /// Up projection (`w3`).
    pub up: Weight<'a, B>,
    /// Down projection (`w2`).
    pub down: Weight<'a, B>,
}

impl<B: HearthBackend> Clone for Expert<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: HearthBackend> Copy for Expert<'_, B> {}

/// An RMSNorm folded into the products that consume its output (see
/// [`HearthBackend::norm_matmul3`]): the scale `[K]` and epsilon.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, PreNorm};
/// let g = Tensor::<Cpu, 1>::ones([4], &Default::default());
/// let n = PreNorm { weight: &g, eps: 1e-6 };
/// assert_eq!(n.eps, 1e-6);
/// # }
/// ```
pub struct PreNorm<'a, B: Backend> {
    /// The norm's scale `[K]`.
    pub weight: &'a Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Backend> Clone for PreNorm<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for PreNorm<'_, B> {}

/// Sums of squares of residual-stream rows, carried from the product that adds a block's
/// output to the stream to the first products of the next block, which apply that block's
/// RMSNorm from them (see [`HearthBackend::norm_sums`]): `slots` norms of `rows` rows each, in
/// f32, zeroed when made. Each slot is written once per forward, by
/// [`HearthBackend::sums_norm`] or [`HearthBackend::matmul_add_sums`], and read by
/// [`HearthBackend::sums_matmul3`], [`HearthBackend::sums_matmul_silu`] or
/// [`ops::sums_normed`]. The cubecl backends write the buffer in place.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, HearthBackend, NormSums};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 2, &dev);
/// let g = Tensor::<Cpu, 1>::ones([2], &dev);
/// let hg = Cpu::sums_norm(Tensor::from_floats([[3.0, 4.0]], &dev), &g, &sums, 1).unwrap();
/// assert_eq!(sums.slot(1).into_data().to_vec::<f32>().unwrap(), vec![25.0]);
/// assert_eq!(hg.into_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
/// # }
/// ```
pub struct NormSums<B: Backend> {
    buf: std::cell::RefCell<Tensor<B, 1>>,
    rows: usize,
    slots: usize,
}

impl<B: Backend> NormSums<B> {
    /// A zeroed buffer (f32, whatever the float dtype) for `slots` norms of `rows` rows.
    pub fn zeroed(rows: usize, slots: usize, device: &B::Device) -> Self {
        let buf = Tensor::zeros([rows * slots], (device, burn::tensor::DType::F32));
        NormSums {
            buf: std::cell::RefCell::new(buf),
            rows,
            slots,
        }
    }

    /// Rows per slot.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The sums of slot `slot`, `[rows]` f32 (a copy). Panics if `slot >= slots`.
    pub fn slot(&self, slot: usize) -> Tensor<B, 1> {
        assert!(slot < self.slots, "slot {slot} of {}", self.slots);
        let at = slot * self.rows;
        self.buf.borrow().clone().slice(at..at + self.rows)
    }

    /// The whole buffer `[slots · rows]` (kernels write through its handle).
    pub fn buffer(&self) -> Tensor<B, 1> {
        self.buf.borrow().clone()
    }

    /// Checks `slot` and `rows` against the buffer.
    pub fn check(&self, op: &'static str, slot: usize, rows: usize) -> Result<(), BackendError> {
        if slot >= self.slots || rows != self.rows {
            return Err(BackendError::ShapeMismatch {
                op,
                reason: format!(
                    "slot {slot} of {} rows for [{rows}, _] (the buffer has {} slots of {} rows)",
                    self.slots, self.slots, self.rows
                ),
            });
        }
        Ok(())
    }

    /// Adds `v: [rows]` (f32) to slot `slot` (the fallback's write).
    pub fn add(&self, slot: usize, v: Tensor<B, 1>) {
        let at = slot * self.rows;
        let mut buf = self.buf.borrow_mut();
        let cur = buf.clone().slice(at..at + self.rows);
        *buf = buf.clone().slice_assign(at..at + self.rows, cur + v);
    }
}

/// The RoPE tables of a forward pass and how they apply (see [`HearthBackend::rope`]):
/// `cos`/`sin` `[B, 1, T, rope_dim]`, rotating the first `rope_dim` dims of each head, in
/// pairs `(2i, 2i + 1)` when `interleaved`, else `(i, i + rope_dim / 2)`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, RopeTables};
/// let c = Tensor::<Cpu, 4>::ones([1, 1, 1, 2], &Default::default());
/// let r = RopeTables { cos: &c, sin: &c, rope_dim: 2, interleaved: false };
/// assert_eq!(r.rope_dim, 2);
/// # }
/// ```
pub struct RopeTables<'a, B: Backend> {
    /// Cosines `[B, 1, T, rope_dim]`.
    pub cos: &'a Tensor<B, 4>,
    /// Sines `[B, 1, T, rope_dim]`.
    pub sin: &'a Tensor<B, 4>,
    /// Rotated dims per head.
    pub rope_dim: usize,
    /// Pairs `(2i, 2i + 1)` instead of `(i, i + rope_dim / 2)`.
    pub interleaved: bool,
}

impl<B: Backend> Clone for RopeTables<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for RopeTables<'_, B> {}

/// The extension trait every hearth model is generic over.
///
/// Each method has a fallback written with burn ops (see [`ops`]); a backend overrides a method
/// when it has a fused kernel. The fallbacks are the definition of correct that kernels are
/// tested against.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use hearth_backend::{Cpu, HearthBackend};
/// use burn::tensor::Tensor;
/// let dev = Default::default();
/// let x = Tensor::<Cpu, 2>::from_floats([[3.0, 4.0]], &dev);
/// let w = Tensor::<Cpu, 1>::from_floats([1.0, 1.0], &dev);
/// let y = Cpu::rms_norm(x, w, 0.0).into_data().to_vec::<f32>().unwrap();
/// let rms = (12.5f32).sqrt();
/// assert!((y[0] - 3.0 / rms).abs() < 1e-6 && (y[1] - 4.0 / rms).abs() < 1e-6);
/// # }
/// ```
pub trait HearthBackend: Backend {
    /// Whether tensors of this backend live in host memory, so that hearth's own CPU kernels
    /// (packed F32/BF16/Q8_0/Q4_0/... matrix × vector, `hearth_quant::kernels`) can run the
    /// linear layers instead of burn's matmul.
    const HOST_KERNELS: bool = false;

    /// Starts the device's runtime if needed and reports why it cannot run, instead of the
    /// panic burn would raise on the first tensor. Creates no tensor (so the compute dtype can
    /// still be chosen afterwards). See [`open_device`].
    fn probe_device(device: &Self::Device) -> Result<(), String> {
        let _ = device;
        Ok(())
    }

    /// The device's read bandwidth in bytes/s, measured now by a kernel that only streams
    /// `bytes` of memory (the yardstick for a decode step, which reads its weights once), or
    /// `None` where the backend has no such kernel (the fallback; callers then measure with
    /// burn ops).
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend};
    /// assert!(Cpu::read_bandwidth(&Default::default(), 1 << 20).is_none());
    /// # }
    /// ```
    fn read_bandwidth(device: &Self::Device, bytes: usize) -> Option<f64> {
        let _ = (device, bytes);
        None
    }

    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, computed in f32.
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        ops::rms_norm(x, weight, eps)
    }

    /// SwiGLU gate: `silu(gate) * up`.
    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        ops::silu_mul(gate, up)
    }

    /// Matrix product with [`Tensor::matmul`]'s contract (batch dims broadcast), computed in
    /// full f32 for f32 inputs: the cubecl backends override it so that CUDA never rounds f32
    /// operands to TF32 (burn's own f32 matmul there runs on tensor cores in TF32). Models use
    /// it for every product with device weights and inside attention.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend};
    /// use burn::tensor::Tensor;
    /// let dev = Default::default();
    /// let a = Tensor::<Cpu, 2>::from_floats([[1.0, 2.0]], &dev);
    /// let b = Tensor::<Cpu, 2>::from_floats([[3.0], [4.0]], &dev);
    /// assert_eq!(Cpu::matmul(a, b).into_data().to_vec::<f32>().unwrap(), vec![11.0]);
    /// # }
    /// ```
    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        lhs.matmul(rhs)
    }

    /// Uploads a `[rows = out, cols = in]` weight given in GGUF byte layout (see
    /// [`PackedFormat`]). The fallback dequantizes on the host and keeps f32; the cubecl
    /// backends keep the blocks and dequantize inside their kernels.
    ///
    /// Errors: [`BackendError::PackedShape`] when `bytes` is not a `[rows, cols]` matrix of
    /// whole blocks.
    fn upload_packed(
        format: PackedFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        device: &Self::Device,
    ) -> Result<PackedMatrix<Self>, BackendError> {
        PackedMatrix::dense_from_bytes(format, bytes, rows, cols, device)
    }

    /// `x · Wᵀ` for `x: [M, cols]` and a packed `W: [rows, cols]`, giving `[M, rows]`.
    ///
    /// Errors: [`BackendError::ShapeMismatch`] when `x` has the wrong width, and
    /// [`BackendError::PackedShape`] for storage this backend cannot read.
    fn packed_matmul(x: Tensor<Self, 2>, w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError> {
        w.check_input(x.dims())?;
        match w.storage() {
            PackedStorage::Dense(t) => Ok(Self::matmul(x, t.clone())),
            PackedStorage::Words(_) => Err(BackendError::PackedShape {
                format: w.format(),
                reason: "device-packed blocks need a backend with packed kernels".into(),
            }),
        }
    }

    /// The packed `W: [rows, cols]` as a dense row-major `[rows, cols]` f32 tensor on its
    /// device (to copy a device weight elsewhere, or to check a kernel). The fallback
    /// transposes its dense storage back; the cubecl backends dequantize their blocks on the
    /// device.
    ///
    /// Errors: [`BackendError::PackedShape`] for storage this backend cannot read.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend, PackedFormat};
    /// let bytes: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
    /// let w = Cpu::upload_packed(PackedFormat::F32, &bytes, 2, 32, &Default::default()).unwrap();
    /// let d = Cpu::dequantize_packed(&w).unwrap();
    /// assert_eq!(d.dims(), [2, 32]);
    /// assert_eq!(d.into_data().to_vec::<f32>().unwrap()[33], 33.0);
    /// # }
    /// ```
    fn dequantize_packed(w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError> {
        match w.storage() {
            PackedStorage::Dense(t) => Ok(t.clone().transpose()),
            PackedStorage::Words(_) => Err(BackendError::PackedShape {
                format: w.format(),
                reason: "device-packed blocks need a backend with packed kernels".into(),
            }),
        }
    }

    /// RoPE on the first `rope_dim` dims of each head of `x: [B, H, T, D]` with `cos`/`sin`
    /// `[B, 1, T, rope_dim]`; see [`ops::rope`] (the fallback) for the layouts. The cubecl
    /// backends run one element-wise kernel.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let x = Tensor::<Cpu, 4>::from_floats([[[[0.0, 1.0]]]], &dev);
    /// let one = Tensor::<Cpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev); // cos 0: swap with sign
    /// let sin = Tensor::<Cpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
    /// let y = Cpu::rope(x, &one, &sin, 2, false).into_data().to_vec::<f32>().unwrap();
    /// assert_eq!(y, vec![-1.0, 0.0]);
    /// # }
    /// ```
    fn rope(
        x: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
        rope_dim: usize,
        interleaved: bool,
    ) -> Tensor<Self, 4> {
        ops::rope(x, cos, sin, rope_dim, interleaved)
    }

    /// Residual add then RMSNorm: `(x + r, rms_norm(x + r))`, in one kernel on the cubecl
    /// backends (see [`ops::add_rms_norm`]).
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let x = Tensor::<Cpu, 2>::from_floats([[3.0, 0.0]], &dev);
    /// let r = Tensor::<Cpu, 2>::from_floats([[0.0, 4.0]], &dev);
    /// let (s, y) = Cpu::add_rms_norm(x, r, Tensor::from_floats([1.0, 1.0], &dev), 0.0);
    /// assert_eq!(s.into_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
    /// let y = y.into_data().to_vec::<f32>().unwrap();
    /// assert!((y[1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
    /// # }
    /// ```
    fn add_rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        r: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        ops::add_rms_norm(x, r, weight, eps)
    }

    /// `x · Wᵢᵀ` for three packed weights that share the input (q/k/v projections): one
    /// launch on the cubecl backends when the three are device blocks of one format and `x`
    /// has few rows. The fallback is three [`Self::packed_matmul`]s.
    ///
    /// Errors: those of [`Self::packed_matmul`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, PackedFormat};
    /// let dev = Default::default();
    /// let bytes: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    /// let w = Cpu::upload_packed(PackedFormat::F32, &bytes, 1, 32, &dev).unwrap();
    /// let [a, b, c] = Cpu::packed_matmul3(Tensor::ones([1, 32], &dev), [&w, &w, &w]).unwrap();
    /// assert_eq!(a.into_data().to_vec::<f32>().unwrap(), vec![496.0]);
    /// assert_eq!(b.dims(), c.dims());
    /// # }
    /// ```
    fn packed_matmul3(x: Tensor<Self, 2>, w: [&PackedMatrix<Self>; 3]) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        Ok([
            Self::packed_matmul(x.clone(), w[0])?,
            Self::packed_matmul(x.clone(), w[1])?,
            Self::packed_matmul(x, w[2])?,
        ])
    }

    /// SwiGLU with packed weights: `silu(x · Gᵀ) · (x · Uᵀ)`, one launch on the cubecl backends
    /// (both products and the gate in one kernel) when `gate` and `up` are device blocks of one
    /// format and `x` has few rows. The fallback is two [`Self::packed_matmul`]s and
    /// [`Self::silu_mul`].
    ///
    /// Errors: those of [`Self::packed_matmul`], and [`BackendError::ShapeMismatch`] when the
    /// two weights differ in shape.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, PackedFormat};
    /// let dev = Default::default();
    /// let bytes: Vec<u8> = (0..32).flat_map(|_| 1f32.to_le_bytes()).collect();
    /// let w = Cpu::upload_packed(PackedFormat::F32, &bytes, 1, 32, &dev).unwrap();
    /// let y = Cpu::packed_matmul_silu(Tensor::zeros([1, 32], &dev), &w, &w).unwrap();
    /// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0]);
    /// # }
    /// ```
    fn packed_matmul_silu(
        x: Tensor<Self, 2>,
        gate: &PackedMatrix<Self>,
        up: &PackedMatrix<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        if gate.rows() != up.rows() || gate.cols() != up.cols() {
            return Err(BackendError::ShapeMismatch {
                op: "packed_matmul_silu",
                reason: format!(
                    "gate is [{}, {}], up [{}, {}]",
                    gate.rows(),
                    gate.cols(),
                    up.rows(),
                    up.cols()
                ),
            });
        }
        let g = Self::packed_matmul(x.clone(), gate)?;
        let u = Self::packed_matmul(x, up)?;
        Ok(Self::silu_mul(g, u))
    }

    /// `[x · w₀, x · w₁, x · w₂]` for dense weights `wᵢ: [K, Nᵢ]` (attention's q/k/v): one
    /// launch on the cubecl backends when `x` has few rows and the weights are transposed
    /// views of row-major matrices (as hearth's loader keeps them); otherwise, and in the
    /// fallback, three [`Self::matmul`]s.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let w = Tensor::<Cpu, 2>::ones([4, 2], &dev);
    /// let [q, k, _] = Cpu::matmul3(Tensor::ones([1, 4], &dev), [&w, &w, &w]);
    /// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![4.0, 4.0]);
    /// assert_eq!(k.dims(), [1, 2]);
    /// # }
    /// ```
    fn matmul3(x: Tensor<Self, 2>, w: [&Tensor<Self, 2>; 3]) -> [Tensor<Self, 2>; 3] {
        w.map(|wi| Self::matmul(x.clone(), wi.clone()))
    }

    /// SwiGLU with dense weights `gate, up: [K, N]`: `silu(x · gate) · (x · up)`, one launch on
    /// the cubecl backends under the conditions of [`Self::matmul3`]; otherwise two
    /// [`Self::matmul`]s and [`Self::silu_mul`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let w = Tensor::<Cpu, 2>::ones([4, 3], &dev);
    /// let y = Cpu::matmul_silu(Tensor::zeros([1, 4], &dev), &w, &w);
    /// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    /// # }
    /// ```
    fn matmul_silu(x: Tensor<Self, 2>, gate: &Tensor<Self, 2>, up: &Tensor<Self, 2>) -> Tensor<Self, 2> {
        let g = Self::matmul(x.clone(), gate.clone());
        let u = Self::matmul(x, up.clone());
        Self::silu_mul(g, u)
    }

    /// The routed experts of a MoE layer: for each token `t` of `x: [n, K]` and each of its
    /// experts `j` (`experts[t·k .. (t + 1)·k]` with routing weights `weights[..]` alike,
    /// `k = experts.len() / n`), `Σⱼ wⱼ · downⱼ(silu(gateⱼ · xₜ) ⊙ upⱼ · xₜ)`, `[n, K]`. The
    /// cubecl backends run a decode step's (≤ 4 tokens, ≤ 8 experts each, dense or F32/Q8_0/Q4_0
    /// experts) in two launches per token (`cube::moe_experts`); the fallback, and every other
    /// case, is [`ops::moe_experts`], expert by expert.
    ///
    /// Errors: those of [`ops::moe_experts`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, Expert, HearthBackend, Weight};
    /// let dev = Default::default();
    /// let (gu, d) = (Tensor::<Cpu, 2>::ones([2, 3], &dev), Tensor::<Cpu, 2>::ones([3, 2], &dev));
    /// let e = Expert { gate: Weight::Dense(&gu), up: Weight::Dense(&gu), down: Weight::Dense(&d) };
    /// let y = Cpu::moe_experts(Tensor::zeros([2, 2], &dev), &[e, e], &[1.0, 1.0]).unwrap();
    /// assert_eq!(y.dims(), [2, 2]);
    /// # }
    /// ```
    fn moe_experts(
        x: Tensor<Self, 2>,
        experts: &[Expert<Self>],
        weights: &[f32],
    ) -> Result<Tensor<Self, 2>, BackendError> {
        ops::moe_experts(x, experts, weights)
    }

    /// Whether models should hand [`Self::norm_matmul3`] / [`Self::norm_matmul_silu`] the raw
    /// residual stream (and add residuals with [`Self::matmul_add`]) instead of normalising
    /// first: `false` here (the fallbacks gain nothing from it); the cubecl backends follow
    /// `cube::fold_norms` (feature `wgpu` or `cuda`).
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend};
    /// assert!(!Cpu::folds_norms());
    /// # }
    /// ```
    fn folds_norms() -> bool {
        false
    }

    /// `[RMSNorm(h) · w₀, RMSNorm(h) · w₁, RMSNorm(h) · w₂]` for the residual stream `h: [M, K]`
    /// (attention's q/k/v after the layer's input norm). The cubecl backends fold the norm into
    /// one matrix × vector launch when `h` has few rows and the three weights are dense views
    /// or vector-format blocks (every cube normalises its own copy of `h`: no separate norm
    /// launch); the fallback ([`ops::norm_matmul3`]) normalises, then multiplies.
    ///
    /// Errors: those of [`Self::packed_matmul`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, PreNorm, Weight};
    /// let dev = Default::default();
    /// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
    /// let h = Tensor::<Cpu, 2>::from_floats([[3.0, 4.0]], &dev);
    /// let [q, _, _] = Cpu::norm_matmul3(h, PreNorm { weight: &g, eps: 0.0 }, [Weight::Dense(&w); 3]).unwrap();
    /// let q = q.into_data().to_vec::<f32>().unwrap()[0];
    /// assert!((q - 7.0 / 12.5f32.sqrt()).abs() < 1e-5);
    /// # }
    /// ```
    fn norm_matmul3(
        h: Tensor<Self, 2>,
        norm: PreNorm<Self>,
        w: [Weight<Self>; 3],
    ) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        ops::norm_matmul3(h, norm, w)
    }

    /// `silu(RMSNorm(h) · gate) · (RMSNorm(h) · up)` for the residual stream `h: [M, K]` (an
    /// MLP after the layer's post-attention norm), folded into one launch on the cubecl
    /// backends under the conditions of [`Self::norm_matmul3`]; the fallback
    /// ([`ops::norm_matmul_silu`]) normalises, then runs [`Self::matmul_silu`] /
    /// [`Self::packed_matmul_silu`].
    ///
    /// Errors: those of [`Self::packed_matmul_silu`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, PreNorm, Weight};
    /// let dev = Default::default();
    /// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 3], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
    /// let y = Cpu::norm_matmul_silu(Tensor::zeros([1, 2], &dev), PreNorm { weight: &g, eps: 1e-6 }, Weight::Dense(&w), Weight::Dense(&w));
    /// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    /// # }
    /// ```
    fn norm_matmul_silu(
        h: Tensor<Self, 2>,
        norm: PreNorm<Self>,
        gate: Weight<Self>,
        up: Weight<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        ops::norm_matmul_silu(h, norm, gate, up)
    }

    /// `residual + x · W` for `x: [M, K]` and `residual: [M, N]` (attention's output
    /// projection or an MLP's down projection added to the residual stream): the cubecl
    /// backends add in the matrix × vector kernel's epilogue when `x` has few rows; the
    /// fallback ([`ops::matmul_add`]) multiplies, then adds.
    ///
    /// Errors: those of [`Self::packed_matmul`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, Weight};
    /// let dev = Default::default();
    /// let w = Tensor::<Cpu, 2>::ones([2, 1], &dev);
    /// let y = Cpu::matmul_add(Tensor::ones([1, 2], &dev), Weight::Dense(&w), Tensor::ones([1, 1], &dev));
    /// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![3.0]);
    /// # }
    /// ```
    fn matmul_add(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        residual: Tensor<Self, 2>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        ops::matmul_add(x, w, residual)
    }

    /// A zeroed [`NormSums`] for `slots` norms of `rows` rows when models should carry the
    /// residual stream's sums of squares from each block's last product into the next
    /// block's first products ([`Self::matmul_add_sums`], [`Self::sums_matmul3`],
    /// [`Self::sums_matmul_silu`]: no RMSNorm launch between blocks), `None` when they should
    /// normalise on their own. `None` here; the cubecl backends answer `Some` for up to 4
    /// rows (their matrix × vector kernels) on devices with f32 atomic addition when
    /// unless `HEARTH_NORM_SUMS=0` (or `cube::set_norm_sums(Some(false))`).
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend};
    /// assert!(Cpu::norm_sums(1, 4, &Default::default()).is_none());
    /// # }
    /// ```
    fn norm_sums(rows: usize, slots: usize, device: &Self::Device) -> Option<NormSums<Self>> {
        let _ = (rows, slots, device);
        None
    }

    /// `x ⊙ weight` for `x: [M, K]` and the norm weight `[K]`, adding each row's `Σx²` to
    /// `sums` at `slot`: the input of [`Self::sums_matmul3`] / [`Self::sums_matmul_silu`] from
    /// a stream no product wrote (the embeddings). One launch on the cubecl backends; the
    /// fallback is [`ops::sums_norm`].
    ///
    /// Errors: [`BackendError::ShapeMismatch`] for a slot or row count the buffer does not
    /// have, or a weight that is not `[K]`.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, NormSums};
    /// let dev = Default::default();
    /// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
    /// let g = Tensor::<Cpu, 1>::from_floats([2.0, 2.0], &dev);
    /// let hg = Cpu::sums_norm(Tensor::from_floats([[1.0, 1.0]], &dev), &g, &sums, 0).unwrap();
    /// assert_eq!(hg.into_data().to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
    /// # }
    /// ```
    fn sums_norm(
        x: Tensor<Self, 2>,
        weight: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        ops::sums_norm(x, weight, sums, slot)
    }

    /// `h = residual + x · W` (as [`Self::matmul_add`]) and `h ⊙ next`, with each row's `Σh²`
    /// added to `sums` at `slot`, for the next block's norm of weight `next: [N]`. The cubecl
    /// backends do all of it in the matrix × vector kernel's epilogue (one atomic addition
    /// per cube); the fallback ([`ops::matmul_add_sums`]) runs [`Self::matmul_add`], then
    /// [`Self::sums_norm`].
    ///
    /// Errors: those of [`Self::matmul_add`] and [`Self::sums_norm`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, NormSums, Weight};
    /// let dev = Default::default();
    /// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
    /// let w = Tensor::<Cpu, 2>::ones([2, 1], &dev);
    /// let g = Tensor::<Cpu, 1>::from_floats([0.5], &dev);
    /// let (h, hg) = Cpu::matmul_add_sums(Tensor::ones([1, 2], &dev), Weight::Dense(&w), Tensor::ones([1, 1], &dev), &g, &sums, 0).unwrap();
    /// assert_eq!(h.into_data().to_vec::<f32>().unwrap(), vec![3.0]);
    /// assert_eq!(hg.into_data().to_vec::<f32>().unwrap(), vec![1.5]);
    /// assert_eq!(sums.slot(0).into_data().to_vec::<f32>().unwrap(), vec![9.0]);
    /// # }
    /// ```
    fn matmul_add_sums(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        residual: Tensor<Self, 2>,
        next: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Result<(Tensor<Self, 2>, Tensor<Self, 2>), BackendError> {
        ops::matmul_add_sums(x, w, residual, next, sums, slot)
    }

    /// `[RMSNorm(h) · w₀, RMSNorm(h) · w₁, RMSNorm(h) · w₂]` from `hg = h ⊙ g` (the norm's
    /// weight already applied, by [`Self::matmul_add_sums`] or [`Self::sums_norm`]) and the
    /// sums of squares of `h` in `sums` at `slot`: `(hg · wᵢ) / sqrt(Σh² / K + eps)`. The
    /// cubecl backends scale in the product's epilogue (the matrix × vector kernel does no
    /// more work per weight than without a norm); the fallback is [`ops::sums_matmul3`].
    ///
    /// Errors: those of [`Self::packed_matmul`], and [`BackendError::ShapeMismatch`] for a
    /// slot or row count the buffer does not have.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, NormSums, Weight};
    /// let dev = Default::default();
    /// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
    /// let g = Tensor::<Cpu, 1>::ones([2], &dev);
    /// let hg = Cpu::sums_norm(Tensor::from_floats([[3.0, 4.0]], &dev), &g, &sums, 0).unwrap();
    /// let w = Tensor::<Cpu, 2>::ones([2, 1], &dev);
    /// let [q, _, _] = Cpu::sums_matmul3(hg, &sums, 0, 0.0, [Weight::Dense(&w); 3]).unwrap();
    /// let q = q.into_data().to_vec::<f32>().unwrap()[0];
    /// assert!((q - 7.0 / 12.5f32.sqrt()).abs() < 1e-5);
    /// # }
    /// ```
    fn sums_matmul3(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        eps: f64,
        w: [Weight<Self>; 3],
    ) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        ops::sums_matmul3(hg, sums, slot, eps, w)
    }

    /// `silu(RMSNorm(h) · gate) · (RMSNorm(h) · up)` from `hg = h ⊙ g` and the sums of
    /// squares in `sums` at `slot`, as [`Self::sums_matmul3`] (one launch on the cubecl
    /// backends); the fallback is [`ops::sums_matmul_silu`].
    ///
    /// Errors: those of [`Self::packed_matmul_silu`] and [`Self::sums_matmul3`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, NormSums, Weight};
    /// let dev = Default::default();
    /// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
    /// let g = Tensor::<Cpu, 1>::ones([2], &dev);
    /// let hg = Cpu::sums_norm(Tensor::zeros([1, 2], &dev), &g, &sums, 0).unwrap();
    /// let w = Tensor::<Cpu, 2>::ones([2, 3], &dev);
    /// let y = Cpu::sums_matmul_silu(hg, &sums, 0, 1e-6, Weight::Dense(&w), Weight::Dense(&w)).unwrap();
    /// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    /// # }
    /// ```
    fn sums_matmul_silu(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        eps: f64,
        gate: Weight<Self>,
        up: Weight<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        ops::sums_matmul_silu(hg, sums, slot, eps, gate, up)
    }

    /// `dst` with `src` written at `offset` (per dimension), as
    /// `dst.slice_assign([o₀..o₀ + s₀, ..], src)` (KV-cache writes). The cubecl backends
    /// write in place with one launch when `dst` is not shared.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use hearth_backend::{Cpu, HearthBackend};
    /// use burn::tensor::Tensor;
    /// let dev = Default::default();
    /// let dst = Tensor::<Cpu, 4>::zeros([1, 1, 3, 2], &dev);
    /// let src = Tensor::<Cpu, 4>::ones([1, 1, 1, 2], &dev);
    /// let y = Cpu::write_at(dst, src, [0, 0, 1, 0]);
    /// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    /// # }
    /// ```
    fn write_at(dst: Tensor<Self, 4>, src: Tensor<Self, 4>, offset: [usize; 4]) -> Tensor<Self, 4> {
        ops::write_at(dst, src, offset)
    }

    /// Two [`Self::write_at`]s at one `offset` (a layer's K and V into their caches): one
    /// launch on the cubecl backends when both destinations are unshared.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let z = || Tensor::<Cpu, 4>::zeros([1, 1, 2, 1], &dev);
    /// let (k, v) = Cpu::write_at2(z(), Tensor::ones([1, 1, 1, 1], &dev), z(), Tensor::ones([1, 1, 1, 1], &dev), [0, 0, 1, 0]);
    /// assert_eq!(k.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
    /// assert_eq!(v.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
    /// # }
    /// ```
    fn write_at2(
        dst_a: Tensor<Self, 4>,
        src_a: Tensor<Self, 4>,
        dst_b: Tensor<Self, 4>,
        src_b: Tensor<Self, 4>,
        offset: [usize; 4],
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        (
            Self::write_at(dst_a, src_a, offset),
            Self::write_at(dst_b, src_b, offset),
        )
    }

    /// The first `len` entries of `t` along `dim` (a KV cache's filled part), as
    /// `t.narrow(dim, 0, len)`. The cubecl backends return a view of the same buffer with the
    /// same strides, never a copy (burn's slice copies there unless the cut falls on the
    /// allocator's alignment). Panics like `narrow` when `dim` or `len` is out of range.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let t = Tensor::<Cpu, 2>::from_floats([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev);
    /// let p = Cpu::prefix(t, 1, 2);
    /// assert_eq!(p.into_data().to_vec::<f32>().unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
    /// # }
    /// ```
    fn prefix<const D: usize>(t: Tensor<Self, D>, dim: usize, len: usize) -> Tensor<Self, D> {
        t.narrow(dim, 0, len)
    }

    /// [`Self::rope`] of two tensors with the same tables (attention's q and k): one launch on
    /// the cubecl backends.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let dev = Default::default();
    /// let x = Tensor::<Cpu, 4>::from_floats([[[[0.0, 1.0]]]], &dev);
    /// let cos = Tensor::<Cpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev);
    /// let sin = Tensor::<Cpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
    /// let (q, _) = Cpu::rope2(x.clone(), x, &cos, &sin, 2, false);
    /// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0]);
    /// # }
    /// ```
    fn rope2(
        a: Tensor<Self, 4>,
        b: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
        rope_dim: usize,
        interleaved: bool,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        (
            Self::rope(a, cos, sin, rope_dim, interleaved),
            Self::rope(b, cos, sin, rope_dim, interleaved),
        )
    }

    /// RoPE on `q: [B, H, T, D]` and `k: [B, Hkv, T, D]`, and the rotated `k` and `v` written
    /// into the caches at `offset` (as [`Self::write_at2`]): `(rotated q, k cache, v cache)`.
    /// One launch on the cubecl backends when the caches can be written in place; the fallback
    /// is [`Self::rope2`] then [`Self::write_at2`].
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend, RopeTables};
    /// let dev = Default::default();
    /// let x = || Tensor::<Cpu, 4>::from_floats([[[[0.0, 1.0]]]], &dev);
    /// let cos = Tensor::<Cpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev);
    /// let sin = Tensor::<Cpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
    /// let rope = RopeTables { cos: &cos, sin: &sin, rope_dim: 2, interleaved: false };
    /// let z = || Tensor::<Cpu, 4>::zeros([1, 1, 2, 2], &dev);
    /// let (q, kc, _) = Cpu::rope_write(x(), x(), x(), rope, z(), z(), [0, 0, 1, 0]);
    /// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0]);
    /// assert_eq!(kc.into_data().to_vec::<f32>().unwrap(), vec![0.0, 0.0, -1.0, 0.0]);
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    fn rope_write(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        rope: RopeTables<'_, Self>,
        k_cache: Tensor<Self, 4>,
        v_cache: Tensor<Self, 4>,
        offset: [usize; 4],
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        let (q, k) = Self::rope2(q, k, rope.cos, rope.sin, rope.rope_dim, rope.interleaved);
        let (kc, vc) = Self::write_at2(k_cache, k, v_cache, v, offset);
        (q, kc, vc)
    }

    /// Scaled dot-product attention with grouped query heads and an additive mask.
    ///
    /// `q`: `[B, H, T, D]`, `k`: `[B, Hkv, S, D]`, `v`: `[B, Hkv, S, Dv]`, `mask`: `[B, T, S]`
    /// additive (0 or −inf). `H` must be a multiple of `Hkv`; query head `h` reads KV head
    /// `h / (H / Hkv)`. Returns `[B, H, T, Dv]`.
    fn gqa_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Tensor<Self, 3>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        ops::gqa_attention_with(q, k, v, mask, scale, Self::matmul::<4>)
    }

    /// For `x: [rows, n]`, `[2 · rows]` ints: each row's index of its largest value (the first
    /// on ties), then per row 1 where the row holds a NaN, else 0 — a decode step's greedy
    /// tokens and their check, computed on the device. The fallback is [`ops::argmax_rows`]
    /// (burn ops); the cubecl backends run one cube per row.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::Tensor;
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let x = Tensor::<Cpu, 2>::from_floats([[1.0, 3.0, 3.0], [f32::NAN, 0.0, -1.0]], &Default::default());
    /// let out = Cpu::argmax_rows(x).into_data().convert::<i64>().to_vec::<i64>().unwrap();
    /// assert_eq!(out, vec![1, 1, 0, 1]);
    /// # }
    /// ```
    fn argmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 1, burn::tensor::Int> {
        ops::argmax_rows(x)
    }

    /// Starts reading the integers of `t` (e.g. a decode step's argmax tokens) back to the
    /// host now, after everything enqueued so far, and returns without waiting: the device
    /// goes on with whatever is enqueued after this call, and [`PendingInts::wait`] blocks only
    /// until this read is done. A decode loop can so enqueue step `n + 1`, fed with step `n`'s
    /// tokens on the device, before it looks at them on the host. The default reads at once
    /// (host backends have nothing to overlap); the cubecl backends enqueue the copy and a
    /// fence.
    ///
    /// ```
    /// # #[cfg(feature = "cpu")] {
    /// use burn::tensor::{Int, Tensor};
    /// use hearth_backend::{Cpu, HearthBackend};
    /// let t = Tensor::<Cpu, 1, Int>::from_ints([3, 1, 4], &Default::default());
    /// assert_eq!(Cpu::read_ints_later(t).wait().unwrap(), vec![3, 1, 4]);
    /// # }
    /// ```
    fn read_ints_later(t: Tensor<Self, 1, burn::tensor::Int>) -> PendingInts {
        PendingInts::ready(t.into_data())
    }
}

/// A device-to-host read of integers started by [`HearthBackend::read_ints_later`].
pub struct PendingInts {
    inner: Pending,
}

type ReadFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<burn::tensor::TensorData, String>> + Send>>;

enum Pending {
    Ready(burn::tensor::TensorData),
    Later(ReadFuture),
}

impl PendingInts {
    /// A read that is already done.
    pub fn ready(data: burn::tensor::TensorData) -> Self {
        PendingInts {
            inner: Pending::Ready(data),
        }
    }

    /// A read in flight: `fut` resolves to the data.
    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    pub(crate) fn later(fut: ReadFuture) -> Self {
        PendingInts {
            inner: Pending::Later(fut),
        }
    }

    /// Waits for the read and returns the values.
    ///
    /// Errors: [`BackendError::Read`] when the runtime reports a failed read or the data are
    /// not integers.
    pub fn wait(self) -> Result<Vec<i64>, BackendError> {
        let data = match self.inner {
            Pending::Ready(d) => d,
            Pending::Later(f) => block_on(f).map_err(BackendError::Read)?,
        };
        data.convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| BackendError::Read(format!("{e:?}")))
    }
}

/// Runs `f` to completion on this thread (the runtimes' read futures block inside their first
/// poll; this also serves ones that do not).
fn block_on<T>(mut f: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>) -> T {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(feature = "cpu")]
impl HearthBackend for Cpu {
    const HOST_KERNELS: bool = true;
}
// The wgpu and CUDA backends are both `burn_cubecl::CubeBackend`s: one generic implementation
// with hearth's cubecl kernels lives in `cube`.

/// Runs `f`, turning a panic into `Err(message)` without printing it.
#[cfg(feature = "cube")]
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime panicked".into())
    })
}

/// Prepares `device` of backend `B` (of kind `kind`) for a model computing in `dtype`: checks
/// that the backend is compiled in, that the device exists and starts, and sets its compute
/// dtype. Call once, before creating any tensor on the device.
///
/// Errors: [`BackendError::NotCompiled`], [`BackendError::DeviceUnavailable`] (e.g. no Vulkan
/// adapter, no CUDA driver), and those of [`set_compute_dtype`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use hearth_backend::{BackendKind, Cpu, DType, open_device};
/// open_device::<Cpu>(BackendKind::Cpu, &Default::default(), DType::F32).unwrap();
/// # }
/// ```
pub fn open_device<B: HearthBackend>(kind: BackendKind, device: &B::Device, dtype: DType) -> Result<(), BackendError> {
    kind.ensure_compiled()?;
    kind.check_dtype(dtype)?;
    B::probe_device(device).map_err(|reason| {
        let hint = match kind {
            BackendKind::Wgpu => "no Vulkan adapter started (install a Vulkan driver; Mesa's CPU driver is the `mesa-vulkan-drivers` package)",
            BackendKind::Cuda => "CUDA did not start (needs an NVIDIA GPU and driver)",
            BackendKind::Cpu => "the CPU backend did not start",
        };
        BackendError::DeviceUnavailable {
            backend: kind.name(),
            reason: format!("{hint}; the runtime said: {reason}"),
        }
    })?;
    set_compute_dtype::<B>(kind, device, dtype)
}

/// Configures the number of CPU threads used by hearth's CPU kernels (the global rayon pool).
/// Call once, before any model work; later calls are ignored and return `false`.
///
/// ```
/// let _ = hearth_backend::set_cpu_threads(2);
/// ```
pub fn set_cpu_threads(threads: usize) -> bool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_backend_and_dtype() {
        assert_eq!("CUDA".parse::<BackendKind>().unwrap(), BackendKind::Cuda);
        assert_eq!(
            "x".parse::<BackendKind>().unwrap_err(),
            BackendError::Unknown("x".into())
        );
        assert!("f8".parse::<DType>().is_err());
        assert!(BackendKind::Cpu.check_dtype(DType::Bf16).is_err());
    }

    #[test]
    fn dtype_support_per_backend_kind() {
        for k in [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda] {
            assert_eq!(k.check_dtype(DType::F32), Ok(()));
        }
        assert_eq!(BackendKind::Cuda.check_dtype(DType::Bf16), Ok(()));
        assert_eq!(BackendKind::Wgpu.check_dtype(DType::F16), Ok(()));
        assert_eq!(
            BackendKind::Wgpu.check_dtype(DType::Bf16).unwrap_err().to_string(),
            "dtype Bf16 is not supported for compute on backend `wgpu`"
        );
        assert_eq!(
            BackendKind::Cpu.check_dtype(DType::F16),
            Err(BackendError::DTypeUnsupported {
                dtype: DType::F16,
                backend: "cpu"
            })
        );
    }

    #[test]
    fn not_compiled_backend_is_an_error() {
        for k in [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda] {
            assert_eq!(k.ensure_compiled().is_ok(), k.is_compiled());
        }
    }
}
