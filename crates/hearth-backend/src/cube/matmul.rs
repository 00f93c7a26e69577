//! Full-f32 matmul on cubecl backends through cubek's register/plane-vector strategies.
//!
//! burn's own `float_matmul` launches `cubek::matmul::launch::Strategy::Auto`, which tries a
//! tensor-core (CMMA) kernel first; on CUDA its f32 operands are then staged as TF32 (10-bit
//! mantissa). The strategies used here never call cubek's `adjust_dtypes`, so f32 stays f32.

use super::reduce::cube_sum_rows;
use super::{MATVEC_MAX_ROWS, kernel_float, matvec_shape, matvec_units, plane_reductions, prim, single_plane, wrap};
use crate::BackendError;
use burn::tensor::Tensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, tensor::CubeTensor};
use burn_cubecl::{
    kernel::matmul::init_matmul_output,
    ops::numeric::{empty_device_contiguous_dtype, empty_device_dtype},
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};
use cubek::matmul::{
    definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError},
    launch::{Strategy, launch_ref},
    routines::{
        BlueprintStrategy, TileSizeSelection, double_unit::DoubleUnitSelectionArgs,
        simple_unit::SimpleUnitSelectionArgs,
    },
};
use cubek::std::InputBinding;
use std::sync::OnceLock;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dense_matvec_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    out: &mut Array<F>,
    n_rows: u32,
    m_rows: u32,
    k: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cube c: weight rows n0 .. n0 + rows of output row m; its units take the rows' vectors
    // u, u + cube_dim, ..., `unroll` per row per pass, each load of x serving every row
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * m_rows as usize {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let m = c / groups;
    let nv = k as usize / w.vector_size();
    let xr = m * nv;
    let mut acc = Array::<f32>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = 0.0f32;
    }
    let mut v = UNIT_POS as usize;
    while v + comptime!((unroll - 1) * cube_dim) < nv {
        #[unroll]
        for r in 0..rows {
            // rows past the matrix repeat the last one (not written)
            let wr = (if n0 + r < nr { n0 + r } else { nr - 1 }) * nv;
            let mut s = Vector::<f32, N>::zeroed();
            #[unroll]
            for u in 0..unroll {
                s += Vector::<f32, N>::cast_from(w[wr + v + u * cube_dim])
                    * Vector::<f32, N>::cast_from(x[xr + v + u * cube_dim]);
            }
            acc[r] += f32::cast_from(s.vector_sum());
        }
        v += comptime!(unroll * cube_dim);
    }
    while v < nv {
        #[unroll]
        for r in 0..rows {
            let wr = (if n0 + r < nr { n0 + r } else { nr - 1 }) * nv;
            let p = Vector::<f32, N>::cast_from(w[wr + v]) * Vector::<f32, N>::cast_from(x[xr + v]);
            acc[r] += f32::cast_from(p.vector_sum());
        }
        v += cube_dim;
    }
    let mut shared = SharedMemory::<f32>::new(rows * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, rows, use_plane, single_plane);
    if UNIT_POS == 0 {
        #[unroll]
        for r in 0..rows {
            if n0 + r < nr {
                out[m * nr + n0 + r] = F::cast_from(acc[r]);
            }
        }
    }
}

/// `x · w` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and `w: [K, N]` stored transposed (a
/// `.transpose()` view of a contiguous `[N, K]`, as hearth's loader keeps dense device
/// weights): one cube per output reads the weight row as 16-byte vectors, f32 accumulation.
/// `None` when the operands are not in that shape and layout.
fn dense_matvec<R: CubeRuntime>(lhs: &CubeTensor<R>, rhs: &CubeTensor<R>) -> Option<CubeTensor<R>> {
    let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
    if ls.len() != 2 || rs.len() != 2 || !kernel_float(lhs.dtype) || lhs.dtype != rhs.dtype {
        return None;
    }
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    let rst = rhs.meta.strides();
    let transposed = rs[0] == k && rst[0] == 1 && rst[1] == k;
    if m == 0 || m > MATVEC_MAX_ROWS || k == 0 || n == 0 || !transposed || !lhs.is_contiguous() {
        return None;
    }
    // 16-byte vectors where the row length allows
    let vs = (0..=(16 / lhs.dtype.size()).trailing_zeros())
        .rev()
        .map(|p| 1usize << p)
        .find(|v| k.is_multiple_of(*v))
        .unwrap_or(1);
    let client = lhs.client.clone();
    // strictly contiguous (`empty_device_dtype` may pad rows): the kernel writes at `m · n + n`
    let out = empty_device_contiguous_dtype(
        client.clone(),
        lhs.device.clone(),
        burn::tensor::Shape::new([m, n]),
        lhs.dtype,
    );
    let shape = matvec_shape();
    let units = matvec_units(&client, shape, k * lhs.dtype.size() / 16);
    let cubes = m * n.div_ceil(shape.rows);
    // SAFETY: x is [m, k] contiguous and w holds n contiguous rows of k (the transposed view
    // checked above); out is [m, n] contiguous; rows past n are clamped to the last row and
    // not written; cubes past the work return early.
    unsafe {
        dense_matvec_kernel::launch_unchecked::<R>(
            &client,
            calculate_cube_count_elemwise(&client, cubes, CubeDim::new_1d(1)),
            CubeDim::new_1d(units),
            vs,
            lhs.clone().into_array_arg(),
            rhs.clone().into_array_arg(),
            out.clone().into_array_arg(),
            n as u32,
            m as u32,
            k as u32,
            units as usize,
            shape.rows,
            shape.unroll,
            plane_reductions(&client),
            single_plane(&client, units),
            lhs.dtype.into(),
        );
    }
    Some(out)
}

/// A strategy by the name used in `HEARTH_MATMUL` (for benchmarking on a GPU).
fn named(name: &str) -> Option<Strategy> {
    let unit = |tile_size| SimpleUnitSelectionArgs { tile_size };
    Some(match name {
        "vecmat" => Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())),
        "double_vecmat" => Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())),
        "gemv_plane" => Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default())),
        "gemv_unit" => Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default())),
        "unit" => Strategy::SimpleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MaxTileSize))),
        "unit_min" => Strategy::SimpleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MinTileSize))),
        "double_unit" => Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
            tile_size: TileSizeSelection::MaxTileSize,
        })),
        "naive" => Strategy::Naive,
        // burn's choice: tensor cores, TF32 for f32 on CUDA. Only for comparisons.
        "auto" => Strategy::Auto,
        _ => return None,
    })
}

/// Strategy names tried in order for one-row and for many-row products. The default is
/// SimpleVecMat (one row) / SimpleUnit (more), each falling back to the others and finally to
/// Naive (always available). `HEARTH_MATMUL="vec=a,b;mat=c,d"` overrides either list, e.g.
/// `HEARTH_MATMUL="vec=gemv_unit;mat=double_unit"`, to compare kernels on a GPU.
fn plan() -> &'static (Vec<&'static str>, Vec<&'static str>) {
    static PLAN: OnceLock<(Vec<&'static str>, Vec<&'static str>)> = OnceLock::new();
    PLAN.get_or_init(|| {
        let mut vec = vec!["vecmat", "gemv_unit", "gemv_plane", "unit", "naive"];
        let mut mat = vec!["unit", "double_unit", "naive"];
        if let Ok(spec) = std::env::var("HEARTH_MATMUL") {
            let known = |s: &str| -> Vec<&'static str> {
                let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
                leaked
                    .split(',')
                    .map(str::trim)
                    .filter(|n| named(n).is_some())
                    .collect()
            };
            for part in spec.split(';') {
                match part.split_once('=') {
                    Some(("vec", v)) => vec = [known(v), vec].concat(),
                    Some(("mat", v)) => mat = [known(v), mat].concat(),
                    _ => {}
                }
            }
        }
        (vec, mat)
    })
}

/// `HEARTH_MATMUL_TRACE=1` prints which strategy ran each product (and why others did not).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("HEARTH_MATMUL_TRACE").is_some_and(|v| v != "0"))
}

fn launch<R: CubeRuntime>(
    strategy: &Strategy,
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    out: &CubeTensor<R>,
) -> Result<(), MatmulSetupError> {
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: out.dtype.into(),
    });
    launch_ref(
        strategy,
        &out.client,
        InputBinding::new(lhs.clone().binding(), lhs.dtype.into()),
        InputBinding::new(rhs.clone().binding(), rhs.dtype.into()),
        out.clone().binding(),
        &mut dtypes,
    )
}

/// Matrix product with the contract of burn's `Tensor::matmul` (batch dims broadcast), in full
/// f32 for f32 inputs on every device (no TF32). Half-precision inputs accumulate in f32.
///
/// Errors: [`BackendError::ShapeMismatch`] when the shapes cannot be multiplied or the dtypes
/// differ.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let a = Tensor::<Wgpu, 3>::ones([2, 1, 3], &dev);
/// let b = Tensor::<Wgpu, 3>::ones([1, 3, 4], &dev); // broadcast over the batch
/// assert_eq!(cube::matmul_f32(a, b).unwrap().dims(), [2, 1, 4]);
/// # }
/// ```
pub fn matmul_f32<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    lhs: Tensor<CubeBackend<R, F, I, BT>, D>,
    rhs: Tensor<CubeBackend<R, F, I, BT>, D>,
) -> Result<Tensor<CubeBackend<R, F, I, BT>, D>, BackendError> {
    let mismatch = |reason: String| BackendError::ShapeMismatch { op: "matmul", reason };
    let (ld, rd) = (lhs.dims(), rhs.dims());
    if D < 2 || lhs.dtype() != rhs.dtype() {
        return Err(mismatch(format!("{ld:?} {:?} × {rd:?} {:?}", lhs.dtype(), rhs.dtype())));
    }
    let (lhs, rhs) = (prim(lhs), prim(rhs));
    let out_shape = cubecl::zspace::calculate_matmul_output(lhs.meta.shape(), rhs.meta.shape())
        .map_err(|e| mismatch(format!("{ld:?} × {rd:?}: {e:?}")))?;
    if out_shape.num_elements() == 0 || ld[D - 1] == 0 {
        // nothing to launch; an empty K sums to zero
        let out = empty_device_dtype(lhs.client.clone(), lhs.device.clone(), out_shape.clone(), lhs.dtype);
        let out: Tensor<CubeBackend<R, F, I, BT>, D> = wrap(out);
        return Ok(out.zeros_like());
    }
    if let Some(out) = dense_matvec(&lhs, &rhs) {
        return Ok(wrap(out));
    }
    let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
    let (vec, mat) = plan();
    let names = if out_shape[D - 2] == 1 { vec } else { mat };
    let mut errors = Vec::new();
    for name in names {
        let strategy = named(name).expect("plan() keeps known names");
        // setup errors are returned before anything is launched, so the next one may run
        match launch(&strategy, &lhs, &rhs, &out) {
            Ok(()) => {
                if trace() {
                    eprintln!("hearth matmul {ld:?} x {rd:?}: {name} (skipped: {})", errors.join("; "));
                }
                return Ok(wrap(out));
            }
            Err(e) => errors.push(format!("{name}: {e:?}")),
        }
    }
    Err(mismatch(format!(
        "no f32 matmul kernel applies to {ld:?} × {rd:?}: {}",
        errors.join("; ")
    )))
}
