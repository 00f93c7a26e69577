//! Rotary position embedding in one element-wise kernel.

use super::{kernel_float, prim, wrap};
use crate::BackendError;
use burn::tensor::Tensor as BTensor;
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

#[cube(launch_unchecked)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    len: u32,
    rope_dim: u32,
    #[comptime] interleaved: bool,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= len as usize {
        terminate!();
    }
    let d = out.shape(3);
    let t_len = out.shape(2);
    let h_len = out.shape(1);
    let j = pos % d;
    let t = (pos / d) % t_len;
    let h = (pos / (d * t_len)) % h_len;
    let b = pos / (d * t_len * h_len);
    let xb = b * x.stride(0) + h * x.stride(1) + t * x.stride(2);
    let xs = x.stride(3);
    let r = rope_dim as usize;
    if j >= r {
        out[pos] = x[xb + j * xs];
    } else {
        let half = r / 2;
        let i = j % half;
        let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let x1 = f32::cast_from(x[xb + i1 * xs]);
        let x2 = f32::cast_from(x[xb + i2 * xs]);
        let cb = b * cos.stride(0) + t * cos.stride(2) + j * cos.stride(3);
        let sb = b * sin.stride(0) + t * sin.stride(2) + j * sin.stride(3);
        let c = f32::cast_from(cos[cb]);
        let s = f32::cast_from(sin[sb]);
        let y = if j < half { x1 * c - x2 * s } else { x2 * c + x1 * s };
        out[pos] = F::cast_from(y);
    }
}

/// RoPE on the first `rope_dim` dims of each head of `x: [B, H, T, D]` (any strides) with
/// `cos`/`sin: [B, 1, T, rope_dim]`, in one launch, computed in f32; the output is contiguous.
/// Same result as [`crate::ops::rope`] (the same f32 products, one rounding).
///
/// Errors: [`BackendError::ShapeMismatch`] for an odd or too large `rope_dim`, tables of another
/// shape, or dtypes that differ or are not floats.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = Tensor::<Wgpu, 4>::from_floats([[[[0.0, 1.0, 7.0]]]], &dev);
/// let cos = Tensor::<Wgpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev);
/// let sin = Tensor::<Wgpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
/// let y = cube::rope(x, &cos, &sin, 2, false).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0, 7.0]);
/// # }
/// ```
pub fn rope<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 4>,
    cos: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    sin: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    rope_dim: usize,
    interleaved: bool,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 4>, BackendError> {
    let [b, h, t, d] = x.dims();
    let table = [b, 1, t, rope_dim];
    if rope_dim == 0 || !rope_dim.is_multiple_of(2) || rope_dim > d || cos.dims() != table || sin.dims() != table {
        return Err(BackendError::ShapeMismatch {
            op: "rope",
            reason: format!(
                "x {:?}, rope_dim {rope_dim}, cos {:?}, sin {:?}",
                x.dims(),
                cos.dims(),
                sin.dims()
            ),
        });
    }
    if x.dtype() != cos.dtype() || x.dtype() != sin.dtype() || !kernel_float(x.dtype()) {
        return Err(BackendError::ShapeMismatch {
            op: "rope",
            reason: format!("dtypes {:?}, {:?}, {:?}", x.dtype(), cos.dtype(), sin.dtype()),
        });
    }
    let len = b * h * t * d;
    if len == 0 {
        return Ok(x);
    }
    let x = prim(x);
    let (c, s) = (prim(cos.clone()), prim(sin.clone()));
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments); units past the work return early.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            x.into_tensor_arg(),
            c.into_tensor_arg(),
            s.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len as u32,
            rope_dim as u32,
            interleaved,
            dtype.into(),
        );
    }
    Ok(wrap(out))
}
