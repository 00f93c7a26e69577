//! Rotary position embedding in one element-wise kernel.

use super::{kernel_float, prim, wrap};
use crate::BackendError;
use burn::tensor::Tensor as BTensor;
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// Shape and strides of the rope kernel's operands, in elements (`x` any strides; `cos`/`sin`
/// `[B, 1, T, rope_dim]` any strides; `out` `[B, H, T, D]` contiguous).
#[derive(CubeLaunch, CubeType)]
pub(crate) struct RopeLayout {
    h_len: u32,
    t_len: u32,
    d: u32,
    xs0: u32,
    xs1: u32,
    xs2: u32,
    xs3: u32,
    cs0: u32,
    cs2: u32,
    cs3: u32,
    ss0: u32,
    ss2: u32,
    ss3: u32,
}

/// Element `pos` (row-major over `[B, H, T, D]`) of the rotated `x`.
#[cube]
pub(crate) fn rope_element<F: Float>(
    x: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    l: &RopeLayout,
    pos: usize,
    rope_dim: u32,
    #[comptime] interleaved: bool,
) -> F {
    let d = l.d as usize;
    let t_len = l.t_len as usize;
    let h_len = l.h_len as usize;
    let j = pos % d;
    let t = (pos / d) % t_len;
    let h = (pos / (d * t_len)) % h_len;
    let b = pos / (d * t_len * h_len);
    let xb = b * l.xs0 as usize + h * l.xs1 as usize + t * l.xs2 as usize;
    let xs = l.xs3 as usize;
    let r = rope_dim as usize;
    let mut y = x[xb + j * xs];
    if j < r {
        let half = r / 2;
        let i = j % half;
        let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let x1 = f32::cast_from(x[xb + i1 * xs]);
        let x2 = f32::cast_from(x[xb + i2 * xs]);
        let cb = b * l.cs0 as usize + t * l.cs2 as usize + j * l.cs3 as usize;
        let sb = b * l.ss0 as usize + t * l.ss2 as usize + j * l.ss3 as usize;
        let c = f32::cast_from(cos[cb]);
        let s = f32::cast_from(sin[sb]);
        y = F::cast_from(if j < half { x1 * c - x2 * s } else { x2 * c + x1 * s });
    }
    y
}

#[cube(launch_unchecked)]
fn rope_kernel<F: Float>(
    x: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    out: &mut Array<F>,
    l: RopeLayout,
    len: u32,
    rope_dim: u32,
    #[comptime] interleaved: bool,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= len as usize {
        terminate!();
    }
    out[pos] = rope_element::<F>(x, cos, sin, &l, pos, rope_dim, interleaved);
}

/// Two tensors rotated with the same tables in one launch: units below `len_a` take `a`'s
/// elements, the rest `b`'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope2_kernel<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    out_a: &mut Array<F>,
    out_b: &mut Array<F>,
    la: RopeLayout,
    lb: RopeLayout,
    len_a: u32,
    len_b: u32,
    rope_dim: u32,
    #[comptime] interleaved: bool,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    let (na, nb) = (len_a as usize, len_b as usize);
    if pos >= na + nb {
        terminate!();
    }
    if pos < na {
        out_a[pos] = rope_element::<F>(a, cos, sin, &la, pos, rope_dim, interleaved);
    } else {
        out_b[pos - na] = rope_element::<F>(b, cos, sin, &lb, pos - na, rope_dim, interleaved);
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
    let len = check(&x, cos, sin, rope_dim)?;
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
    let layout = layout(&x, &c, &s);
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments); units past the work return early.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            x.into_array_arg(),
            c.into_array_arg(),
            s.into_array_arg(),
            out.clone().into_array_arg(),
            layout,
            len as u32,
            rope_dim as u32,
            interleaved,
            dtype.into(),
        );
    }
    Ok(wrap(out))
}

/// [`rope`] of two tensors with the same tables (attention's q and k: `[B, H, T, D]` and
/// `[B, Hkv, T, D]`, any strides) in one launch; both outputs contiguous.
///
/// Errors: as [`rope`], for either tensor, and when their dtypes differ.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = Tensor::<Wgpu, 4>::from_floats([[[[0.0, 1.0]]]], &dev);
/// let cos = Tensor::<Wgpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev);
/// let sin = Tensor::<Wgpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
/// let (q, k) = cube::rope2(x.clone(), x, &cos, &sin, 2, false).unwrap();
/// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0]);
/// assert_eq!(k.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0]);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn rope2<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    a: BTensor<CubeBackend<R, F, I, BT>, 4>,
    b: BTensor<CubeBackend<R, F, I, BT>, 4>,
    cos: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    sin: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    rope_dim: usize,
    interleaved: bool,
) -> Result<
    (
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
    ),
    BackendError,
> {
    let len_a = check(&a, cos, sin, rope_dim)?;
    let len_b = check(&b, cos, sin, rope_dim)?;
    if a.dtype() != b.dtype() {
        return Err(BackendError::ShapeMismatch {
            op: "rope",
            reason: format!("dtypes {:?} and {:?}", a.dtype(), b.dtype()),
        });
    }
    if len_a == 0 || len_b == 0 {
        return Ok((
            rope(a, cos, sin, rope_dim, interleaved)?,
            rope(b, cos, sin, rope_dim, interleaved)?,
        ));
    }
    let (a, b) = (prim(a), prim(b));
    let (c, s) = (prim(cos.clone()), prim(sin.clone()));
    let client = a.client.clone();
    let dtype = a.dtype;
    let out_a = empty_device_contiguous_dtype(client.clone(), a.device.clone(), a.meta.shape().clone(), dtype);
    let out_b = empty_device_contiguous_dtype(client.clone(), b.device.clone(), b.meta.shape().clone(), dtype);
    let len = len_a + len_b;
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    let (la, lb) = (layout(&a, &c, &s), layout(&b, &c, &s));
    // SAFETY: as in `rope`, for each of the two tensors (validated above); units below
    // `len_a` touch only `a`/`out_a`, the others only `b`/`out_b`; units past both return.
    unsafe {
        rope2_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            a.into_array_arg(),
            b.into_array_arg(),
            c.into_array_arg(),
            s.into_array_arg(),
            out_a.clone().into_array_arg(),
            out_b.clone().into_array_arg(),
            la,
            lb,
            len_a as u32,
            len_b as u32,
            rope_dim as u32,
            interleaved,
            dtype.into(),
        );
    }
    Ok((wrap(out_a), wrap(out_b)))
}

/// Validates one rope operand against its tables; its element count.
pub(crate) fn check<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    cos: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    sin: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    rope_dim: usize,
) -> Result<usize, BackendError> {
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
    Ok(b * h * t * d)
}

/// The kernel's view of `x` and its tables.
pub(crate) fn layout<R: CubeRuntime>(
    x: &burn_cubecl::tensor::CubeTensor<R>,
    c: &burn_cubecl::tensor::CubeTensor<R>,
    s: &burn_cubecl::tensor::CubeTensor<R>,
) -> RopeLayoutLaunch<R> {
    let st = |t: &burn_cubecl::tensor::CubeTensor<R>, i: usize| t.meta.strides()[i] as u32;
    let sh = x.meta.shape();
    RopeLayoutLaunch::new(
        sh[1] as u32,
        sh[2] as u32,
        sh[3] as u32,
        st(x, 0),
        st(x, 1),
        st(x, 2),
        st(x, 3),
        st(c, 0),
        st(c, 2),
        st(c, 3),
        st(s, 0),
        st(s, 2),
        st(s, 3),
    )
}
