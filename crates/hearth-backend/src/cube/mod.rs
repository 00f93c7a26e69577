//! hearth's cubecl kernels, shared by every `burn_cubecl::CubeBackend` (wgpu/Vulkan and CUDA).
//!
//! One generic `impl HearthBackend for CubeBackend<R, F, I, BT>` overrides:
//! - [`HearthBackend::matmul`] with [`matmul_f32`]: cubek's full-f32 strategies (SimpleVecMat
//!   for one row, SimpleUnit otherwise, Naive as the last resort), never TF32 tensor cores;
//! - [`HearthBackend::rms_norm`] with the fused [`rms_norm`] kernel (one cube per row, f32
//!   accumulation, plane + shared-memory reduction);
//! - [`HearthBackend::silu_mul`] with the fused [`silu_mul`] kernel;
//! - [`HearthBackend::upload_packed`] / [`HearthBackend::packed_matmul`] with packed
//!   F32/Q8_0/Q4_0/Q4_K/Q6_K blocks on the device, multiplied by [`packed_matmul`] (matrix × vector with
//!   dequantization fused into the load for a few rows; dequantize + [`matmul_f32`] for more).
//!
//! Every kernel has a burn-op fallback in [`crate::ops`] and is tested against it.
//!
//! ```no_run
//! # #[cfg(feature = "wgpu")] {
//! use burn::tensor::Tensor;
//! use hearth_backend::{HearthBackend, Wgpu};
//! let dev = Default::default();
//! let a = Tensor::<Wgpu, 2>::ones([3, 5], &dev);
//! let b = Tensor::<Wgpu, 2>::ones([5, 2], &dev);
//! let c = Wgpu::matmul(a, b); // full f32, no TF32 on any device
//! assert_eq!(c.into_data().to_vec::<f32>().unwrap(), vec![5.0; 6]);
//! # }
//! ```

mod act;
mod matmul;
mod matvec;
mod norm;
mod reduce;

pub use act::silu_mul;
pub use matmul::matmul_f32;
pub use matvec::{dequantize_packed, packed_matmul, packed_matvec};
pub use norm::rms_norm;

use crate::{BackendError, HearthBackend, PackedFormat, PackedMatrix, PackedStorage};
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, tensor::CubeTensor};
use cubecl::features::Plane;
use std::sync::atomic::{AtomicBool, Ordering};

/// Rows of `x` up to which [`packed_matmul`] runs the fused matrix × vector kernel (per row);
/// above it, the weight is dequantized to f32 once and multiplied with [`matmul_f32`].
pub const MATVEC_MAX_ROWS: usize = 4;

/// The `CubeTensor` inside a float tensor (dequantized if it was quantized).
pub(crate) fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<CubeBackend<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    t.into_primitive().tensor()
}

/// A float tensor around a `CubeTensor` of rank `D`.
pub(crate) fn wrap<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<CubeBackend<R, F, I, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

static NO_PLANE_REDUCTIONS: AtomicBool = AtomicBool::new(false);

/// Turns plane (warp/subgroup) reductions off (`false`) or back on where the device has them,
/// for every later kernel launch in this process; without them the kernels reduce through
/// shared memory only. Both paths compute the same sums; this exists to test and compare them.
///
/// ```
/// hearth_backend::cube::set_plane_reductions(true);
/// ```
pub fn set_plane_reductions(enabled: bool) {
    NO_PLANE_REDUCTIONS.store(!enabled, Ordering::Relaxed);
}

/// Whether kernels launched on `device` reduce with plane operations: the device has plane ops
/// with a fixed plane size between 4 and 128, and [`set_plane_reductions`] did not turn them off.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// println!("{}", hearth_backend::cube::uses_plane_reductions::<burn::backend::wgpu::WgpuRuntime>(&Default::default()));
/// # }
/// ```
pub fn uses_plane_reductions<R: CubeRuntime>(device: &R::Device) -> bool {
    plane_reductions(&R::client(device))
}

pub(crate) fn plane_reductions<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    let hw = &client.properties().hardware;
    !NO_PLANE_REDUCTIONS.load(Ordering::Relaxed)
        && client.features().plane.contains(Plane::Ops)
        && hw.plane_size_min == hw.plane_size_max
        && (4..=128).contains(&hw.plane_size_max)
}

/// Units per cube for a reduction over `work` items: a power of two in `[32, 256]`, at least
/// the plane size, at most the device's limit.
pub(crate) fn reduction_cube_dim<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>, work: usize) -> u32 {
    let hw = &client.properties().hardware;
    let want = work.next_power_of_two().clamp(32, 256) as u32;
    let want = want.max(hw.plane_size_max.next_power_of_two());
    let max = hw.max_units_per_cube.min(hw.max_cube_dim.0).max(1);
    // largest power of two not above the device limit
    want.min(1 << (31 - max.leading_zeros()))
}

/// Float dtypes hearth's kernels are written for.
pub(crate) fn kernel_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> HearthBackend for CubeBackend<R, F, I, BT> {
    fn probe_device(device: &Self::Device) -> Result<(), String> {
        let device = device.clone();
        // wgpu panics without an adapter, cudarc without a driver or GPU
        crate::catch_panic(std::panic::AssertUnwindSafe(move || {
            R::client(&device);
        }))
    }

    fn rms_norm<const D: usize>(x: Tensor<Self, D>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, D> {
        let dims = x.dims();
        let cols = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        if rows == 0 || cols == 0 || weight.dims()[0] != cols {
            return crate::ops::rms_norm(x, weight, eps);
        }
        match rms_norm(x.clone().reshape([rows, cols]), weight.clone(), eps) {
            Ok(y) => y.reshape(dims),
            Err(_) => crate::ops::rms_norm(x, weight, eps),
        }
    }

    fn silu_mul<const D: usize>(gate: Tensor<Self, D>, up: Tensor<Self, D>) -> Tensor<Self, D> {
        match silu_mul(gate.clone(), up.clone()) {
            Ok(y) => y,
            Err(_) => crate::ops::silu_mul(gate, up),
        }
    }

    fn matmul<const D: usize>(lhs: Tensor<Self, D>, rhs: Tensor<Self, D>) -> Tensor<Self, D> {
        match matmul_f32(lhs.clone(), rhs.clone()) {
            Ok(y) => y,
            Err(e) => {
                // shapes burn rejects too (burn reports them), or no exact kernel: say so once
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    eprintln!("hearth: exact f32 matmul not used ({e}); falling back to burn's matmul");
                }
                lhs.matmul(rhs)
            }
        }
    }

    fn upload_packed(
        format: PackedFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        device: &Self::Device,
    ) -> Result<PackedMatrix<Self>, BackendError> {
        let words = format.to_words(bytes, rows, cols)?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let client = R::client(device);
        let handle = client.create_from_slice(&bytes);
        let t = CubeTensor::new_contiguous(client, device.clone(), Shape::new([words.len()]), handle, DType::U32);
        let t = Tensor::<Self, 1, Int>::from_primitive(t);
        Ok(PackedMatrix::from_storage(format, rows, cols, PackedStorage::Words(t)))
    }

    fn packed_matmul(x: Tensor<Self, 2>, w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError> {
        match w.storage() {
            PackedStorage::Dense(t) => {
                w.check_input(x.dims())?;
                Ok(Self::matmul(x, t.clone()))
            }
            PackedStorage::Words(_) => packed_matmul(x, w),
        }
    }

    fn dequantize_packed(w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError> {
        match w.storage() {
            PackedStorage::Dense(t) => Ok(t.clone().transpose()),
            PackedStorage::Words(_) => dequantize_packed(w, DType::F32),
        }
    }
}
