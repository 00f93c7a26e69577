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
//!   dequantization fused into the load for a few rows; dequantize + [`matmul_f32`] for more);
//! - the decode fusions: [`HearthBackend::rope`] with [`rope`] (one element-wise kernel),
//!   [`HearthBackend::gqa_attention`] with [`gqa_attention`] for up to
//!   [`ATTENTION_MAX_QUERIES`] query rows (scores, online softmax and values in one kernel),
//!   [`HearthBackend::add_rms_norm`] with [`add_rms_norm`], [`HearthBackend::packed_matmul3`]
//!   with [`packed_matvec3`] (q/k/v in one launch) and [`HearthBackend::packed_matmul_silu`]
//!   with [`packed_matvec_silu`] (gate, up and SiLU·mul in one launch), and their dense-weight
//!   twins [`HearthBackend::matmul3`] / [`HearthBackend::matmul_silu`] with [`dense_matvec3`] /
//!   [`dense_matvec_silu`]. `HEARTH_FUSED=0` in the environment turns these back to their
//!   burn-op fallbacks (for comparisons).
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
mod argmax;
mod attention;
mod copy;
mod matmul;
mod matvec;
mod mma;
mod moe;
mod norm;
mod reduce;
mod rope;

pub use act::silu_mul;
pub use argmax::argmax_rows;
pub use attention::{
    ATTENTION_MAX_QUERIES, DecodeAttention, FOLD_MIN_GROUP, decode_attention, gqa_attention, group_fold,
    set_decode_attention, set_group_fold,
};
pub use copy::{rope_write, write_at, write_at2};
pub use matmul::{dense_matvec_silu, dense_matvec3, matmul_f32};
pub use matvec::{dequantize_packed, packed_matmul, packed_matvec, packed_matvec_silu, packed_matvec3};
pub use mma::MMA_MAX_ROWS;
pub use moe::{MOE_MAX_EXPERTS, moe_experts};
pub use norm::{add_rms_norm, rms_norm, sums_norm};
pub use reduce::read_bandwidth;
pub use rope::{rope, rope2};

use crate::{BackendError, HearthBackend, NormSums, PackedFormat, PackedMatrix, PackedStorage, PreNorm, Weight};
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

/// 0 = not read yet, 1 = off, 2 = on.
static FUSED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether the decode fusions (rope, attention, add + RMSNorm, q/k/v and gate/up/SiLU matvecs)
/// run hearth's kernels: yes unless `HEARTH_FUSED=0` is in the environment (read once).
///
/// ```
/// let _ = hearth_backend::cube::fused_kernels();
/// ```
pub fn fused_kernels() -> bool {
    match FUSED.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("HEARTH_FUSED").map_or(true, |v| v != "0");
            FUSED.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// 0 = not read yet, 1 = off, 2 = on.
static FOLD: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether models fold each RMSNorm into the matvec launches that consume it and each residual
/// add into the launch before ([`HearthBackend::folds_norms`]): off unless
/// `HEARTH_FOLD_NORMS=1` is in the environment (read once) or [`set_fold_norms`] says so.
/// Measured on an H200 (8B, bf16 and Q8_0 with bf16 activations, 2026-12-01): the 64 launches
/// per step it saves cost ~2.5 µs each, while normalising inside every cube made the q/k/v
/// and gate/up kernels 6.6 and 13 µs slower (each cube scales and squares all of `x`), so it
/// loses for dense bf16 weights (−5%) and is even for Q8_0.
///
/// ```
/// hearth_backend::cube::set_fold_norms(Some(false));
/// assert!(!hearth_backend::cube::fold_norms());
/// hearth_backend::cube::set_fold_norms(None);
/// ```
pub fn fold_norms() -> bool {
    match FOLD.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("HEARTH_FOLD_NORMS").is_ok_and(|v| v == "1");
            FOLD.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Sets [`fold_norms`] for the process (`None`: back to the environment's choice).
///
/// ```
/// hearth_backend::cube::set_fold_norms(Some(true));
/// assert!(hearth_backend::cube::fold_norms());
/// hearth_backend::cube::set_fold_norms(None);
/// ```
pub fn set_fold_norms(on: Option<bool>) {
    FOLD.store(
        match on {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
        Ordering::Relaxed,
    );
}

/// 0 = not read yet, 1 = off, 2 = on.
static SUMS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether [`HearthBackend::norm_sums`] offers models the carried norm sums (each block's last
/// matrix × vector kernel writes `h ⊙ g` and `Σh²` for the next block's first kernels, which
/// normalise in their epilogue: no RMSNorm launch between blocks): on unless
/// `HEARTH_NORM_SUMS=0` is in the environment (read once) or [`set_norm_sums`] says
/// otherwise. On an H200 (stop 23) it took llama-3.1-8b decode from 168.4 to 171.9 tok/s in
/// bf16 and from 231.6 to 240.3 tok/s with Q8_0 weights. (Models whose products include
/// K-quant weights, which have no kernel that takes the sums, normalise on their own.)
///
/// ```
/// hearth_backend::cube::set_norm_sums(Some(false));
/// assert!(!hearth_backend::cube::norm_sums());
/// hearth_backend::cube::set_norm_sums(None);
/// ```
pub fn norm_sums() -> bool {
    match SUMS.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = !std::env::var("HEARTH_NORM_SUMS").is_ok_and(|v| v == "0");
            SUMS.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Sets [`norm_sums`] for the process (`None`: back to the environment's choice).
///
/// ```
/// hearth_backend::cube::set_norm_sums(Some(true));
/// assert!(hearth_backend::cube::norm_sums());
/// hearth_backend::cube::set_norm_sums(None);
/// ```
pub fn set_norm_sums(on: Option<bool>) {
    SUMS.store(
        match on {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
        Ordering::Relaxed,
    );
}

/// Whether `device` adds to f32 atomics in kernels (what the carried norm sums need).
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// let _ = hearth_backend::cube::atomic_f32_add::<burn::backend::wgpu::WgpuRuntime>(&Default::default());
/// # }
/// ```
pub fn atomic_f32_add<R: CubeRuntime>(device: &R::Device) -> bool {
    use cubecl::ir::{ElemType, FloatKind, StorageType, Type};
    let ty = Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32)));
    R::client(device)
        .properties()
        .atomic_type_usage(ty)
        .contains(cubecl::ir::features::AtomicUsage::Add)
}

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

thread_local! {
    static NO_TENSOR_CORES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether matvecs launched *from the calling thread* whose [`MatvecShape`] asks for tensor
/// cores (`mma = 1`, e.g. `HEARTH_MATVEC=mma=1`) may use them (default: yes). Off, Q8_0
/// products take the dequantizing kernel, whose result does not depend on the quantization
/// of `x`, and dense ones the unit-per-vector kernel (the kernel tests turn them off to
/// compare with exact host products, each test on its own thread). For the whole process, set
/// `HEARTH_MATVEC` (e.g. `rows=2,unroll=8`: `mma` defaults to 0 there).
///
/// ```
/// hearth_backend::cube::set_tensor_cores(false);
/// hearth_backend::cube::set_tensor_cores(true);
/// ```
pub fn set_tensor_cores(on: bool) {
    NO_TENSOR_CORES.with(|c| c.set(!on));
}

/// Whether [`set_tensor_cores`] turned tensor cores off on this thread.
pub(crate) fn tensor_cores_off() -> bool {
    NO_TENSOR_CORES.with(|c| c.get())
}

/// Whether Q8_0 matvecs on `device` run on integer tensor cores (`mma.sync m16n8k32` s8; CUDA
/// sm_80 and later) when their shape asks for it and [`set_tensor_cores`] allows it.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// println!("{}", hearth_backend::cube::q8_tensor_cores::<burn::backend::wgpu::WgpuRuntime>(&Default::default()));
/// # }
/// ```
pub fn q8_tensor_cores<R: CubeRuntime>(device: &R::Device) -> bool {
    !tensor_cores_off() && mma::mma_i8_supported(&R::client(device))
}

/// The device's plane (warp/subgroup) sizes `(min, max)` where it has plane operations and
/// [`set_plane_reductions`] did not turn them off. Kernels written for a fixed plane size need
/// `min == max` ([`uses_plane_reductions`]); the decode-attention kernel takes any.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// println!("{:?}", hearth_backend::cube::plane_sizes::<burn::backend::wgpu::WgpuRuntime>(&Default::default()));
/// # }
/// ```
pub fn plane_sizes<R: CubeRuntime>(device: &R::Device) -> Option<(u32, u32)> {
    let client = R::client(device);
    let hw = &client.properties().hardware;
    plane_ops(&client).then_some((hw.plane_size_min, hw.plane_size_max))
}

/// Plane operations available and not turned off.
pub(crate) fn plane_ops<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    !NO_PLANE_REDUCTIONS.load(Ordering::Relaxed) && client.features().plane.contains(Plane::Ops)
}

pub(crate) fn plane_reductions<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    let hw = &client.properties().hardware;
    !NO_PLANE_REDUCTIONS.load(Ordering::Relaxed)
        && client.features().plane.contains(Plane::Ops)
        && hw.plane_size_min == hw.plane_size_max
        && (4..=128).contains(&hw.plane_size_max)
}

/// Launch shape of the vectorised matrix × vector kernels (F32/Q8_0/Q4_0 packed weights and
/// dense row-major weights): how many weight rows a cube takes and how each unit walks them.
/// Every shape computes the same products (up to f32 summation order); the choice is a speed
/// trade-off per GPU, measured with the `matvec_bw` example.
///
/// Each weight kind has its own tuned shape ([`MatvecShape::tuned`]); `HEARTH_MATVEC` in the
/// environment (`rows=2,unroll=4,units=64,convert=1`, any subset, over
/// [`MatvecShape::DEFAULT`]) or [`set_matvec_shape`] replaces them all, for sweeps and tests.
///
/// ```
/// use hearth_backend::cube::MatvecShape;
/// let s = MatvecShape::parse("rows=4,unroll=2").unwrap();
/// assert_eq!((s.rows, s.unroll), (4, 2));
/// assert!(MatvecShape::parse("rows=3").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatvecShape {
    /// Weight rows per cube, 1, 2, 4 or 8: the rows share every load of `x`.
    pub rows: usize,
    /// 16-byte weight vectors each unit loads per row per pass (loads in flight): 1, 2, 4 or 8.
    pub unroll: usize,
    /// Units per cube (a power of two from 32 to 1024); 0 picks one from the row length.
    pub units: u32,
    /// How Q8_0/Q4_0 quants become f32: 0 = integer → float conversion instructions,
    /// 1 = each quant placed in the mantissa of 2²³ (no conversion instruction, two integer
    /// ops per value), 2 = two quants at a time placed in the mantissas of an f16 pair (one
    /// integer op per two values, then f16 → f32; on devices without f16 arithmetic this
    /// falls back to 1).
    pub convert: u32,
    /// 1 = multiply on tensor cores where the device has them (`units / 32` warps per 16
    /// weight rows, `unroll` blocks or 16-value slices per warp step; see `cube::mma`): Q8_0
    /// weights on integer MMAs with `x` quantized to `i8` per 32-value block inside each cube,
    /// dense bf16/f16 weights on half MMAs with f32 accumulation. 0 = the unit-per-vector
    /// kernels (the only ones for other formats and f32).
    pub mma: u32,
}

impl MatvecShape {
    /// The shape used unless the environment or [`set_matvec_shape`] says otherwise.
    pub const DEFAULT: MatvecShape = MatvecShape {
        rows: 2,
        unroll: 4,
        units: 0,
        convert: 2,
        mma: 0,
    };

    /// The shape for `weights` (`None`: dense row-major weights) measured best on an H200
    /// with the `matvec_bw` example and `hearth bench` (llama-3.1-8b's shapes): dense bf16
    /// weights two rows per cube with eight vectors in flight per row (2026-12-02: the head
    /// at 4.35 TB/s, gate/up +17%, 8B bf16 decode +2–4% against one row × four), Q8_0 the
    /// same, Q4_0 four rows (it converts twice as many values per byte, so sharing `x` pays
    /// most); both convert their quants through f16 pairs (Q8_0 decode +5%, Q4_0's gate/up
    /// +35% against the 2²³ mantissa). Tensor cores (`mma`) stay off: the MMA kernels
    /// measured slower on the H200 (see `docs/performance.md`, issue 7, stop 19).
    ///
    /// ```
    /// use hearth_backend::{PackedFormat, cube::MatvecShape};
    /// assert_eq!(MatvecShape::tuned(None).rows, 2);
    /// assert_eq!(MatvecShape::tuned(Some(PackedFormat::Q8_0)).mma, 0);
    /// assert!(MatvecShape::tuned(Some(PackedFormat::Q4_0)).rows > 1);
    /// ```
    pub fn tuned(weights: Option<PackedFormat>) -> MatvecShape {
        let d = MatvecShape::DEFAULT;
        match weights {
            None => MatvecShape {
                rows: 2,
                unroll: 8,
                ..d
            },
            Some(PackedFormat::F32) => MatvecShape {
                rows: 1,
                unroll: 4,
                ..d
            },
            Some(PackedFormat::Q8_0) => MatvecShape {
                rows: 2,
                unroll: 8,
                ..d
            },
            Some(PackedFormat::Q4_0) => MatvecShape {
                rows: 4,
                unroll: 2,
                ..d
            },
            Some(_) => d,
        }
    }

    /// Parses `key=value` pairs (`rows`, `unroll`, `units`, `convert`, `mma`) separated by commas over
    /// [`MatvecShape::DEFAULT`]. Errors name the bad pair.
    pub fn parse(spec: &str) -> Result<MatvecShape, String> {
        let mut s = MatvecShape::DEFAULT;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let v: u32 = value.trim().parse().map_err(|_| format!("`{part}`: not a number"))?;
            let pow2 = |lo: u32, hi: u32| v.is_power_of_two() && (lo..=hi).contains(&v);
            match key.trim() {
                "rows" if pow2(1, 8) => s.rows = v as usize,
                "unroll" if pow2(1, 8) => s.unroll = v as usize,
                "units" if v == 0 || pow2(32, 1024) => s.units = v,
                "convert" if v <= 2 => s.convert = v,
                "mma" if v <= 1 => s.mma = v,
                _ => return Err(format!("`{part}`: unknown key or value out of range")),
            }
        }
        Ok(s)
    }
}

static MATVEC_SHAPE: std::sync::RwLock<Option<MatvecShape>> = std::sync::RwLock::new(None);

/// Sets the matvec launch shape for every later launch in this process (`None`: back to the
/// environment's or the default).
///
/// ```
/// use hearth_backend::cube::{MatvecShape, matvec_shape, set_matvec_shape};
/// set_matvec_shape(Some(MatvecShape { rows: 8, ..MatvecShape::DEFAULT }));
/// assert_eq!(matvec_shape(None).rows, 8);
/// set_matvec_shape(None);
/// ```
pub fn set_matvec_shape(shape: Option<MatvecShape>) {
    *MATVEC_SHAPE.write().unwrap_or_else(|e| e.into_inner()) = shape;
}

thread_local! {
    static THREAD_MATVEC_SHAPE: std::cell::Cell<Option<MatvecShape>> = const { std::cell::Cell::new(None) };
}

/// Sets the matvec launch shape for later launches *from the calling thread* only, over
/// [`set_matvec_shape`]'s (`None`: back to it). For tests and comparisons that run side by side.
///
/// ```
/// use hearth_backend::cube::{MatvecShape, matvec_shape, set_thread_matvec_shape};
/// set_thread_matvec_shape(Some(MatvecShape { rows: 4, ..MatvecShape::DEFAULT }));
/// assert_eq!(matvec_shape(None).rows, 4);
/// set_thread_matvec_shape(None);
/// ```
pub fn set_thread_matvec_shape(shape: Option<MatvecShape>) {
    THREAD_MATVEC_SHAPE.with(|c| c.set(shape));
}

/// The matvec launch shape in force for `weights` (`None`: dense weights; see
/// [`MatvecShape`]): [`set_thread_matvec_shape`]'s, else [`set_matvec_shape`]'s, else
/// `HEARTH_MATVEC`'s, else [`MatvecShape::tuned`]. A malformed `HEARTH_MATVEC` is reported
/// once on stderr and ignored.
///
/// ```
/// assert!(hearth_backend::cube::matvec_shape(None).rows >= 1);
/// ```
pub fn matvec_shape(weights: Option<PackedFormat>) -> MatvecShape {
    if let Some(s) = THREAD_MATVEC_SHAPE.with(|c| c.get()) {
        return s;
    }
    if let Some(s) = *MATVEC_SHAPE.read().unwrap_or_else(|e| e.into_inner()) {
        return s;
    }
    static ENV: std::sync::OnceLock<Option<MatvecShape>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| {
        let spec = std::env::var("HEARTH_MATVEC").ok()?;
        MatvecShape::parse(&spec)
            .inspect_err(|e| eprintln!("hearth: ignoring HEARTH_MATVEC: {e}"))
            .ok()
    });
    env.unwrap_or_else(|| MatvecShape::tuned(weights))
}

/// Units per cube of a vectorised matvec whose rows hold `vectors` 16-byte vectors: the
/// shape's `units`, or enough for one pass of `unroll` vectors per unit (32 to 256).
pub(crate) fn matvec_units<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    shape: MatvecShape,
    vectors: usize,
) -> u32 {
    let auto = reduction_cube_dim(client, vectors / shape.unroll);
    if shape.units == 0 {
        return auto;
    }
    let hw = &client.properties().hardware;
    let max = hw.max_units_per_cube.min(hw.max_cube_dim.0).max(1);
    // a whole number of planes, within the device's limit
    shape
        .units
        .min(1 << (31 - max.leading_zeros()))
        .max(hw.plane_size_max.next_power_of_two())
}

/// Whether a cube of `units` is exactly one plane (its reduction needs no shared memory).
pub(crate) fn single_plane<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>, units: u32) -> bool {
    plane_reductions(client) && client.properties().hardware.plane_size_max == units
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

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// `[RMSNorm(h) · wᵢ]` in one matrix × vector launch with the norm folded in (every cube
/// normalises its own copy of `h: [M, K]`, M ≤ [`MATVEC_MAX_ROWS`]): three dense transposed
/// views, or three vector-format blocks (F32, Q8_0, Q4_0) of one format. `None` when the
/// operands do not fit (the caller normalises, then multiplies); the norm weight must be a
/// contiguous `[K]` of `h`'s dtype.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{PreNorm, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let g = Tensor::<Wgpu, 1>::ones([8], &dev);
/// let h = Tensor::<Wgpu, 2>::full([1, 8], 3.0, &dev);
/// let [q, _, _] = cube::norm_matvec3(h, PreNorm { weight: &g, eps: 0.0 }, [Weight::Dense(&w); 3]).unwrap();
/// assert!((q.into_data().to_vec::<f32>().unwrap()[0] - 8.0).abs() < 1e-5);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn norm_matvec3<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    h: Tensor<Cube<R, F, I, BT>, 2>,
    norm: PreNorm<Cube<R, F, I, BT>>,
    w: [Weight<Cube<R, F, I, BT>>; 3],
) -> Option<[Tensor<Cube<R, F, I, BT>, 2>; 3]> {
    if h.dims()[0] > MATVEC_MAX_ROWS {
        return None;
    }
    let fold = matmul::Fold {
        norm: Some((prim(norm.weight.clone()), norm.eps as f32)),
        ..matmul::Fold::none()
    };
    match w {
        [Weight::Dense(a), Weight::Dense(b), Weight::Dense(c)] => matmul::dense_matvec3_fold(h, [a, b, c], &fold),
        [Weight::Packed(a), Weight::Packed(b), Weight::Packed(c)] => {
            matvec::packed_matvec3_fold(h, [a, b, c], &fold).ok()
        }
        _ => None,
    }
}

/// `silu(RMSNorm(h) · gate) · (RMSNorm(h) · up)` in one launch with the norm folded in, under
/// the conditions of [`norm_matvec3`] (both weights dense, or both vector-format blocks of one
/// format and shape). `None` when the operands do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{PreNorm, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let g = Tensor::<Wgpu, 1>::ones([8], &dev);
/// let y = cube::norm_matvec_silu(Tensor::zeros([1, 8], &dev), PreNorm { weight: &g, eps: 1e-6 }, Weight::Dense(&w), Weight::Dense(&w));
/// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![0.0; 2]);
/// # }
/// ```
pub fn norm_matvec_silu<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    h: Tensor<Cube<R, F, I, BT>, 2>,
    norm: PreNorm<Cube<R, F, I, BT>>,
    gate: Weight<Cube<R, F, I, BT>>,
    up: Weight<Cube<R, F, I, BT>>,
) -> Option<Tensor<Cube<R, F, I, BT>, 2>> {
    if h.dims()[0] > MATVEC_MAX_ROWS {
        return None;
    }
    let fold = matmul::Fold {
        norm: Some((prim(norm.weight.clone()), norm.eps as f32)),
        ..matmul::Fold::none()
    };
    match (gate, up) {
        (Weight::Dense(g), Weight::Dense(u)) => matmul::dense_matvec_silu_fold(h, g, u, &fold),
        (Weight::Packed(g), Weight::Packed(u)) => matvec::packed_matvec_silu_fold(h, g, u, &fold).ok(),
        _ => None,
    }
}

/// `residual + x · W` in one matrix × vector launch (the addition in its epilogue) for
/// `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]), a dense transposed view or vector-format blocks, and
/// a contiguous `residual: [M, N]` of `x`'s dtype. `None` when the operands do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Weight, Wgpu, cube};
/// let dev = Default::default();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let y = cube::matvec_add(Tensor::ones([1, 8], &dev), Weight::Dense(&w), Tensor::ones([1, 2], &dev));
/// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![9.0; 2]);
/// # }
/// ```
pub fn matvec_add<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    w: Weight<Cube<R, F, I, BT>>,
    residual: Tensor<Cube<R, F, I, BT>, 2>,
) -> Option<Tensor<Cube<R, F, I, BT>, 2>> {
    if x.dims()[0] > MATVEC_MAX_ROWS {
        return None;
    }
    // CUDA may pad the rows of a tensor made from host data: the epilogue reads `[M, N]` densely
    let fold = matmul::Fold {
        residual: Some(burn_cubecl::kernel::into_contiguous(prim(residual))),
        ..matmul::Fold::none()
    };
    match w {
        Weight::Dense(t) => matmul::dense_matvec(&prim(x), &prim(t.clone()), &fold).map(wrap),
        Weight::Packed(p) if matches!(p.storage(), PackedStorage::Words(_)) => {
            matvec::packed_matvec_fold(x, p, &fold).ok()
        }
        Weight::Packed(_) => None,
    }
}

/// `(residual + x · W, (residual + x · W) ⊙ next)` in one matrix × vector launch that also adds
/// each row's sum of squares to `sums` at `slot` ([`HearthBackend::matmul_add_sums`]), for a
/// dense transposed `W` or vector-format blocks. `None` when the operands do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{NormSums, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let sums = NormSums::<Wgpu>::zeroed(1, 1, &dev);
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let g = Tensor::<Wgpu, 1>::ones([2], &dev);
/// let (h, _hg) = cube::matvec_add_sums(Tensor::ones([1, 8], &dev), Weight::Dense(&w), Tensor::ones([1, 2], &dev), &g, &sums, 0).unwrap();
/// assert_eq!(h.into_data().to_vec::<f32>().unwrap(), vec![9.0; 2]);
/// assert_eq!(sums.slot(0).into_data().to_vec::<f32>().unwrap(), vec![162.0]);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn matvec_add_sums<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<Cube<R, F, I, BT>, 2>,
    w: Weight<Cube<R, F, I, BT>>,
    residual: Tensor<Cube<R, F, I, BT>, 2>,
    next: &Tensor<Cube<R, F, I, BT>, 1>,
    sums: &NormSums<Cube<R, F, I, BT>>,
    slot: usize,
) -> Option<(Tensor<Cube<R, F, I, BT>, 2>, Tensor<Cube<R, F, I, BT>, 2>)> {
    let [m, _] = x.dims();
    let n = next.dims()[0];
    if m > MATVEC_MAX_ROWS || residual.dims() != [m, n] || m != sums.rows() || slot >= sums.slots() {
        return None;
    }
    let r = burn_cubecl::kernel::into_contiguous(prim(residual));
    let hg = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        r.client.clone(),
        r.device.clone(),
        Shape::new([m, n]),
        r.dtype,
    );
    let fold = matmul::Fold {
        residual: Some(r),
        sums_out: Some(matmul::SumsOut {
            next: burn_cubecl::kernel::into_contiguous(prim(next.clone())),
            hg: hg.clone(),
            buf: prim(sums.buffer()),
            at: slot * sums.rows(),
        }),
        ..matmul::Fold::none()
    };
    let h = match w {
        Weight::Dense(t) => matmul::dense_matvec(&prim(x), &prim(t.clone()), &fold).map(wrap),
        Weight::Packed(p) if matches!(p.storage(), PackedStorage::Words(_)) => {
            matvec::packed_matvec_fold(x, p, &fold).ok()
        }
        Weight::Packed(_) => None,
    }?;
    Some((h, wrap(hg)))
}

/// `[RMSNorm(h) · wᵢ]` from `hg = h ⊙ g` and the carried sums at `slot`
/// ([`HearthBackend::sums_matmul3`]) in one launch that scales in its epilogue: three dense
/// transposed weights, or three vector-format matrices of one format. `None` when the operands
/// do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{HearthBackend, NormSums, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let sums = NormSums::<Wgpu>::zeroed(1, 1, &dev);
/// let g = Tensor::<Wgpu, 1>::ones([8], &dev);
/// let hg = Wgpu::sums_norm(Tensor::full([1, 8], 3.0, &dev), &g, &sums, 0).unwrap();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let [q, _, _] = cube::sums_matvec3(hg, &sums, 0, 0.0, [Weight::Dense(&w); 3]).unwrap();
/// assert!((q.into_data().to_vec::<f32>().unwrap()[0] - 8.0).abs() < 1e-5);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn sums_matvec3<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    hg: Tensor<Cube<R, F, I, BT>, 2>,
    sums: &NormSums<Cube<R, F, I, BT>>,
    slot: usize,
    eps: f64,
    w: [Weight<Cube<R, F, I, BT>>; 3],
) -> Option<[Tensor<Cube<R, F, I, BT>, 2>; 3]> {
    if hg.dims()[0] != sums.rows() || slot >= sums.slots() {
        return None;
    }
    let fold = sums_fold(sums, slot, eps);
    match w {
        [Weight::Dense(a), Weight::Dense(b), Weight::Dense(c)] => matmul::dense_matvec3_fold(hg, [a, b, c], &fold),
        [Weight::Packed(a), Weight::Packed(b), Weight::Packed(c)] => {
            matvec::packed_matvec3_fold(hg, [a, b, c], &fold).ok()
        }
        _ => None,
    }
}

/// `silu(RMSNorm(h) · gate) · (RMSNorm(h) · up)` from `hg = h ⊙ g` and the carried sums at
/// `slot` ([`HearthBackend::sums_matmul_silu`]) in one launch, under the conditions of
/// [`sums_matvec3`]. `None` when the operands do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{HearthBackend, NormSums, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let sums = NormSums::<Wgpu>::zeroed(1, 1, &dev);
/// let g = Tensor::<Wgpu, 1>::ones([8], &dev);
/// let hg = Wgpu::sums_norm(Tensor::zeros([1, 8], &dev), &g, &sums, 0).unwrap();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let y = cube::sums_matvec_silu(hg, &sums, 0, 1e-6, Weight::Dense(&w), Weight::Dense(&w)).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 2]);
/// # }
/// ```
pub fn sums_matvec_silu<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    hg: Tensor<Cube<R, F, I, BT>, 2>,
    sums: &NormSums<Cube<R, F, I, BT>>,
    slot: usize,
    eps: f64,
    gate: Weight<Cube<R, F, I, BT>>,
    up: Weight<Cube<R, F, I, BT>>,
) -> Option<Tensor<Cube<R, F, I, BT>, 2>> {
    if hg.dims()[0] != sums.rows() || slot >= sums.slots() {
        return None;
    }
    let fold = sums_fold(sums, slot, eps);
    match (gate, up) {
        (Weight::Dense(g), Weight::Dense(u)) => matmul::dense_matvec_silu_fold(hg, g, u, &fold),
        (Weight::Packed(g), Weight::Packed(u)) => matvec::packed_matvec_silu_fold(hg, g, u, &fold).ok(),
        _ => None,
    }
}

/// A consumer's fold of the carried norm sums at `slot`.
fn sums_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    sums: &NormSums<Cube<R, F, I, BT>>,
    slot: usize,
    eps: f64,
) -> matmul::Fold<R> {
    matmul::Fold {
        sums_in: Some(matmul::SumsIn {
            buf: prim(sums.buffer()),
            at: slot * sums.rows(),
            eps: eps as f32,
        }),
        ..matmul::Fold::none()
    }
}

/// The process's long-lived client of `device` (one clone kept per runtime and device), for
/// futures that must outlive the tensor they read (`read_ints_later`).
fn static_client<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    device: &R::Device,
) -> &'static cubecl::client::ComputeClient<R> {
    use std::any::{Any, TypeId};
    type Entry = (TypeId, String, &'static (dyn Any + Send + Sync));
    static CLIENTS: std::sync::Mutex<Vec<Entry>> = std::sync::Mutex::new(Vec::new());
    let (ty, dev) = (TypeId::of::<R>(), format!("{device:?}"));
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients
        .iter()
        .find(|(t, d, _)| *t == ty && *d == dev)
        .and_then(|(_, _, c)| c.downcast_ref::<cubecl::client::ComputeClient<R>>())
    {
        return c;
    }
    let c: &'static cubecl::client::ComputeClient<R> = Box::leak(Box::new(client.clone()));
    clients.push((ty, dev, c));
    c
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> HearthBackend for CubeBackend<R, F, I, BT> {
    fn norm_sums(rows: usize, slots: usize, device: &Self::Device) -> Option<NormSums<Self>> {
        (rows > 0 && rows <= MATVEC_MAX_ROWS && fused_kernels() && norm_sums() && atomic_f32_add::<R>(device))
            .then(|| NormSums::zeroed(rows, slots, device))
    }

    fn sums_norm(
        x: Tensor<Self, 2>,
        weight: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        sums.check("sums_norm", slot, x.dims()[0])?;
        if fused_kernels()
            && let Ok(hg) = norm::sums_norm(x.clone(), weight.clone(), &sums.buffer(), slot * sums.rows())
        {
            return Ok(hg);
        }
        crate::ops::sums_norm(x, weight, sums, slot)
    }

    fn matmul_add_sums(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        residual: Tensor<Self, 2>,
        next: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Result<(Tensor<Self, 2>, Tensor<Self, 2>), BackendError> {
        sums.check("matmul_add_sums", slot, x.dims()[0])?;
        if fused_kernels()
            && let Some(r) = matvec_add_sums(x.clone(), w, residual.clone(), next, sums, slot)
        {
            return Ok(r);
        }
        crate::ops::matmul_add_sums(x, w, residual, next, sums, slot)
    }

    fn sums_matmul3(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        eps: f64,
        w: [Weight<Self>; 3],
    ) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        sums.check("sums_matmul3", slot, hg.dims()[0])?;
        if fused_kernels()
            && let Some(ys) = sums_matvec3(hg.clone(), sums, slot, eps, w)
        {
            return Ok(ys);
        }
        crate::ops::sums_matmul3(hg, sums, slot, eps, w)
    }

    fn sums_matmul_silu(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        eps: f64,
        gate: Weight<Self>,
        up: Weight<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        sums.check("sums_matmul_silu", slot, hg.dims()[0])?;
        if fused_kernels()
            && let Some(y) = sums_matvec_silu(hg.clone(), sums, slot, eps, gate, up)
        {
            return Ok(y);
        }
        crate::ops::sums_matmul_silu(hg, sums, slot, eps, gate, up)
    }

    fn probe_device(device: &Self::Device) -> Result<(), String> {
        let device = device.clone();
        // wgpu panics without an adapter, cudarc without a driver or GPU
        crate::catch_panic(std::panic::AssertUnwindSafe(move || {
            R::client(&device);
        }))
    }

    fn read_bandwidth(device: &Self::Device, bytes: usize) -> Option<f64> {
        reduce::read_bandwidth::<R>(device, bytes, 10)
    }

    fn argmax_rows(x: Tensor<Self, 2>) -> Tensor<Self, 1, Int> {
        argmax_rows(x.clone()).unwrap_or_else(|_| crate::ops::argmax_rows(x))
    }

    fn read_ints_later(t: Tensor<Self, 1, burn::tensor::Int>) -> crate::PendingInts {
        let t = burn_cubecl::kernel::into_contiguous(t.into_primitive());
        let (shape, dtype) = (t.meta.shape().clone(), t.dtype);
        let desc = cubecl::server::CopyDescriptor::new(
            t.handle.clone().binding(),
            shape.clone(),
            t.meta.strides().clone(),
            t.elem_size(),
        );
        // the client enqueues the copy and its fence now; the future only waits on the fence
        let read = static_client::<R>(&t.client, &t.device).read_one_tensor_async(desc);
        crate::PendingInts::later(Box::pin(async move {
            let bytes = read.await.map_err(|e| format!("{e}"))?;
            Ok(burn::tensor::TensorData::from_bytes(bytes, shape, dtype))
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

    fn rope(
        x: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
        rope_dim: usize,
        interleaved: bool,
    ) -> Tensor<Self, 4> {
        if fused_kernels()
            && let Ok(y) = rope(x.clone(), cos, sin, rope_dim, interleaved)
        {
            return y;
        }
        crate::ops::rope(x, cos, sin, rope_dim, interleaved)
    }

    fn add_rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        r: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, D>, Tensor<Self, D>) {
        let dims = x.dims();
        let cols = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        if fused_kernels()
            && r.dims() == dims
            && rows > 0
            && let Ok((s, y)) = add_rms_norm(
                x.clone().reshape([rows, cols]),
                r.clone().reshape([rows, cols]),
                weight.clone(),
                eps,
            )
        {
            return (s.reshape(dims), y.reshape(dims));
        }
        let s = x + r;
        let y = Self::rms_norm(s.clone(), weight, eps);
        (s, y)
    }

    fn moe_experts(
        x: Tensor<Self, 2>,
        experts: &[crate::Expert<Self>],
        weights: &[f32],
    ) -> Result<Tensor<Self, 2>, BackendError> {
        if fused_kernels()
            && let Some(y) = moe_experts(x.clone(), experts, weights)
        {
            return Ok(y);
        }
        crate::ops::moe_experts(x, experts, weights)
    }

    fn gqa_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Tensor<Self, 3>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        if fused_kernels()
            && q.dims()[2] <= ATTENTION_MAX_QUERIES
            && let Ok(o) = gqa_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale)
        {
            return o;
        }
        crate::ops::gqa_attention_with(q, k, v, mask, scale, Self::matmul::<4>)
    }

    fn write_at2(
        dst_a: Tensor<Self, 4>,
        src_a: Tensor<Self, 4>,
        dst_b: Tensor<Self, 4>,
        src_b: Tensor<Self, 4>,
        offset: [usize; 4],
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        if !fused_kernels() {
            return (
                crate::ops::write_at(dst_a, src_a, offset),
                crate::ops::write_at(dst_b, src_b, offset),
            );
        }
        match copy::write_at2_or_back(dst_a, src_a.clone(), dst_b, src_b.clone(), offset) {
            Ok(ys) => ys,
            Err((dst_a, dst_b)) => (
                Self::write_at(dst_a, src_a, offset),
                Self::write_at(dst_b, src_b, offset),
            ),
        }
    }

    fn prefix<const D: usize>(t: Tensor<Self, D>, dim: usize, len: usize) -> Tensor<Self, D> {
        let dims = t.dims();
        assert!(
            dim < D && len <= dims[dim],
            "prefix: {len} entries of dim {dim} of a {dims:?} tensor"
        );
        // same buffer, same strides, a shorter extent: every element it addresses is one of
        // `t`'s
        let mut p = prim(t);
        p.meta.shape_mut()[dim] = len;
        wrap(p)
    }

    fn rope2(
        a: Tensor<Self, 4>,
        b: Tensor<Self, 4>,
        cos: &Tensor<Self, 4>,
        sin: &Tensor<Self, 4>,
        rope_dim: usize,
        interleaved: bool,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>) {
        if fused_kernels()
            && let Ok(ys) = rope::rope2(a.clone(), b.clone(), cos, sin, rope_dim, interleaved)
        {
            return ys;
        }
        (
            Self::rope(a, cos, sin, rope_dim, interleaved),
            Self::rope(b, cos, sin, rope_dim, interleaved),
        )
    }

    fn rope_write(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        rope: crate::RopeTables<'_, Self>,
        k_cache: Tensor<Self, 4>,
        v_cache: Tensor<Self, 4>,
        offset: [usize; 4],
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        let (kc, vc) = if fused_kernels() {
            match copy::rope_write_or_back(
                q.clone(),
                k.clone(),
                v.clone(),
                rope.cos,
                rope.sin,
                rope.rope_dim,
                rope.interleaved,
                k_cache,
                v_cache,
                offset,
            ) {
                Ok(out) => return out,
                Err(back) => back,
            }
        } else {
            (k_cache, v_cache)
        };
        let (q, k) = Self::rope2(q, k, rope.cos, rope.sin, rope.rope_dim, rope.interleaved);
        let (kc, vc) = Self::write_at2(kc, k, vc, v, offset);
        (q, kc, vc)
    }

    fn write_at(dst: Tensor<Self, 4>, src: Tensor<Self, 4>, offset: [usize; 4]) -> Tensor<Self, 4> {
        if !fused_kernels() {
            return crate::ops::write_at(dst, src, offset);
        }
        match copy::write_at_or_back(dst, src.clone(), offset) {
            Ok(y) => y,
            Err((dst, _)) => crate::ops::write_at(dst, src, offset),
        }
    }

    fn packed_matmul3(x: Tensor<Self, 2>, w: [&PackedMatrix<Self>; 3]) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        if fused_kernels()
            && x.dims()[0] <= MATVEC_MAX_ROWS
            && let Ok(y) = packed_matvec3(x.clone(), w)
        {
            return Ok(y);
        }
        Ok([
            Self::packed_matmul(x.clone(), w[0])?,
            Self::packed_matmul(x.clone(), w[1])?,
            Self::packed_matmul(x, w[2])?,
        ])
    }

    fn matmul3(x: Tensor<Self, 2>, w: [&Tensor<Self, 2>; 3]) -> [Tensor<Self, 2>; 3] {
        if fused_kernels()
            && let Some(ys) = dense_matvec3(x.clone(), w)
        {
            return ys;
        }
        w.map(|wi| Self::matmul(x.clone(), wi.clone()))
    }

    fn matmul_silu(x: Tensor<Self, 2>, gate: &Tensor<Self, 2>, up: &Tensor<Self, 2>) -> Tensor<Self, 2> {
        if fused_kernels()
            && let Some(y) = dense_matvec_silu(x.clone(), gate, up)
        {
            return y;
        }
        let g = Self::matmul(x.clone(), gate.clone());
        let u = Self::matmul(x, up.clone());
        Self::silu_mul(g, u)
    }

    fn packed_matmul_silu(
        x: Tensor<Self, 2>,
        gate: &PackedMatrix<Self>,
        up: &PackedMatrix<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        if fused_kernels()
            && x.dims()[0] <= MATVEC_MAX_ROWS
            && let Ok(y) = packed_matvec_silu(x.clone(), gate, up)
        {
            return Ok(y);
        }
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

    fn folds_norms() -> bool {
        fused_kernels() && fold_norms()
    }

    fn norm_matmul3(
        h: Tensor<Self, 2>,
        norm: PreNorm<Self>,
        w: [Weight<Self>; 3],
    ) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        if fused_kernels()
            && let Some(ys) = norm_matvec3(h.clone(), norm, w)
        {
            return Ok(ys);
        }
        crate::ops::norm_matmul3(h, norm, w)
    }

    fn norm_matmul_silu(
        h: Tensor<Self, 2>,
        norm: PreNorm<Self>,
        gate: Weight<Self>,
        up: Weight<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        if fused_kernels()
            && let Some(y) = norm_matvec_silu(h.clone(), norm, gate, up)
        {
            return Ok(y);
        }
        crate::ops::norm_matmul_silu(h, norm, gate, up)
    }

    fn matmul_add(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        residual: Tensor<Self, 2>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        if fused_kernels()
            && let Some(y) = matvec_add(x.clone(), w, residual.clone())
        {
            return Ok(y);
        }
        crate::ops::matmul_add(x, w, residual)
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
