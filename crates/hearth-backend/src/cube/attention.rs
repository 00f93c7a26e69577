//! Attention for few queries (decode): scores, online softmax and the value product per query
//! row in one kernel, with the keys split over several cubes (flash-decoding) when one cube per
//! row would leave the device idle, and a second kernel joining the splits.

use super::reduce::{cube_max, cube_sum};
use super::{kernel_float, plane_ops, plane_reductions, prim, wrap};
use crate::BackendError;
use burn::tensor::{Shape, Tensor as BTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, ops::numeric::empty_device_contiguous_dtype,
    tensor::CubeTensor,
};
use cubecl::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

/// Query rows (`T`) up to which [`gqa_attention`] is used by the cubecl backends: each cube
/// reads its KV head's keys and values once per query, which beats the two batched matmuls and
/// the softmax only while `T` is small.
pub const ATTENTION_MAX_QUERIES: usize = 16;

/// Query heads per KV head from which a decode step the decode kernel declines runs as two
/// batched products over the group (see [`gqa_attention`]) instead of the general kernel.
pub const FOLD_MIN_GROUP: usize = 16;

/// Whether [`gqa_attention`] folds large groups into batched products. Off by default: on the
/// H200 (stop 24) it was faster only for 128 heads at 4096 keys in bf16 (375 against 576 µs),
/// and far slower at 16 heads (499 against 53 µs at 1024 keys). `HEARTH_ATTN_FOLD=1` in the
/// environment or [`set_group_fold`] turns it on.
///
/// ```
/// let _ = hearth_backend::cube::group_fold();
/// ```
pub fn group_fold() -> bool {
    match GROUP_FOLD.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var("HEARTH_ATTN_FOLD").is_ok_and(|v| v == "1");
            GROUP_FOLD.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Sets [`group_fold`] for the whole process (`None`: back to the environment's choice).
///
/// ```
/// hearth_backend::cube::set_group_fold(Some(false));
/// assert!(!hearth_backend::cube::group_fold());
/// hearth_backend::cube::set_group_fold(None);
/// ```
pub fn set_group_fold(on: Option<bool>) {
    GROUP_FOLD.store(
        match on {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
        Ordering::Relaxed,
    );
}

/// 0 = not read yet, 1 = off, 2 = on.
static GROUP_FOLD: AtomicU8 = AtomicU8::new(0);

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

/// Decode attention (one query row per head, `T = 1`): one cube per (batch, KV head, key split)
/// serves all `g` query heads of its group, so each key and value row is read once per group.
/// The cube's planes take `batch` consecutive keys each per round, interleaved; in a plane
/// every lane holds `kpl` (`vpl`) vectors of each key (value) row, the dot products are plane
/// sums, and each plane keeps its own running max, sum and values in registers: no cube
/// barrier until the planes meet in shared memory at the end. Without plane operations
/// (`use_plane` off) a "plane" is `lanes` consecutive units that sum through shared memory.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_kernel<F: Float, N: Size>(
    q: &Array<F>,
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
    mask: &Array<F>,
    out: &mut Array<F>,
    part: &mut Array<f32>,
    l: AttnLayout,
    scale: f32,
    splits: u32,
    chunk: u32,
    #[comptime] d: usize,
    #[comptime] dv: usize,
    #[comptime] g: usize,
    #[comptime] nv: usize,
    #[comptime] lanes: usize,
    #[comptime] max_planes: usize,
    #[comptime] batch: usize,
    #[comptime] use_plane: bool,
    #[comptime] split: bool,
    #[define(F)] _dtype: StorageType,
) {
    let kpl = comptime!((d / nv).div_ceil(lanes));
    let vpl = comptime!((dv / nv).div_ceil(lanes));
    let ns = splits as usize;
    let sp = CUBE_POS % ns;
    let c = CUBE_POS / ns;
    let hkv = l.hkv as usize;
    let kvh = c % hkv;
    let b = c / hkv;
    let h_len = l.h_len as usize;
    let s_len = l.s_len as usize;
    // `lanes` is the device's smallest plane size (registers are sized for it); the planes it
    // actually formed are `pd` lanes wide, `np` per cube (at most `max_planes`)
    let mut lane = UNIT_POS as usize % lanes;
    let mut w = UNIT_POS as usize / lanes;
    let mut pd = lanes.runtime();
    let mut np = CUBE_DIM as usize / lanes;
    if use_plane {
        lane = UNIT_POS_PLANE as usize;
        w = PLANE_POS as usize;
        pd = PLANE_DIM as usize;
        np = (CUBE_DIM / PLANE_DIM) as usize;
    }
    let mut red = SharedMemory::<f32>::new(comptime!(if use_plane { 1 } else { max_planes * lanes * g * batch }));

    // this lane's slice of the group's query rows, pre-scaled
    let mut qr = Array::<f32>::new(comptime!(g * kpl * nv));
    #[unroll]
    for hh in 0..g {
        let qb = b * l.q0 as usize + (kvh * g + hh) * l.q1 as usize;
        #[unroll]
        for j in 0..kpl {
            #[unroll]
            for i in 0..nv {
                let e = (j * pd + lane) * nv + i;
                let mut x = 0.0f32;
                if e < d {
                    x = f32::cast_from(q[qb + e * l.q3 as usize]) * scale;
                }
                qr[(hh * kpl + j) * nv + i] = x;
            }
        }
    }
    let mut mx = Array::<f32>::new(g);
    let mut sm = Array::<f32>::new(g);
    let mut acc = Array::<f32>::new(comptime!(g * vpl * nv));
    #[unroll]
    for hh in 0..g {
        // finite, so that fully masked rounds give exp(-inf) = 0, never NaN
        mx[hh] = f32::new(-1.0e30);
        sm[hh] = 0.0f32;
    }
    #[unroll]
    for i in 0..comptime!(g * vpl * nv) {
        acc[i] = 0.0f32;
    }

    let kb = b * l.k0 as usize + kvh * l.k1 as usize;
    let vb = b * l.v0 as usize + kvh * l.v1 as usize;
    let mb = b * l.m0 as usize;
    let ms = l.m2 as usize;
    let (ks, kd) = (l.k2 as usize, l.k3 as usize);
    let (vs, vd) = (l.v2 as usize, l.v3 as usize);
    let lo = sp * chunk as usize;
    let hi = min(s_len, lo + chunk as usize);
    // the same number of rounds for every plane (the shared-memory sums synchronise the cube)
    let per_round = np * batch;
    #[allow(clippy::manual_div_ceil)]
    let rounds = (hi - lo + per_round - 1) / per_round;
    for r in 0..rounds {
        let s0 = lo + r * per_round + w * batch;
        // every load of the round first (clamped in range, zeroed outside), then the arithmetic
        let mut kf = Array::<f32>::new(comptime!(batch * kpl * nv));
        let mut vf = Array::<f32>::new(comptime!(batch * vpl * nv));
        let mut mk = Array::<f32>::new(batch);
        #[unroll]
        for bb in 0..batch {
            let s = min(s0 + bb, hi - 1);
            let ok = s0 + bb < hi;
            #[unroll]
            for j in 0..kpl {
                let vi = min(j * pd + lane, comptime!(d / nv - 1));
                let inb = ok && (j * pd + lane) < comptime!(d / nv);
                let x = k[(kb + s * ks + vi * nv * kd) / nv];
                #[unroll]
                for i in 0..nv {
                    kf[(bb * kpl + j) * nv + i] = select(inb, f32::cast_from(x[i]), 0.0f32);
                }
            }
            #[unroll]
            for j in 0..vpl {
                let vi = min(j * pd + lane, comptime!(dv / nv - 1));
                let inb = ok && (j * pd + lane) < comptime!(dv / nv);
                let x = v[(vb + s * vs + vi * nv * vd) / nv];
                #[unroll]
                for i in 0..nv {
                    vf[(bb * vpl + j) * nv + i] = select(inb, f32::cast_from(x[i]), 0.0f32);
                }
            }
            mk[bb] = select(ok, f32::cast_from(mask[mb + s * ms]), f32::new(-3.0e38));
        }
        // the round's scores: this lane's share of every dot product, then the plane's sums
        let mut score = Array::<f32>::new(comptime!(g * batch));
        #[unroll]
        for hh in 0..g {
            #[unroll]
            for bb in 0..batch {
                let mut dot = 0.0f32;
                #[unroll]
                for j in 0..comptime!(kpl * nv) {
                    dot += qr[hh * kpl * nv + j] * kf[bb * kpl * nv + j];
                }
                score[hh * batch + bb] = dot;
            }
        }
        if use_plane {
            #[unroll]
            for i in 0..comptime!(g * batch) {
                score[i] = plane_sum(score[i]);
            }
        } else {
            let u = UNIT_POS as usize;
            let units = CUBE_DIM as usize;
            #[unroll]
            for i in 0..comptime!(g * batch) {
                red[i * units + u] = score[i];
            }
            sync_cube();
            let first = u - lane;
            #[unroll]
            for i in 0..comptime!(g * batch) {
                let mut t = 0.0f32;
                for x in 0..lanes {
                    t += red[i * units + first + x];
                }
                score[i] = t;
            }
            sync_cube();
        }
        // online softmax per head
        #[unroll]
        for hh in 0..g {
            let mut top = f32::new(-3.0e38);
            #[unroll]
            for bb in 0..batch {
                let x = score[hh * batch + bb] + mk[bb];
                score[hh * batch + bb] = x;
                top = max(top, x);
            }
            let m_new = max(mx[hh], top);
            let alpha = f32::exp(mx[hh] - m_new);
            mx[hh] = m_new;
            let mut psum = 0.0f32;
            #[unroll]
            for bb in 0..batch {
                let p = f32::exp(score[hh * batch + bb] - m_new);
                score[hh * batch + bb] = p;
                psum += p;
            }
            sm[hh] = sm[hh] * alpha + psum;
            #[unroll]
            for j in 0..comptime!(vpl * nv) {
                let mut a = acc[hh * vpl * nv + j] * alpha;
                #[unroll]
                for bb in 0..batch {
                    a += score[hh * batch + bb] * vf[bb * vpl * nv + j];
                }
                acc[hh * vpl * nv + j] = a;
            }
        }
    }

    // the planes' partial results meet in shared memory
    let mut sh_m = SharedMemory::<f32>::new(comptime!(max_planes * g));
    let mut sh_l = SharedMemory::<f32>::new(comptime!(max_planes * g));
    let mut sh_a = SharedMemory::<f32>::new(comptime!(max_planes * g * dv));
    #[unroll]
    for hh in 0..g {
        if lane == 0 {
            sh_m[w * g + hh] = mx[hh];
            sh_l[w * g + hh] = sm[hh];
        }
        #[unroll]
        for j in 0..vpl {
            #[unroll]
            for i in 0..nv {
                let e = (j * pd + lane) * nv + i;
                if e < dv {
                    sh_a[(w * g + hh) * dv + e] = acc[(hh * vpl + j) * nv + i];
                }
            }
        }
    }
    sync_cube();
    let mut idx = UNIT_POS as usize;
    while idx < comptime!(g * dv) {
        let hh = idx / dv;
        let e = idx % dv;
        let mut big = f32::new(-3.0e38);
        for p in 0..np {
            big = max(big, sh_m[p * g + hh]);
        }
        let mut tl = 0.0f32;
        let mut ta = 0.0f32;
        for p in 0..np {
            let f = f32::exp(sh_m[p * g + hh] - big);
            tl += sh_l[p * g + hh] * f;
            ta += sh_a[(p * g + hh) * dv + e] * f;
        }
        let h = kvh * g + hh;
        if split {
            let pb = ((b * h_len + h) * ns + sp) * (dv + 2);
            part[pb + e] = ta;
            if e == 0 {
                part[pb + dv] = big;
                part[pb + dv + 1] = tl;
            }
        } else {
            out[(b * h_len + h) * dv + e] = F::cast_from(ta / tl);
        }
        idx += CUBE_DIM as usize;
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

/// Launch shape of the decode-attention kernel (one query row per head, the path of every
/// decode step): planes (warps/subgroups) per cube, consecutive keys each plane takes per round,
/// and the key count above which the keys split over several cubes per KV head (joined by a
/// second launch). All shapes compute the same result up to f32 summation order.
///
/// ```
/// use hearth_backend::cube::DecodeAttention;
/// let s = DecodeAttention::parse("planes=4,batch=8").unwrap();
/// assert_eq!((s.planes, s.batch, s.split_from), (4, 8, DecodeAttention::DEFAULT.split_from));
/// assert!(DecodeAttention::parse("planes=0").is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeAttention {
    /// Planes per cube (1..=16).
    pub planes: usize,
    /// Keys per plane per round, loaded together (1..=16).
    pub batch: usize,
    /// Key counts above this split over several cubes per KV head.
    pub split_from: usize,
}

impl DecodeAttention {
    /// The shape used unless `HEARTH_DECODE_ATTN` or [`set_decode_attention`] says otherwise.
    pub const DEFAULT: DecodeAttention = DecodeAttention {
        planes: 8,
        batch: 4,
        split_from: 128,
    };

    /// Parses `planes=P,batch=B,split=S` (any subset, over [`Self::DEFAULT`]).
    pub fn parse(spec: &str) -> Result<DecodeAttention, String> {
        let mut s = Self::DEFAULT;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let n: usize = value.parse().map_err(|_| format!("`{part}`: not a number"))?;
            match key {
                "planes" if (1..=16).contains(&n) => s.planes = n,
                "batch" if (1..=16).contains(&n) => s.batch = n,
                "split" => s.split_from = n,
                "planes" | "batch" => return Err(format!("`{part}`: out of range 1..=16")),
                _ => return Err(format!("`{part}`: unknown key (planes, batch, split)")),
            }
        }
        Ok(s)
    }
}

static DECODE_SHAPE: std::sync::RwLock<Option<DecodeAttention>> = std::sync::RwLock::new(None);

/// The decode-attention shape in use: [`set_decode_attention`]'s, else `HEARTH_DECODE_ATTN`
/// from the environment (read once; `off` selects the general kernel for single queries too),
/// else [`DecodeAttention::DEFAULT`]. `None` when turned off.
///
/// ```
/// use hearth_backend::cube::{DecodeAttention, decode_attention, set_decode_attention};
/// set_decode_attention(Some(DecodeAttention { planes: 2, ..DecodeAttention::DEFAULT }));
/// assert_eq!(decode_attention().unwrap().planes, 2);
/// set_decode_attention(None);
/// ```
pub fn decode_attention() -> Option<DecodeAttention> {
    if let Some(s) = *DECODE_SHAPE.read().unwrap_or_else(|e| e.into_inner()) {
        return Some(s);
    }
    static ENV: std::sync::OnceLock<Option<DecodeAttention>> = std::sync::OnceLock::new();
    *ENV.get_or_init(|| match std::env::var("HEARTH_DECODE_ATTN") {
        Ok(v) if v == "off" => None,
        Ok(v) => Some(
            DecodeAttention::parse(&v)
                .inspect_err(|e| eprintln!("hearth: ignoring HEARTH_DECODE_ATTN: {e}"))
                .unwrap_or(DecodeAttention::DEFAULT),
        ),
        Err(_) => Some(DecodeAttention::DEFAULT),
    })
}

/// Sets the decode-attention shape for the process (`None`: back to the environment's).
///
/// ```
/// hearth_backend::cube::set_decode_attention(None);
/// ```
pub fn set_decode_attention(shape: Option<DecodeAttention>) {
    *DECODE_SHAPE.write().unwrap_or_else(|e| e.into_inner()) = shape;
}

/// Key splits of the decode kernel for `bh` (batch × KV head) cubes: none up to `split_from`
/// keys; past it enough for about two cubes per multiprocessor, each split at least two rounds
/// of `per_round` keys and a whole number of rounds.
fn decode_splits(bh: usize, s: usize, sms: usize, per_round: usize, split_from: usize) -> (usize, usize) {
    if s <= split_from.max(per_round) {
        return (1, s.max(1));
    }
    let want = (2 * sms).div_ceil(bh.max(1)).max(1);
    let most = s.div_ceil(2 * per_round).max(1);
    let n = want.min(most);
    let chunk = s.div_ceil(n).next_multiple_of(per_round);
    (s.div_ceil(chunk), chunk)
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
/// launch joins the splits' partial values, maxima and sums. With [`group_fold`] on, a decode
/// step (`T = 1`) with at least [`FOLD_MIN_GROUP`] query heads per KV head that the decode
/// kernel cannot hold in registers (MLA's absorbed form, one latent head for all heads) runs as
/// [`crate::ops::gqa_attention_with`] over hearth's matmul: the group's heads are the query
/// rows of their KV head, so the keys are read once per product, not once per head. Returns `[B, H, T, Dv]` (a view of a contiguous `[B, T, H, Dv]` buffer, so that the
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
    let rows = b * h * t;
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(16) as usize;
    if t == 1
        && let Some(shape) = decode_attention()
        && let Some(out) = decode_attention_launch(&q, &k, &v, &mask, scale, shape, sms, [b, h, hkv, s, d, dv])
    {
        return Ok(wrap::<R, F, I, BT, 4>(out).swap_dims(1, 2));
    }
    if t == 1 && h / hkv >= FOLD_MIN_GROUP && group_fold() {
        // Many query heads per KV head (MLA's one latent head: 16 to 128 of them) and too many
        // for the decode kernel's registers. The general kernel would read the keys once per
        // head; instead the group's heads become the query rows of their KV head, and scores
        // and values are two batched products (tensor cores in bf16/f16) with the latent read
        // once per product.
        type Cb<R, F, I, BT> = CubeBackend<R, F, I, BT>;
        return Ok(crate::ops::gqa_attention_with(
            wrap::<R, F, I, BT, 4>(q),
            wrap::<R, F, I, BT, 4>(k),
            wrap::<R, F, I, BT, 4>(v),
            wrap::<R, F, I, BT, 3>(mask),
            scale,
            <Cb<R, F, I, BT> as crate::HearthBackend>::matmul::<4>,
        ));
    }
    let layout = attn_layout(&q, &k, &v, &mask, [h, t, s, hkv]);
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
        join_splits(part, &out, rows, [h, t, splits, dv]);
    }
    Ok(wrap::<R, F, I, BT, 4>(out).swap_dims(1, 2))
}

/// Launches [`gqa_attention_combine_kernel`]: joins the `splits` partial results of each of the
/// `rows` query rows in `part` into `out` (`[B, T, H, Dv]` contiguous).
fn join_splits<R: CubeRuntime>(part: CubeTensor<R>, out: &CubeTensor<R>, rows: usize, [h, t, splits, dv]: [usize; 4]) {
    // SAFETY: `part` holds `rows · splits` slots of `dv + 2` words, every one written by the
    // attention launch before; cube `c` reads its row's slots and writes its row of `out`.
    unsafe {
        gqa_attention_combine_kernel::launch_unchecked::<R>(
            &part.client.clone(),
            CubeCount::new_1d(rows as u32),
            CubeDim::new_1d(TILE as u32),
            part.into_array_arg(),
            out.clone().into_array_arg(),
            h as u32,
            t as u32,
            splits as u32,
            dv,
            out.dtype.into(),
        );
    }
}

/// The kernels' view of the operands' shapes and strides.
fn attn_layout<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    mask: &CubeTensor<R>,
    [h, t, s, hkv]: [usize; 4],
) -> AttnLayoutLaunch<R> {
    let st = |t: &CubeTensor<R>, i: usize| t.meta.strides()[i] as u32;
    AttnLayoutLaunch::new(
        h as u32,
        t as u32,
        s as u32,
        hkv as u32,
        st(q, 0),
        st(q, 1),
        st(q, 2),
        st(q, 3),
        st(k, 0),
        st(k, 1),
        st(k, 2),
        st(k, 3),
        st(v, 0),
        st(v, 1),
        st(v, 2),
        st(v, 3),
        st(mask, 0),
        st(mask, 1),
        st(mask, 2),
    )
}

/// Whether `t`'s rows (last dim contiguous) start on whole vectors of `nv` elements.
fn rows_aligned<R: CubeRuntime>(t: &CubeTensor<R>, nv: usize) -> bool {
    let st = t.meta.strides();
    nv == 1
        || (st[3] == 1
            && [st[0], st[1], st[2]].iter().all(|x| x.is_multiple_of(nv))
            && t.handle
                .offset_start
                .unwrap_or(0)
                .is_multiple_of((nv * t.dtype.size()) as u64))
}

/// Launches [`decode_attention_kernel`] (and the join of its splits) for one query row per
/// head, or returns `None` where it does not apply (no plane operations, or a group too large
/// for its registers): the caller then uses the general kernel. Operands validated by
/// [`gqa_attention`].
#[allow(clippy::too_many_arguments)]
fn decode_attention_launch<R: CubeRuntime>(
    q: &CubeTensor<R>,
    k: &CubeTensor<R>,
    v: &CubeTensor<R>,
    mask: &CubeTensor<R>,
    scale: f64,
    shape: DecodeAttention,
    sms: usize,
    [b, h, hkv, s, d, dv]: [usize; 6],
) -> Option<CubeTensor<R>> {
    let client = q.client.clone();
    let hw = &client.properties().hardware;
    // plane sums, with planes of a size the device picks between these; else groups of 8
    // units summing through shared memory
    let (lanes, lanes_max) = (hw.plane_size_min as usize, hw.plane_size_max as usize);
    let use_plane = plane_ops(&client) && (4..=lanes_max).contains(&lanes) && lanes_max <= 128;
    let (lanes, lanes_max) = if use_plane { (lanes, lanes_max) } else { (8, 8) };
    let g = h / hkv;
    let dt = q.dtype;
    // the widest vectors (≤ 16 bytes) that keep every lane busy and fit the rows' alignment
    let nv = (1..=(16 / dt.size()).trailing_zeros())
        .rev()
        .map(|p| 1usize << p)
        .find(|&nv| {
            d.is_multiple_of(nv)
                && dv.is_multiple_of(nv)
                && d / nv >= lanes
                && dv / nv >= lanes
                && rows_aligned(k, nv)
                && rows_aligned(v, nv)
        })
        .unwrap_or(1);
    let (kpl, vpl) = ((d / nv).div_ceil(lanes), (dv / nv).div_ceil(lanes));
    // registers per lane: the group's queries and values, one round's keys and values
    if (g + shape.batch) * (kpl + vpl) * nv > 192 {
        return None;
    }
    // planes per cube within the device's units and 32 KiB of shared memory
    let max_units = hw.max_units_per_cube.min(hw.max_cube_dim.0) as usize;
    // (a cube of `planes · lanes_max` units forms up to `planes · lanes_max / lanes` planes)
    let fits = |planes: usize| {
        let reduce = if use_plane { 0 } else { planes * lanes * g * shape.batch };
        planes * lanes_max <= max_units && (planes * lanes_max / lanes * g * (dv + 2) + reduce) * 4 <= 32 * 1024
    };
    let mut planes = shape.planes;
    while planes > 1 && !fits(planes) {
        planes /= 2;
    }
    if !fits(planes) {
        return None;
    }
    let max_planes = planes * lanes_max / lanes;
    let (splits, chunk) = decode_splits(b * hkv, s, sms, planes * shape.batch, shape.split_from);
    let split = splits > 1;
    let out = empty_device_contiguous_dtype(client.clone(), q.device.clone(), Shape::new([b, 1, h, dv]), dt);
    let part_len = if split { b * h * splits * (dv + 2) } else { 1 };
    let part = empty_device_contiguous_dtype(
        client.clone(),
        q.device.clone(),
        Shape::new([part_len]),
        burn::tensor::DType::F32,
    );
    let layout = attn_layout(q, k, v, mask, [h, 1, s, hkv]);
    // SAFETY: every index stays within the extents validated by `gqa_attention` (shapes,
    // strides): key and value loads are clamped to the last key of the split and the last
    // vector of the row (and zeroed outside), `k`/`v` are read as vectors of `nv` only when
    // their rows are contiguous and start on whole vectors (`rows_aligned`); cube
    // (b, kvh, split) writes `part` only at its group's rows and its split, `out` only at its
    // group's rows ([B, 1, H, Dv] contiguous).
    unsafe {
        decode_attention_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::new_1d((b * hkv * splits) as u32),
            CubeDim::new_1d((planes * lanes_max) as u32),
            nv,
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            mask.clone().into_array_arg(),
            out.clone().into_array_arg(),
            part.clone().into_array_arg(),
            layout,
            scale as f32,
            splits as u32,
            chunk as u32,
            d,
            dv,
            g,
            nv,
            lanes,
            max_planes,
            shape.batch,
            use_plane,
            split,
            dt.into(),
        );
    }
    if split {
        join_splits(part, &out, b * h, [h, 1, splits, dv]);
    }
    Some(out)
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
