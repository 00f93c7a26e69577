//! In-place strided writes (KV-cache updates) in one launch.

use super::{prim, wrap};
use crate::BackendError;
use burn::tensor::Tensor as BTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// Shape of `src` and the strides (in elements) of both operands, and the offset in `dst`.
#[derive(CubeLaunch, CubeType)]
struct WriteLayout {
    d1: u32,
    d2: u32,
    d3: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    t0: u32,
    t1: u32,
    t2: u32,
    t3: u32,
    base: u32,
}

#[cube(launch_unchecked)]
fn write_at_kernel<F: Float>(
    src: &Array<F>,
    dst: &mut Array<F>,
    l: WriteLayout,
    len: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= len as usize {
        terminate!();
    }
    let (d1, d2, d3) = (l.d1 as usize, l.d2 as usize, l.d3 as usize);
    let j3 = i % d3;
    let j2 = (i / d3) % d2;
    let j1 = (i / (d3 * d2)) % d1;
    let j0 = i / (d3 * d2 * d1);
    let s = j0 * l.s0 as usize + j1 * l.s1 as usize + j2 * l.s2 as usize + j3 * l.s3 as usize;
    let t = l.base as usize + j0 * l.t0 as usize + j1 * l.t1 as usize + j2 * l.t2 as usize + j3 * l.t3 as usize;
    dst[t] = src[s];
}

/// `dst` with `src` written at `offset`, in place (one launch): the cubecl
/// [`crate::HearthBackend::write_at`]. `dst` must not be shared (else the write would show
/// through other handles) and both must have the same float dtype.
///
/// Errors: [`BackendError::ShapeMismatch`] when `src` does not fit in `dst` at `offset`, the
/// dtypes differ or `dst` is shared (the caller falls back to `slice_assign`, which copies).
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let dst = Tensor::<Wgpu, 4>::zeros([1, 1, 2, 1], &dev);
/// let y = cube::write_at(dst, Tensor::ones([1, 1, 1, 1], &dev), [0, 0, 1, 0]).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
/// # }
/// ```
pub fn write_at<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 4>, BackendError> {
    write_at_or_back(dst, src, offset).map_err(|(_, e)| e)
}

/// [`write_at`], giving `dst` back with the error.
#[allow(clippy::type_complexity)]
pub(crate) fn write_at_or_back<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 4>, (BTensor<CubeBackend<R, F, I, BT>, 4>, BackendError)> {
    let (dd, sd) = (dst.dims(), src.dims());
    let fits = (0..4).all(|i| offset[i] + sd[i] <= dd[i]);
    let mismatch = |reason: String| BackendError::ShapeMismatch { op: "write_at", reason };
    if !fits || dst.dtype() != src.dtype() {
        let e = mismatch(format!(
            "src {sd:?} {:?} at {offset:?} in dst {dd:?} {:?}",
            src.dtype(),
            dst.dtype()
        ));
        return Err((dst, e));
    }
    let len: usize = sd.iter().product();
    if len == 0 {
        return Ok(dst);
    }
    let (dst, src): (CubeTensor<R>, CubeTensor<R>) = (prim(dst), prim(src));
    if !dst.can_mut() {
        return Err((wrap(dst), mismatch("dst is shared".into())));
    }
    let (ss, ts) = (src.meta.strides().clone(), dst.meta.strides().clone());
    let base: usize = (0..4).map(|i| offset[i] * ts[i]).sum();
    let u = |v: usize| v as u32;
    let layout = WriteLayoutLaunch::new(
        u(sd[1]),
        u(sd[2]),
        u(sd[3]),
        u(ss[0]),
        u(ss[1]),
        u(ss[2]),
        u(ss[3]),
        u(ts[0]),
        u(ts[1]),
        u(ts[2]),
        u(ts[3]),
        u(base),
    );
    let client = dst.client.clone();
    let dtype = dst.dtype;
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    // SAFETY: every index is within the operands: `src` is read through its own shape and
    // strides, `dst` at `offset` plus indices below `src`'s shape, which fits (checked above);
    // `dst` is not shared, so writing it in place is invisible to other tensors.
    unsafe {
        write_at_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            src.into_array_arg(),
            dst.clone().into_array_arg(),
            layout,
            len as u32,
            dtype.into(),
        );
    }
    Ok(wrap(dst))
}
