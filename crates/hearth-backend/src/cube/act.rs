//! Fused SwiGLU gate `silu(gate) · up`.

use super::{kernel_float, prim, wrap};
use crate::BackendError;
use burn::tensor::Tensor as BTensor;
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*, tensor_vector_size_parallel};

#[cube(launch_unchecked)]
fn silu_mul_kernel<F: Float, N: Size>(
    gate: &Array<Vector<F, N>>,
    up: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    len: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < len as usize {
        let g = Vector::<f32, N>::cast_from(gate[i]);
        let one = Vector::<f32, N>::new(1.0f32);
        // `0 - g`, not `-g`: cubecl 0.10's CUDA dialect emits unary minus on a vector struct
        // (`-float_4`), which NVRTC rejects
        let zero = Vector::<f32, N>::new(0.0f32);
        let y = g / (one + Vector::exp(zero - g)) * Vector::<f32, N>::cast_from(up[i]);
        out[i] = Vector::cast_from(y);
    }
}

/// `silu(gate) · up` element-wise in one kernel (computed in f32). Same result as
/// [`crate::ops::silu_mul`] up to the last bit of `exp`.
///
/// Errors: [`BackendError::ShapeMismatch`] when the shapes or dtypes differ.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let g = Tensor::<Wgpu, 1>::from_floats([0.0, 1.0], &dev);
/// let u = Tensor::<Wgpu, 1>::from_floats([5.0, 2.0], &dev);
/// let y = cube::silu_mul(g, u).unwrap().into_data().to_vec::<f32>().unwrap();
/// assert_eq!(y[0], 0.0);
/// # }
/// ```
pub fn silu_mul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    gate: BTensor<CubeBackend<R, F, I, BT>, D>,
    up: BTensor<CubeBackend<R, F, I, BT>, D>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, D>, BackendError> {
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() || !kernel_float(gate.dtype()) {
        return Err(BackendError::ShapeMismatch {
            op: "silu_mul",
            reason: format!(
                "gate {:?} {:?}, up {:?} {:?}",
                gate.dims(),
                gate.dtype(),
                up.dims(),
                up.dtype()
            ),
        });
    }
    let len = gate.shape().num_elements();
    if len == 0 {
        return Ok(gate);
    }
    // contiguous row-major buffers, so that both are flat arrays of the same order
    let g = into_contiguous(prim(gate));
    let u = into_contiguous(prim(up));
    let client = g.client.clone();
    let dtype = g.dtype;
    let shape = g.meta.shape().clone();
    let out = empty_device_contiguous_dtype(client.clone(), g.device.clone(), shape.clone(), dtype);
    let flat = burn::tensor::Shape::new([len]);
    let strides = cubecl::zspace::Strides::new(&[1]);
    let vs = tensor_vector_size_parallel(client.io_optimized_vector_sizes(dtype.size()), &flat, &strides, 0);
    let contiguous = |t: &burn_cubecl::tensor::CubeTensor<R>| t.is_contiguous();
    if !contiguous(&g) || !contiguous(&u) || !contiguous(&out) {
        return Err(BackendError::ShapeMismatch {
            op: "silu_mul",
            reason: "operands are not contiguous".into(),
        });
    }
    let units = len / vs;
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments); units past the work return early.
    unsafe {
        silu_mul_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            vs,
            g.into_array_arg(),
            u.into_array_arg(),
            out.clone().into_array_arg(),
            units as u32,
            dtype.into(),
        );
    }
    Ok(wrap(out))
}
