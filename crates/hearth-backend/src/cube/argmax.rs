//! Row-wise argmax with a NaN flag: one cube per row (a decode step's greedy token on the
//! device; burn's `argmax` reduces a 128k-value row in one unit, ~2 ms on an H200).

use super::reduce::cube_max;
use super::{kernel_float, plane_reductions, prim, reduction_cube_dim};
use crate::BackendError;
use burn::tensor::{Int as IntKind, Tensor as BTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// A 1-D int tensor of a cubecl backend.
type IntRows<R, F, I, BT> = BTensor<CubeBackend<R, F, I, BT>, 1, IntKind>;

/// Values a unit reads per pass (their loads are issued together).
const PASS: usize = 8;

/// Rows longer than this are declined (indices travel through f32 in the reduction).
const MAX_COLS: usize = 1 << 24;

#[cube(launch_unchecked)]
fn argmax_kernel<F: Float, O: Int>(
    x: &Array<F>,
    out: &mut Array<O>,
    rows: u32,
    cols: u32,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[define(F, O)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = cols as usize;
    let base = row * n;
    // this unit's first largest value (its indices ascend), `n` while it has seen none
    let mut best = f32::new(-3.4e38f32);
    let mut idx = n;
    let mut nan = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i + comptime!((PASS - 1) * cube_dim) < n {
        let mut v = Array::<f32>::new(PASS);
        #[unroll]
        for j in 0..PASS {
            v[j] = f32::cast_from(x[base + i + comptime!(j * cube_dim)]);
        }
        #[unroll]
        for j in 0..PASS {
            let e = v[j];
            if f32::is_nan(e) {
                nan = 1.0f32;
            } else if e > best || idx == n {
                best = e;
                idx = i + comptime!(j * cube_dim);
            }
        }
        i += comptime!(PASS * cube_dim);
    }
    while i < n {
        let e = f32::cast_from(x[base + i]);
        if f32::is_nan(e) {
            nan = 1.0f32;
        } else if e > best || idx == n {
            best = e;
            idx = i;
        }
        i += cube_dim;
    }
    let mut s0 = SharedMemory::<f32>::new(cube_dim);
    let mut s1 = SharedMemory::<f32>::new(cube_dim);
    let mut s2 = SharedMemory::<f32>::new(cube_dim);
    let m = cube_max(best, &mut s0, use_plane);
    // the smallest index holding the maximum (indices < 2²⁴ are exact in f32)
    let cand = select(idx < n && best == m, 0.0f32 - f32::cast_from(idx as u32), -3.0e38f32);
    let first = 0.0f32 - cube_max(cand, &mut s1, use_plane);
    let any_nan = cube_max(nan, &mut s2, use_plane);
    if UNIT_POS == 0 {
        // a row of NaN only: index 0, flagged
        let at = select(first < f32::cast_from(cols), u32::cast_from(first), 0u32);
        out[row] = O::cast_from(at);
        out[rows as usize + row] = O::cast_from(u32::cast_from(any_nan));
    }
}

/// For `x: [rows, cols]` (float), `[2 · rows]` ints: each row's index of its largest value
/// (the first on ties), then per row 1 where it holds a NaN, else 0 (the index is then that of
/// the largest other value, 0 for a row of NaN only). One launch, one cube per row.
///
/// Errors: [`BackendError::ShapeMismatch`] for an empty `x`, a non-float dtype or rows of more
/// than 2²⁴ values.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = Tensor::<Wgpu, 2>::from_floats([[1.0, 3.0, 3.0], [f32::NAN, 0.0, -1.0]], &dev);
/// let out = cube::argmax_rows(x).unwrap().into_data().convert::<i64>().to_vec::<i64>().unwrap();
/// assert_eq!(out, vec![1, 1, 0, 1]);
/// # }
/// ```
pub fn argmax_rows<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
) -> Result<IntRows<R, F, I, BT>, BackendError> {
    let [rows, cols] = x.dims();
    if rows == 0 || cols == 0 || cols > MAX_COLS || !kernel_float(x.dtype()) {
        return Err(BackendError::ShapeMismatch {
            op: "argmax_rows",
            reason: format!("x is [{rows}, {cols}] {:?}", x.dtype()),
        });
    }
    let x = into_contiguous(prim(x));
    let client = x.client.clone();
    let fdtype = x.dtype;
    let idtype = <I as burn::tensor::Element>::dtype();
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [2 * rows].into(), idtype);
    let cube_dim = reduction_cube_dim(&client, cols.div_ceil(PASS).max(1) * 4);
    let use_plane = plane_reductions(&client);
    let count = calculate_cube_count_elemwise(&client, rows, CubeDim::new_1d(1));
    // SAFETY: `x` is a contiguous [rows, cols] float tensor and `out` a fresh contiguous
    // [2 · rows] int tensor; the kernel reads `x` at `row · cols + i` for `i < cols` and
    // writes `out[row]`, `out[rows + row]`; cubes past `rows` return before any barrier.
    unsafe {
        argmax_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_1d(cube_dim),
            x.into_array_arg(),
            out.clone().into_array_arg(),
            rows as u32,
            cols as u32,
            cube_dim as usize,
            use_plane,
            [fdtype.into(), idtype.into()],
        );
    }
    Ok(BTensor::from_primitive(out))
}
