//! Fused RMSNorm: one cube per row, f32 accumulation, plane + shared-memory reduction.

use super::reduce::cube_sum;
use super::{kernel_float, plane_reductions, prim, reduction_cube_dim, wrap};
use crate::BackendError;
use burn::tensor::Tensor as BTensor;
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*, tensor_vector_size_parallel};

#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    ss: &mut Array<Atomic<f32>>,
    rows: u32,
    cols: u32,
    eps: f32,
    ss_at: u32,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[comptime] sums: bool,
    #[define(F)] _dtype: StorageType,
) {
    // with `sums`: out = x ⊙ w, the row's Σx² added to ss[ss_at + row] (the norm is applied
    // later, by the products that read `out`)
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = x.vector_size();
    let cols = cols as usize;
    let cols_v = cols / n;
    // x and out are [rows, cols] contiguous
    let x_row = row * cols_v;
    let o_row = row * cols_v;

    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < cols_v {
        let v = Vector::<f32, N>::cast_from(x[x_row + i]);
        acc += f32::cast_from((v * v).vector_sum());
        i += cube_dim;
    }
    let mut shared = SharedMemory::<f32>::new(cube_dim);
    let total = cube_sum(acc, &mut shared, use_plane);
    let mut inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(total / f32::cast_from(cols) + eps));
    if comptime!(sums) {
        inv = Vector::<f32, N>::new(1.0f32);
        if UNIT_POS == 0 {
            ss[ss_at as usize + row].fetch_add(total);
        }
    }

    let mut j = UNIT_POS as usize;
    while j < cols_v {
        let y = Vector::<f32, N>::cast_from(x[x_row + j]) * inv * Vector::<f32, N>::cast_from(w[j]);
        out[o_row + j] = Vector::cast_from(y);
        j += cube_dim;
    }
}

/// RMSNorm of each row of `x: [rows, cols]`: `x / sqrt(mean(x²) + eps) * weight`, accumulated
/// in f32 whatever the float dtype. Same result as [`crate::ops::rms_norm`] up to summation
/// order.
///
/// Errors: [`BackendError::ShapeMismatch`] when `weight` is not `[cols]`, a dimension is 0 or
/// the dtypes differ or are not floats.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = Tensor::<Wgpu, 2>::from_floats([[3.0, 4.0]], &dev);
/// let w = Tensor::<Wgpu, 1>::from_floats([1.0, 1.0], &dev);
/// let y = cube::rms_norm(x, w, 0.0).unwrap().into_data().to_vec::<f32>().unwrap();
/// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// # }
/// ```
pub fn rms_norm<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    weight: BTensor<CubeBackend<R, F, I, BT>, 1>,
    eps: f64,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    norm_rows("rms_norm", x, weight, eps, None)
}

/// `x ⊙ weight` for `x: [rows, cols]`, each row's `Σx²` (f32) added to the f32 buffer `sums`
/// at `at + row`: [`crate::HearthBackend::sums_norm`] in one launch (the norm itself applied
/// by the products that read the output).
///
/// Errors: as [`rms_norm`], and [`BackendError::ShapeMismatch`] for a buffer that is not f32,
/// contiguous and at least `at + rows` long.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::{DType, Tensor};
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let sums = Tensor::<Wgpu, 1>::zeros([2], (&dev, DType::F32));
/// let x = Tensor::<Wgpu, 2>::from_floats([[3.0, 4.0]], &dev);
/// let hg = cube::sums_norm(x, Tensor::ones([2], &dev), &sums, 1).unwrap();
/// assert_eq!(sums.into_data().to_vec::<f32>().unwrap(), vec![0.0, 25.0]);
/// assert_eq!(hg.into_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
/// # }
/// ```
pub fn sums_norm<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    weight: BTensor<CubeBackend<R, F, I, BT>, 1>,
    sums: &BTensor<CubeBackend<R, F, I, BT>, 1>,
    at: usize,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    let buf = prim(sums.clone());
    let rows = x.dims()[0];
    if buf.dtype != burn::tensor::DType::F32 || buf.meta.strides()[0] != 1 || buf.meta.shape()[0] < at + rows {
        return Err(BackendError::ShapeMismatch {
            op: "sums_norm",
            reason: format!(
                "a sums buffer of {:?} {:?} for {rows} rows at {at}",
                buf.dtype,
                buf.meta.shape()
            ),
        });
    }
    norm_rows("sums_norm", x, weight, 0.0, Some((buf, at)))
}

fn norm_rows<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    op: &'static str,
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    weight: BTensor<CubeBackend<R, F, I, BT>, 1>,
    eps: f64,
    sums: Option<(burn_cubecl::tensor::CubeTensor<R>, usize)>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    let [rows, cols] = x.dims();
    let mismatch = |reason: String| BackendError::ShapeMismatch { op, reason };
    if rows == 0 || cols == 0 || weight.dims() != [cols] {
        return Err(mismatch(format!("x is [{rows}, {cols}], weight {:?}", weight.dims())));
    }
    if x.dtype() != weight.dtype() || !kernel_float(x.dtype()) {
        return Err(mismatch(format!("dtypes {:?} and {:?}", x.dtype(), weight.dtype())));
    }
    let x = into_contiguous(prim(x));
    let w = into_contiguous(prim(weight));
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let sizes = || client.io_optimized_vector_sizes(dtype.size());
    let vs = tensor_vector_size_parallel(sizes(), x.meta.shape(), x.meta.strides(), 1)
        .min(tensor_vector_size_parallel(
            sizes(),
            out.meta.shape(),
            out.meta.strides(),
            1,
        ))
        .min(tensor_vector_size_parallel(
            sizes(),
            w.meta.shape(),
            w.meta.strides(),
            0,
        ));
    let vs = (0..=vs.trailing_zeros())
        .rev()
        .map(|p| 1 << p)
        .find(|v| cols % v == 0)
        .unwrap_or(1);
    let cube_dim = reduction_cube_dim(&client, cols / vs);
    let use_plane = plane_reductions(&client);
    let cube_count = calculate_cube_count_elemwise(&client, rows, CubeDim::new_1d(1));
    let (ss, ss_at) = match &sums {
        Some((b, at)) => (b.clone(), *at as u32),
        None => (out.clone(), 0),
    };
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments; the sums buffer holds `ss_at + rows` values when
    // used); units past the work return early.
    unsafe {
        rms_norm_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(cube_dim),
            vs,
            x.into_array_arg(),
            w.into_array_arg(),
            out.clone().into_array_arg(),
            ss.into_array_arg(),
            rows as u32,
            cols as u32,
            eps as f32,
            ss_at,
            cube_dim as usize,
            use_plane,
            sums.is_some(),
            dtype.into(),
        );
    }
    Ok(wrap(out))
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn add_rms_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    r: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    sum: &mut Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: u32,
    cols: u32,
    eps: f32,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = x.vector_size();
    let cols = cols as usize;
    let cols_v = cols / n;
    // every operand is [rows, cols] contiguous
    let x_row = row * cols_v;
    let r_row = row * cols_v;
    let o_row = row * cols_v;

    // the sum is rounded to F first (it is what the next layer adds to), then squared
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < cols_v {
        let s = Vector::<F, N>::cast_from(
            Vector::<f32, N>::cast_from(x[x_row + i]) + Vector::<f32, N>::cast_from(r[r_row + i]),
        );
        sum[o_row + i] = s;
        let v = Vector::<f32, N>::cast_from(s);
        acc += f32::cast_from((v * v).vector_sum());
        i += cube_dim;
    }
    let mut shared = SharedMemory::<f32>::new(cube_dim);
    let total = cube_sum(acc, &mut shared, use_plane);
    let inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(total / f32::cast_from(cols) + eps));

    // each unit reads back only the sums it wrote itself
    let mut j = UNIT_POS as usize;
    while j < cols_v {
        let y = Vector::<f32, N>::cast_from(sum[o_row + j]) * inv * Vector::<f32, N>::cast_from(w[j]);
        out[o_row + j] = Vector::cast_from(y);
        j += cube_dim;
    }
}

/// Residual add and RMSNorm of each row in one launch: for `x, r: [rows, cols]` returns
/// `(x + r, rms_norm(x + r, weight, eps))` (the sum rounded to the float dtype, as the separate
/// add would, then normalised in f32). Same result as [`crate::ops::add_rms_norm`] up to
/// summation order.
///
/// Errors: [`BackendError::ShapeMismatch`] when `r` or `weight` do not match `x`, a dimension
/// is 0, or the dtypes differ or are not floats.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = Tensor::<Wgpu, 2>::from_floats([[3.0, 0.0]], &dev);
/// let r = Tensor::<Wgpu, 2>::from_floats([[0.0, 4.0]], &dev);
/// let w = Tensor::<Wgpu, 1>::from_floats([1.0, 1.0], &dev);
/// let (s, y) = cube::add_rms_norm(x, r, w, 0.0).unwrap();
/// assert_eq!(s.into_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
/// assert!((y.into_data().to_vec::<f32>().unwrap()[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn add_rms_norm<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    r: BTensor<CubeBackend<R, F, I, BT>, 2>,
    weight: BTensor<CubeBackend<R, F, I, BT>, 1>,
    eps: f64,
) -> Result<
    (
        BTensor<CubeBackend<R, F, I, BT>, 2>,
        BTensor<CubeBackend<R, F, I, BT>, 2>,
    ),
    BackendError,
> {
    let [rows, cols] = x.dims();
    let mismatch = |reason: String| BackendError::ShapeMismatch {
        op: "add_rms_norm",
        reason,
    };
    if rows == 0 || cols == 0 || weight.dims() != [cols] || r.dims() != [rows, cols] {
        return Err(mismatch(format!(
            "x is [{rows}, {cols}], r {:?}, weight {:?}",
            r.dims(),
            weight.dims()
        )));
    }
    if x.dtype() != weight.dtype() || x.dtype() != r.dtype() || !kernel_float(x.dtype()) {
        return Err(mismatch(format!(
            "dtypes {:?}, {:?} and {:?}",
            x.dtype(),
            r.dtype(),
            weight.dtype()
        )));
    }
    let x = into_contiguous(prim(x));
    let r = into_contiguous(prim(r));
    let w = into_contiguous(prim(weight));
    let client = x.client.clone();
    let dtype = x.dtype;
    let sum = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let sizes = || client.io_optimized_vector_sizes(dtype.size());
    let vs = [(&x, 1), (&r, 1), (&sum, 1), (&out, 1), (&w, 0)]
        .iter()
        .map(|(t, axis)| tensor_vector_size_parallel(sizes(), t.meta.shape(), t.meta.strides(), *axis))
        .min()
        .unwrap_or(1);
    let vs = (0..=vs.trailing_zeros())
        .rev()
        .map(|p| 1 << p)
        .find(|v| cols % v == 0)
        .unwrap_or(1);
    let cube_dim = reduction_cube_dim(&client, cols / vs);
    let use_plane = plane_reductions(&client);
    let cube_count = calculate_cube_count_elemwise(&client, rows, CubeDim::new_1d(1));
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments); units past the work return early.
    unsafe {
        add_rms_norm_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(cube_dim),
            vs,
            x.into_array_arg(),
            r.into_array_arg(),
            w.into_array_arg(),
            sum.clone().into_array_arg(),
            out.clone().into_array_arg(),
            rows as u32,
            cols as u32,
            eps as f32,
            cube_dim as usize,
            use_plane,
            dtype.into(),
        );
    }
    Ok((wrap(sum), wrap(out)))
}
