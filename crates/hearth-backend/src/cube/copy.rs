//! In-place strided writes (KV-cache updates) in one launch.

use super::rope::{RopeLayout, rope_element};
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

/// Element `i` (row-major over `src`'s shape) of `src` written to `dst`.
#[cube]
fn write_element<F: Float>(src: &Array<F>, dst: &mut Array<F>, l: &WriteLayout, i: usize) {
    let (d1, d2, d3) = (l.d1 as usize, l.d2 as usize, l.d3 as usize);
    let j3 = i % d3;
    let j2 = (i / d3) % d2;
    let j1 = (i / (d3 * d2)) % d1;
    let j0 = i / (d3 * d2 * d1);
    let s = j0 * l.s0 as usize + j1 * l.s1 as usize + j2 * l.s2 as usize + j3 * l.s3 as usize;
    dst[dst_index(l, i)] = src[s];
}

/// Where element `i` (row-major over the source's shape) of a write lands in `dst`.
#[cube]
fn dst_index(l: &WriteLayout, i: usize) -> usize {
    let (d1, d2, d3) = (l.d1 as usize, l.d2 as usize, l.d3 as usize);
    let j3 = i % d3;
    let j2 = (i / d3) % d2;
    let j1 = (i / (d3 * d2)) % d1;
    let j0 = i / (d3 * d2 * d1);
    l.base as usize + j0 * l.t0 as usize + j1 * l.t1 as usize + j2 * l.t2 as usize + j3 * l.t3 as usize
}

/// RoPE on `q` and `k` and the layer's cache writes in one launch: units below `len_q` write
/// the rotated `q` (contiguous), the next `len_k` the rotated `k` into `kc`, the rest copy `v`
/// into `vc`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_write_kernel<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    cos: &Array<F>,
    sin: &Array<F>,
    out_q: &mut Array<F>,
    kc: &mut Array<F>,
    vc: &mut Array<F>,
    lq: RopeLayout,
    lk: RopeLayout,
    wk: WriteLayout,
    wv: WriteLayout,
    len_q: u32,
    len_k: u32,
    len_v: u32,
    rope_dim: u32,
    #[comptime] interleaved: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    let (nq, nk, nv) = (len_q as usize, len_k as usize, len_v as usize);
    if i >= nq + nk + nv {
        terminate!();
    }
    if i < nq {
        out_q[i] = rope_element::<F>(q, cos, sin, &lq, i, rope_dim, interleaved);
    } else if i < nq + nk {
        let j = i - nq;
        kc[dst_index(&wk, j)] = rope_element::<F>(k, cos, sin, &lk, j, rope_dim, interleaved);
    } else {
        write_element::<F>(v, vc, &wv, i - nq - nk);
    }
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
    write_element::<F>(src, dst, &l, i);
}

/// Two writes in one launch (a layer's K and V): units below `len_a` copy `src_a`'s
/// elements, the rest `src_b`'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn write_at2_kernel<F: Float>(
    src_a: &Array<F>,
    dst_a: &mut Array<F>,
    src_b: &Array<F>,
    dst_b: &mut Array<F>,
    la: WriteLayout,
    lb: WriteLayout,
    len_a: u32,
    len_b: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    let (na, nb) = (len_a as usize, len_b as usize);
    if i >= na + nb {
        terminate!();
    }
    if i < na {
        write_element::<F>(src_a, dst_a, &la, i);
    } else {
        write_element::<F>(src_b, dst_b, &lb, i - na);
    }
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

/// Why `src` cannot be written into `dst` at `offset` in place, or the element count.
fn validate<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    src: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<usize, BackendError> {
    let (dd, sd) = (dst.dims(), src.dims());
    let fits = (0..4).all(|i| offset[i] + sd[i] <= dd[i]);
    if !fits || dst.dtype() != src.dtype() {
        return Err(BackendError::ShapeMismatch {
            op: "write_at",
            reason: format!(
                "src {sd:?} {:?} at {offset:?} in dst {dd:?} {:?}",
                src.dtype(),
                dst.dtype()
            ),
        });
    }
    Ok(sd.iter().product())
}

/// The kernel's view of one write (shapes and strides of both, `dst`'s base offset).
fn layout<R: CubeRuntime>(dst: &CubeTensor<R>, src: &CubeTensor<R>, offset: [usize; 4]) -> WriteLayoutLaunch<R> {
    let (sd, ss, ts) = (src.meta.shape(), src.meta.strides(), dst.meta.strides());
    let base: usize = (0..4).map(|i| offset[i] * ts[i]).sum();
    let u = |v: usize| v as u32;
    WriteLayoutLaunch::new(
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
    )
}

/// [`write_at`], giving `dst` back with the error.
#[allow(clippy::type_complexity)]
pub(crate) fn write_at_or_back<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 4>, (BTensor<CubeBackend<R, F, I, BT>, 4>, BackendError)> {
    let len = match validate(&dst, &src, offset) {
        Ok(len) => len,
        Err(e) => return Err((dst, e)),
    };
    if len == 0 {
        return Ok(dst);
    }
    let (dst, src): (CubeTensor<R>, CubeTensor<R>) = (prim(dst), prim(src));
    if !dst.can_mut() {
        let e = BackendError::ShapeMismatch {
            op: "write_at",
            reason: "dst is shared".into(),
        };
        return Err((wrap(dst), e));
    }
    let layout = layout(&dst, &src, offset);
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

/// Two in-place writes at the same `offset` in one launch (a layer's K and V into their
/// caches), or both destinations given back when either write cannot be done in place
/// (shapes, dtypes, a shared destination: the caller falls back).
#[allow(clippy::type_complexity)]
pub(crate) fn write_at2_or_back<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst_a: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src_a: BTensor<CubeBackend<R, F, I, BT>, 4>,
    dst_b: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src_b: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<
    (
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
    ),
    (
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
    ),
> {
    let (len_a, len_b) = match (validate(&dst_a, &src_a, offset), validate(&dst_b, &src_b, offset)) {
        (Ok(a), Ok(b)) if a > 0 && b > 0 && dst_a.dtype() == dst_b.dtype() => (a, b),
        _ => return Err((dst_a, dst_b)),
    };
    let (dst_a, src_a, dst_b, src_b): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) =
        (prim(dst_a), prim(src_a), prim(dst_b), prim(src_b));
    // both in place (two views of one buffer share its handle, so neither is `can_mut`)
    if !dst_a.can_mut() || !dst_b.can_mut() {
        return Err((wrap(dst_a), wrap(dst_b)));
    }
    let (la, lb) = (layout(&dst_a, &src_a, offset), layout(&dst_b, &src_b, offset));
    let client = dst_a.client.clone();
    let dtype = dst_a.dtype;
    let len = len_a + len_b;
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    // SAFETY: as in `write_at_or_back`, for each of the two writes (validated above, both
    // destinations unshared and distinct); units below `len_a` touch only the first pair.
    unsafe {
        write_at2_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            src_a.into_array_arg(),
            dst_a.clone().into_array_arg(),
            src_b.into_array_arg(),
            dst_b.clone().into_array_arg(),
            la,
            lb,
            len_a as u32,
            len_b as u32,
            dtype.into(),
        );
    }
    Ok((wrap(dst_a), wrap(dst_b)))
}

/// Two [`write_at`]s at one `offset` in one launch (a layer's K and V into their caches):
/// `None`, with nothing written, when either cannot be done in place (shapes or dtypes that do
/// not fit, a shared or empty destination); [`crate::HearthBackend::write_at2`] then falls back.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let z = || Tensor::<Wgpu, 4>::zeros([1, 1, 2, 1], &dev);
/// let one = || Tensor::<Wgpu, 4>::ones([1, 1, 1, 1], &dev);
/// let (k, _) = cube::write_at2(z(), one(), z(), one(), [0, 0, 1, 0]).unwrap();
/// assert_eq!(k.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn write_at2<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dst_a: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src_a: BTensor<CubeBackend<R, F, I, BT>, 4>,
    dst_b: BTensor<CubeBackend<R, F, I, BT>, 4>,
    src_b: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Option<(
    BTensor<CubeBackend<R, F, I, BT>, 4>,
    BTensor<CubeBackend<R, F, I, BT>, 4>,
)> {
    write_at2_or_back(dst_a, src_a, dst_b, src_b, offset).ok()
}

/// RoPE on `q: [B, H, T, D]` and `k: [B, Hkv, T, D]` with the tables `cos`/`sin`
/// (`[B, 1, T, rope_dim]`), the rotated `k` and `v` written into the caches `kc`/`vc` at
/// `offset`, in one launch: the rotated `q` (contiguous) and both caches, or the caches given
/// back, nothing written, when this cannot be done in place (shapes, dtypes, a shared cache:
/// the caller falls back to [`crate::HearthBackend::rope2`] and
/// [`crate::HearthBackend::write_at2`]).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn rope_write_or_back<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: BTensor<CubeBackend<R, F, I, BT>, 4>,
    k: BTensor<CubeBackend<R, F, I, BT>, 4>,
    v: BTensor<CubeBackend<R, F, I, BT>, 4>,
    cos: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    sin: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    rope_dim: usize,
    interleaved: bool,
    kc: BTensor<CubeBackend<R, F, I, BT>, 4>,
    vc: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Result<
    (
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
    ),
    (
        BTensor<CubeBackend<R, F, I, BT>, 4>,
        BTensor<CubeBackend<R, F, I, BT>, 4>,
    ),
> {
    let rq = super::rope::check(&q, cos, sin, rope_dim);
    let rk = super::rope::check(&k, cos, sin, rope_dim);
    let (len_q, len_k, len_v) = match (rq, rk, validate(&kc, &k, offset), validate(&vc, &v, offset)) {
        (Ok(a), Ok(b), Ok(b2), Ok(c))
            if a > 0
                && b > 0
                && b == b2
                && c > 0
                && q.dtype() == k.dtype()
                && kc.dtype() == vc.dtype()
                && q.dtype() == kc.dtype() =>
        {
            (a, b, c)
        }
        _ => return Err((kc, vc)),
    };
    let (q, k, v, kc, vc): (
        CubeTensor<R>,
        CubeTensor<R>,
        CubeTensor<R>,
        CubeTensor<R>,
        CubeTensor<R>,
    ) = (prim(q), prim(k), prim(v), prim(kc), prim(vc));
    if !kc.can_mut() || !vc.can_mut() {
        return Err((wrap(kc), wrap(vc)));
    }
    let (c, s) = (prim(cos.clone()), prim(sin.clone()));
    let client = q.client.clone();
    let dtype = q.dtype;
    let out_q = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        client.clone(),
        q.device.clone(),
        q.meta.shape().clone(),
        dtype,
    );
    let (lq, lk) = (super::rope::layout(&q, &c, &s), super::rope::layout(&k, &c, &s));
    let (wk, wv) = (layout(&kc, &k, offset), layout(&vc, &v, offset));
    let len = len_q + len_k + len_v;
    let cube_dim = CubeDim::new(&client, len);
    let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
    // SAFETY: q and k are read through their own shapes and strides and the tables checked
    // against them (`rope::check`); the cache writes land at `offset` plus indices below k's
    // and v's shapes, which fit (`validate`); both caches are unshared and distinct, out_q is
    // fresh and contiguous; each unit touches one element of one of the three outputs.
    unsafe {
        rope_write_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            c.into_array_arg(),
            s.into_array_arg(),
            out_q.clone().into_array_arg(),
            kc.clone().into_array_arg(),
            vc.clone().into_array_arg(),
            lq,
            lk,
            wk,
            wv,
            len_q as u32,
            len_k as u32,
            len_v as u32,
            rope_dim as u32,
            interleaved,
            dtype.into(),
        );
    }
    Ok((wrap(out_q), wrap(kc), wrap(vc)))
}

/// [`rope_write_or_back`] as a public kernel entry: `None`, with nothing written, when the
/// operands do not fit (see there).
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let x = || Tensor::<Wgpu, 4>::from_floats([[[[0.0, 1.0]]]], &dev);
/// let cos = Tensor::<Wgpu, 4>::from_floats([[[[0.0, 0.0]]]], &dev);
/// let sin = Tensor::<Wgpu, 4>::from_floats([[[[1.0, 1.0]]]], &dev);
/// let z = || Tensor::<Wgpu, 4>::zeros([1, 1, 2, 2], &dev);
/// let (q, kc, vc) = cube::rope_write(x(), x(), x(), &cos, &sin, 2, false, z(), z(), [0, 0, 1, 0]).unwrap();
/// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![-1.0, 0.0]);
/// assert_eq!(kc.into_data().to_vec::<f32>().unwrap(), vec![0.0, 0.0, -1.0, 0.0]);
/// assert_eq!(vc.into_data().to_vec::<f32>().unwrap(), vec![0.0, 0.0, 0.0, 1.0]);
/// # }
/// ```
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn rope_write<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: BTensor<CubeBackend<R, F, I, BT>, 4>,
    k: BTensor<CubeBackend<R, F, I, BT>, 4>,
    v: BTensor<CubeBackend<R, F, I, BT>, 4>,
    cos: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    sin: &BTensor<CubeBackend<R, F, I, BT>, 4>,
    rope_dim: usize,
    interleaved: bool,
    kc: BTensor<CubeBackend<R, F, I, BT>, 4>,
    vc: BTensor<CubeBackend<R, F, I, BT>, 4>,
    offset: [usize; 4],
) -> Option<(
    BTensor<CubeBackend<R, F, I, BT>, 4>,
    BTensor<CubeBackend<R, F, I, BT>, 4>,
    BTensor<CubeBackend<R, F, I, BT>, 4>,
)> {
    rope_write_or_back(q, k, v, cos, sin, rope_dim, interleaved, kc, vc, offset).ok()
}
