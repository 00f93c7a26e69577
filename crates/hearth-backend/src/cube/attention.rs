//! Attention for few queries (decode): scores, online softmax and the value product per query
//! row in one kernel, with the keys split over several cubes (flash-decoding) when one cube per
//! row would leave the device idle, and a second kernel joining the splits.

use super::reduce::{cube_max, cube_sum};
use super::{kernel_float, plane_reductions, prim, wrap};
use crate::BackendError;
use burn::tensor::{Shape, Tensor as BTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, ops::numeric::empty_device_contiguous_dtype,
};
use cubecl::prelude::*;

/// Query rows (`T`) up to which [`gqa_attention`] is used by the cubecl backends: each cube
/// reads its KV head's keys and values once per query, which beats the two batched matmuls and
/// the softmax only while `T` is small.
pub const ATTENTION_MAX_QUERIES: usize = 16;

/// Units per cube of the attention kernel (keys per tile).
const TILE: usize = 64;

/// Shapes and strides (in elements) of the attention kernel's operands.
#[derive(CubeLaunch, CubeType)]
struct AttnLayout {
    h_len: u32,
    t_len: u32,
    s_len: u32,
    hkv: u32,
    q0: u32,
    q1: u32,
    q2: u32,
    q3: u32,
    k0: u32,
    k1: u32,
    k2: u32,
    k3: u32,
    v0: u32,
    v1: u32,
    v2: u32,
    v3: u32,
    m0: u32,
    m1: u32,
    m2: u32,
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gqa_attention_kernel<F: Float, N: Size>(
    q: &Array<F>,
    k: &Array<F>,
    kv: &Array<Vector<F, N>>,
    v: &Array<F>,
    mask: &Array<F>,
    out: &mut Array<F>,
    part: &mut Array<f32>,
    l: AttnLayout,
    scale: f32,
    splits: u32,
    chunk: u32,
    #[comptime] d: usize,
    #[comptime] dv: usize,
    #[comptime] use_plane: bool,
    #[comptime] split: bool,
    #[comptime] nk: usize,
    #[define(F)] _dtype: StorageType,
) {
    // `kv` is `k` as vectors of `nk` (> 1 when each key row is contiguous and aligned): a key
    // row is then read in 16-byte loads, `d / nk` per unit instead of `d`
    // one cube per (b, h, t, split): out is [B, T, H, Dv] contiguous; with `split`, each cube
    // walks keys `sp·chunk .. (sp + 1)·chunk` and leaves its unnormalised values, running
    // max and sum in `part` for `gqa_attention_combine_kernel`
    let h_len = l.h_len as usize;
    let t_len = l.t_len as usize;
    let s_len = l.s_len as usize;
    let group = h_len / l.hkv as usize;
    let ns = splits as usize;
    let sp = CUBE_POS % ns;
    let c = CUBE_POS / ns;
    let t = c % t_len;
    let h = (c / t_len) % h_len;
    let b = c / (t_len * h_len);
    let kvh = h / group;
    let u = UNIT_POS as usize;

    let mut q_s = SharedMemory::<f32>::new(d);
    let mut p_s = SharedMemory::<f32>::new(TILE);
    let mut acc = SharedMemory::<f32>::new(dv);
    let mut red_max = SharedMemory::<f32>::new(TILE);
    let mut red_sum = SharedMemory::<f32>::new(TILE);
    let qb = b * l.q0 as usize + h * l.q1 as usize + t * l.q2 as usize;
    let mut i = u;
    while i < d {
        q_s[i] = f32::cast_from(q[qb + i * l.q3 as usize]) * scale;
        i += TILE;
    }
    let mut e = u;
    while e < dv {
        acc[e] = 0.0f32;
        e += TILE;
    }
    sync_cube();

    let kb = b * l.k0 as usize + kvh * l.k1 as usize;
    let vb = b * l.v0 as usize + kvh * l.v1 as usize;
    let mb = b * l.m0 as usize + t * l.m1 as usize;
    let ms = l.m2 as usize;
    let (ks, kd) = (l.k2 as usize, l.k3 as usize);
    let (vs, vd) = (l.v2 as usize, l.v3 as usize);
    let lo = sp * chunk as usize;
    let hi = min(s_len, lo + chunk as usize);
    // running max (finite, so that fully masked tiles give exp(-inf) = 0, never NaN) and sum
    let mut m = f32::new(-1.0e30);
    let mut l = 0.0f32;
    let mut s0 = lo;
    while s0 < hi {
        let s = s0 + u;
        let mut score = f32::new(-3.0e38);
        if s < hi {
            let row = kb + s * ks;
            // unrolled: the key's loads are all in flight at once
            let mut dot = 0.0f32;
            if comptime!(nk > 1) {
                let rv = row / nk;
                #[unroll]
                for j in 0..comptime!(d / nk) {
                    let kj = kv[rv + j];
                    #[unroll]
                    for i in 0..nk {
                        dot += q_s[j * nk + i] * f32::cast_from(kj[i]);
                    }
                }
            } else {
                #[unroll]
                for j in 0..d {
                    dot += q_s[j] * f32::cast_from(k[row + j * kd]);
                }
            }
            score = dot + f32::cast_from(mask[mb + s * ms]);
        }
        let m_new = max(m, cube_max(score, &mut red_max, use_plane));
        let p = f32::exp(score - m_new);
        p_s[u] = p;
        let alpha = f32::exp(m - m_new);
        l = l * alpha + cube_sum(p, &mut red_sum, use_plane);
        m = m_new;
        // cube_sum synchronised the cube: p_s is complete
        let n = min(TILE, hi - s0);
        let mut e = u;
        while e < dv {
            let mut a = acc[e] * alpha;
            let vrow = vb + s0 * vs + e * vd;
            if n == TILE {
                // a whole tile, unrolled: 64 independent loads per unit instead of one
                // load-use round trip to memory per key
                #[unroll]
                for j in 0..TILE {
                    a += p_s[j] * f32::cast_from(v[vrow + j * vs]);
                }
            } else {
                for j in 0..n {
                    a += p_s[j] * f32::cast_from(v[vrow + j * vs]);
                }
            }
            acc[e] = a;
            e += TILE;
        }
        sync_cube();
        s0 += TILE;
    }
    if split {
        let pb = (c * ns + sp) * (dv + 2);
        let mut e = u;
        while e < dv {
            part[pb + e] = acc[e];
            e += TILE;
        }
        if u == 0 {
            part[pb + dv] = m;
            part[pb + dv + 1] = l;
        }
    } else {
        let ob = ((b * t_len + t) * h_len + h) * dv;
        let inv = 1.0f32 / l;
        let mut e = u;
        while e < dv {
            out[ob + e] = F::cast_from(acc[e] * inv);
            e += TILE;
        }
    }
}

/// Joins the `splits` partial results of one query row (cube): each partial's values and sum
/// are rescaled from its own running max to the overall one.
#[cube(launch_unchecked)]
fn gqa_attention_combine_kernel<F: Float>(
    part: &Array<f32>,
    out: &mut Array<F>,
    h_len: u32,
    t_len: u32,
    splits: u32,
    #[comptime] dv: usize,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS;
    let (h_len, t_len, ns) = (h_len as usize, t_len as usize, splits as usize);
    let t = c % t_len;
    let h = (c / t_len) % h_len;
    let b = c / (t_len * h_len);
    let base = c * ns * (dv + 2);
    let mut mx = f32::new(-3.0e38);
    for i in 0..ns {
        mx = max(mx, part[base + i * (dv + 2) + dv]);
    }
    let mut sum = 0.0f32;
    for i in 0..ns {
        let pi = base + i * (dv + 2);
        sum += part[pi + dv + 1] * f32::exp(part[pi + dv] - mx);
    }
    let inv = 1.0f32 / sum;
    let ob = ((b * t_len + t) * h_len + h) * dv;
    let mut e = UNIT_POS as usize;
    while e < dv {
        let mut o = 0.0f32;
        for i in 0..ns {
            let pi = base + i * (dv + 2);
            o += part[pi + e] * f32::exp(part[pi + dv] - mx);
        }
        out[ob + e] = F::cast_from(o * inv);
        e += TILE;
    }
}

/// Splits of the key range per query row: enough cubes for two per multiprocessor, whole
/// tiles each, none while one cube's keys fit in two tiles.
fn key_splits(rows: usize, s: usize, sms: usize) -> (usize, usize) {
    let tiles = s.div_ceil(TILE);
    let want = (2 * sms).div_ceil(rows.max(1)).max(1);
    if tiles <= 2 || want == 1 {
        return (1, tiles.max(1) * TILE);
    }
    let per = tiles.div_ceil(want.min(tiles)).max(1);
    let chunk = per * TILE;
    (s.div_ceil(chunk), chunk)
}

/// Scaled dot-product attention with grouped KV heads and an additive mask:
/// `q: [B, H, T, D]`, `k: [B, Hkv, S, D]`, `v: [B, Hkv, S, Dv]`, `mask: [B, T, S]` (any
/// strides, e.g. views of a KV cache), `H` a multiple of `Hkv`. Each query row `(b, h, t)`
/// walks the keys of KV head `h / (H / Hkv)` in tiles of 64: scores in f32, online softmax
/// (running max and sum), and the probability-weighted values accumulated in shared memory.
/// One launch with one cube per row while the rows fill the device or the keys fit in two
/// tiles; otherwise (long contexts, split-K / flash-decoding) the keys are split into whole
/// tiles over several cubes per row, for about two cubes per multiprocessor, and a second
/// launch joins the splits' partial values, maxima and sums. Returns `[B, H, T, Dv]` (a view of a contiguous `[B, T, H, Dv]` buffer, so that the
/// usual `swap_dims(1, 2).reshape(..)` afterwards copies nothing). Same result as
/// [`crate::ops::gqa_attention`] up to summation order.
///
/// Errors: [`BackendError::ShapeMismatch`] for inconsistent shapes or dtypes.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let q = Tensor::<Wgpu, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
/// let k = Tensor::<Wgpu, 4>::from_floats([[[[1.0, 0.0], [0.0, 1.0]]]], &dev);
/// let v = Tensor::<Wgpu, 4>::from_floats([[[[5.0], [7.0]]]], &dev);
/// let mask = Tensor::<Wgpu, 3>::from_floats([[[0.0, f32::NEG_INFINITY]]], &dev);
/// let o = cube::gqa_attention(q, k, v, mask, 1.0).unwrap();
/// assert_eq!(o.into_data().to_vec::<f32>().unwrap(), vec![5.0]);
/// # }
/// ```
pub fn gqa_attention<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: BTensor<CubeBackend<R, F, I, BT>, 4>,
    k: BTensor<CubeBackend<R, F, I, BT>, 4>,
    v: BTensor<CubeBackend<R, F, I, BT>, 4>,
    mask: BTensor<CubeBackend<R, F, I, BT>, 3>,
    scale: f64,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 4>, BackendError> {
    let [b, h, t, d] = q.dims();
    let [bk, hkv, s, dk] = k.dims();
    let [bv, hv, sv, dv] = v.dims();
    let ok_shapes = b == bk
        && b == bv
        && hkv == hv
        && s == sv
        && d == dk
        && hkv > 0
        && h % hkv == 0
        && mask.dims() == [b, t, s]
        && b * h * t * d * s * dv > 0;
    if !ok_shapes {
        return Err(BackendError::ShapeMismatch {
            op: "gqa_attention",
            reason: format!(
                "q {:?}, k {:?}, v {:?}, mask {:?}",
                q.dims(),
                k.dims(),
                v.dims(),
                mask.dims()
            ),
        });
    }
    let dt = q.dtype();
    if [k.dtype(), v.dtype(), mask.dtype()].iter().any(|x| *x != dt) || !kernel_float(dt) {
        return Err(BackendError::ShapeMismatch {
            op: "gqa_attention",
            reason: format!("dtypes {dt:?}, {:?}, {:?}, {:?}", k.dtype(), v.dtype(), mask.dtype()),
        });
    }
    let (q, k, v, mask) = (prim(q), prim(k), prim(v), prim(mask));
    let client = q.client.clone();
    let out = empty_device_contiguous_dtype(client.clone(), q.device.clone(), Shape::new([b, t, h, dv]), dt);
    let use_plane = plane_reductions(&client) && client.properties().hardware.plane_size_max as usize <= TILE;
    let st = |t: &burn_cubecl::tensor::CubeTensor<R>, i: usize| t.meta.strides()[i] as u32;
    let layout = AttnLayoutLaunch::new(
        h as u32,
        t as u32,
        s as u32,
        hkv as u32,
        st(&q, 0),
        st(&q, 1),
        st(&q, 2),
        st(&q, 3),
        st(&k, 0),
        st(&k, 1),
        st(&k, 2),
        st(&k, 3),
        st(&v, 0),
        st(&v, 1),
        st(&v, 2),
        st(&v, 3),
        st(&mask, 0),
        st(&mask, 1),
        st(&mask, 2),
    );
    let rows = b * h * t;
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(16) as usize;
    let (splits, chunk) = key_splits(rows, s, sms);
    let split = splits > 1;
    // 16-byte key loads when every key row starts on a 16-byte boundary and is contiguous
    let nk = 16 / dt.size();
    let aligned = |t: &burn_cubecl::tensor::CubeTensor<R>| {
        let st = t.meta.strides();
        st[3] == 1
            && [st[0], st[1], st[2]].iter().all(|x| x.is_multiple_of(nk))
            && t.handle.offset_start.unwrap_or(0).is_multiple_of(16)
    };
    let nk = if nk > 1 && d.is_multiple_of(nk) && aligned(&k) {
        nk
    } else {
        1
    };
    // partial results (values, max, sum per split); one word when unused
    let part_len = if split { rows * splits * (dv + 2) } else { 1 };
    let part = empty_device_contiguous_dtype(
        client.clone(),
        q.device.clone(),
        Shape::new([part_len]),
        burn::tensor::DType::F32,
    );
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments; `k` read as vectors of `nk` only when its rows are
    // contiguous and start on whole vectors, checked above); cube `c` writes `part` only at its own row and split
    // (`rows · splits` slots of `dv + 2` words) and `out` only at its own row; units past the
    // work return early.
    unsafe {
        gqa_attention_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::new_1d((rows * splits) as u32),
            CubeDim::new_1d(TILE as u32),
            nk,
            q.into_array_arg(),
            k.clone().into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            mask.into_array_arg(),
            out.clone().into_array_arg(),
            part.clone().into_array_arg(),
            layout,
            scale as f32,
            splits as u32,
            chunk as u32,
            d,
            dv,
            use_plane,
            split,
            nk,
            dt.into(),
        );
    }
    if split {
        // SAFETY: `part` holds `rows · splits` slots written above; cube `c` reads its row's
        // slots and writes its row of `out` ([B, T, H, Dv]).
        unsafe {
            gqa_attention_combine_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::new_1d(rows as u32),
                CubeDim::new_1d(TILE as u32),
                part.into_array_arg(),
                out.clone().into_array_arg(),
                h as u32,
                t as u32,
                splits as u32,
                dv,
                dt.into(),
            );
        }
    }
    Ok(wrap::<R, F, I, BT, 4>(out).swap_dims(1, 2))
}

#[cfg(test)]
mod tests {
    use super::{TILE, key_splits};

    #[test]
    fn key_splits_cover_every_key_once_in_whole_tiles() {
        for rows in [1, 3, 8, 32, 256, 1000] {
            for s in [1, 63, 64, 65, 128, 129, 700, 4096, 4097, 100_000] {
                for sms in [1, 16, 132] {
                    let (n, chunk) = key_splits(rows, s, sms);
                    assert!(n >= 1 && chunk.is_multiple_of(TILE), "{rows} {s} {sms}: {n} × {chunk}");
                    assert!(n * chunk >= s && (n - 1) * chunk < s, "{rows} {s} {sms}: {n} × {chunk}");
                    if s <= 2 * TILE || rows >= 2 * sms {
                        assert_eq!(n, 1, "{rows} {s} {sms}");
                    }
                    if n > 1 {
                        assert!(rows * n <= 2 * sms + rows, "{rows} {s} {sms}: {n}");
                    }
                }
            }
        }
    }
}
