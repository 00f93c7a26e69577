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

use burn::tensor::{Tensor, activation, backend::Backend};
use std::str::FromStr;

pub mod ops;

/// The CPU backend used by default (burn's ndarray backend, f32).
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::NdArray<f32>;
/// The wgpu backend (Vulkan, Metal, DX12 through wgpu), f32 compute.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32>;
/// The CUDA backend (cubecl, kernels compiled at run time with NVRTC), f32 compute.
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

    /// Compute dtypes this backend supports in hearth today.
    pub fn supports(self, dtype: DType) -> bool {
        match self {
            BackendKind::Cpu | BackendKind::Wgpu => dtype == DType::F32,
            BackendKind::Cuda => dtype == DType::F32,
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

    /// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`, computed in f32.
    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        ops::rms_norm(x, weight, eps)
    }

    /// SwiGLU gate: `silu(gate) * up`.
    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        activation::silu(gate) * up
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
        ops::gqa_attention(q, k, v, mask, scale)
    }
}

#[cfg(feature = "cpu")]
impl HearthBackend for Cpu {
    const HOST_KERNELS: bool = true;
}
#[cfg(feature = "wgpu")]
impl HearthBackend for Wgpu {}
#[cfg(feature = "cuda")]
impl HearthBackend for Cuda {}

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
    fn gpu_backends_compute_in_f32_only() {
        for k in [BackendKind::Wgpu, BackendKind::Cuda] {
            assert_eq!(k.check_dtype(DType::F32), Ok(()));
            for dtype in [DType::F16, DType::Bf16] {
                assert_eq!(
                    k.check_dtype(dtype),
                    Err(BackendError::DTypeUnsupported {
                        dtype,
                        backend: k.name()
                    })
                );
            }
        }
        assert_eq!(
            BackendKind::Cuda.check_dtype(DType::Bf16).unwrap_err().to_string(),
            "dtype Bf16 is not supported for compute on backend `cuda`"
        );
    }

    #[test]
    fn not_compiled_backend_is_an_error() {
        for k in [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda] {
            assert_eq!(k.ensure_compiled().is_ok(), k.is_compiled());
        }
    }
}
