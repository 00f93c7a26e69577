//! Q8_0 matrix × vector on integer tensor cores (`mma.sync m16n8k32`, `s8 · s8 → s32`), for
//! devices that have them (CUDA sm_80 and later).
//!
//! The dequantizing matvec of [`super::matvec`] spends ~15 instructions per quant word on
//! turning bytes into f32 and multiplying them (Nsight Compute on an H200: its issue slots,
//! not memory, bound it). Here the quants are never converted:
//!
//! 1. Every cube quantizes the `x` rows (at most [`MMA_MAX_ROWS`]) to `i8` per 32-value block
//!    into shared memory, `d = max|x| / 127`, `q = rint(x / d)` (as llama.cpp's CUDA kernels
//!    quantize their activations to `q8_1`).
//! 2. A cube owns 16 weight rows. Each of its warps takes whole Q8_0 blocks of those rows
//!    (`unroll` consecutive blocks per step, steps strided by the number of warps); one
//!    `m16n8k32` MMA multiplies 16 rows × one block with the block of every `x` row (the
//!    MMA's 8 columns: `x` rows, repeated past the last), exactly in `i32`.
//! 3. Each block's integer dots are scaled by the weight row's and the `x` row's block scales
//!    and summed in f32; the warps' sums meet in shared memory.
//!
//! Fragments: in the MMA, lane `(g = lane / 4, t = lane % 4)` holds A rows `g` and `g + 8` at
//! `k ∈ {4t..4t+3, 16+4t..16+4t+3}` and B column `g` at the same `k`. A dot product does not
//! care in which order it visits its `k`, so the kernel feeds that lane bytes `8t..8t+7` of the
//! block (one 8-byte load per row, one for `x`), the same permutation in A and in B.
//!
//! Dense bf16/f16 weights take the same tiling on `m16n8k16` MMAs (f32 accumulation, `x`
//! as it is).
//!
//! **Opt-in, not the default** (`MatvecShape::mma = 1`, e.g. `HEARTH_MATVEC=mma=1`). At stop
//! 19 they waited on one block's loads at a time (Nsight Compute: 15 of every 19 cycles on
//! loads). A warp's loads are now staged in registers two steps deep, the first step issued
//! before the cube quantizes `x`; on an H200 (llama-3.1-8b's shapes, bf16 `x`) that took the
//! Q8_0 `down` to 31.3 µs (unit kernels 32.9), but gate/up (31.5 against 25.7) and the head
//! (205 against 154) are still slower than the unit-per-vector kernels, and these kernels take
//! no folded norm or residual (every decode product has one with the carried norm sums).
//!
//! The result differs from the f32 matvec by the quantization of `x` (relative error of a dot
//! product ~1e-3 for Gaussian data). The tests compare it with a host product of the same
//! quantized `x`.

use super::reduce::zeros;
use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;

/// Rows of `x` the tensor-core matvec takes (the MMA's 8 columns would allow 8; the models'
/// decode batches stop at [`super::MATVEC_MAX_ROWS`]).
pub const MMA_MAX_ROWS: usize = 4;

/// Shared memory the kernel may ask for (bytes): quantized `x` rows, their scales and the
/// warps' partial sums.
const MMA_MAX_SHARED: usize = 96 * 1024;

/// Kernel variants: one matrix, three matrices side by side (q/k/v), gate and up with SiLU.
pub(crate) const MMA_ONE: u32 = 0;
pub(crate) const MMA_THREE: u32 = 1;
pub(crate) const MMA_SILU: u32 = 2;

/// Whether `client` runs `s8 · s8 → s32` `m16n8k32` MMAs with 32-lane planes.
pub(crate) fn mma_i8_supported<R: burn_cubecl::CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    use cubecl::ir::{ElemType, IntKind, features::MmaConfig};
    let props = client.properties();
    let i8t = ElemType::Int(IntKind::I8).into();
    let cfg = MmaConfig {
        a_type: i8t,
        b_type: i8t,
        cd_type: ElemType::Int(IntKind::I32).into(),
        m: 16,
        n: 8,
        k: 32,
    };
    props.features.matmul.mma.contains(&cfg)
        && props.hardware.plane_size_min == 32
        && props.hardware.plane_size_max == 32
        && client.features().plane.contains(cubecl::features::Plane::Ops)
}

/// Whether the kernel takes `m` rows of `k` values with `warps` warps per cube.
pub(crate) fn mma_fits(m: usize, k: usize, warps: usize) -> bool {
    (1..=MMA_MAX_ROWS).contains(&m) && k > 0 && k.is_multiple_of(32) && mma_shared_bytes(m, k, warps) <= MMA_MAX_SHARED
}

fn mma_shared_bytes(m: usize, k: usize, warps: usize) -> usize {
    m * k + m * (k / 32) * 4 + 8 * 32 * warps * 4
}

/// Blocks per step for rows of `k` values: the largest of 8, 4, 2, 1 not above `want` that
/// divides the row's blocks.
pub(crate) fn mma_unroll(k: usize, want: usize) -> usize {
    let nb = k / 32;
    [8usize, 4, 2, 1]
        .into_iter()
        .find(|&u| u <= want.max(1) && nb.is_multiple_of(u))
        .unwrap_or(1)
}

/// Quantizes the `m_rows` rows of `x: [m_rows, k]` to `i8` per 32-value block: `xq` gets 8
/// values per entry (two words, value `8j + e` in byte `e % 4` of word `e / 4`), `xd` the block
/// scales. Every unit of the cube calls it; it ends with a cube barrier.
#[cube]
// cube code: `is_multiple_of` on runtime values does not expand in kernels
#[allow(clippy::manual_is_multiple_of)]
fn quantize_x<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    xq: &mut SharedMemory<Vector<u32, NW>>,
    xd: &mut SharedMemory<f32>,
    #[comptime] k: usize,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
) {
    let octets = comptime!(m_rows * k / 8);
    let per_row = comptime!(k / 8);
    let cube = comptime!(32 * warps);
    // every unit runs every round (the block maximum is a 4-lane shuffle); the rounds are
    // unrolled so that all of a unit's loads of `x` are issued before the first maximum
    let rounds = comptime!(octets.div_ceil(cube));
    #[unroll]
    for i in 0..rounds {
        let o = UNIT_POS as usize + comptime!(i * cube);
        let oc = min(o, octets - 1);
        let row = oc / per_row;
        let j = oc % per_row;
        let at = (row * k + 8 * j) / 4;
        let a = Vector::<f32, NX>::cast_from(x[at]);
        let b = Vector::<f32, NX>::cast_from(x[at + 1]);
        let mut amax = 0.0f32;
        #[unroll]
        for e in 0..4usize {
            amax = max(amax, f32::abs(a[e]));
            amax = max(amax, f32::abs(b[e]));
        }
        // the 4 lanes of a block are 4 consecutive units (the cube is whole planes)
        amax = max(amax, plane_shuffle_xor(amax, 1u32));
        amax = max(amax, plane_shuffle_xor(amax, 2u32));
        let inv = select(amax > 0.0f32, 127.0f32 / amax, 0.0f32);
        let mut w0 = 0u32;
        let mut w1 = 0u32;
        #[unroll]
        for e in 0..4usize {
            let qa = i32::cast_from(f32::round(a[e] * inv));
            let qb = i32::cast_from(f32::round(b[e] * inv));
            w0 |= (u32::cast_from(qa) & 0xFFu32) << comptime!((8 * e) as u32);
            w1 |= (u32::cast_from(qb) & 0xFFu32) << comptime!((8 * e) as u32);
        }
        if o < octets {
            let mut v = Vector::<u32, NW>::empty();
            v[0] = w0;
            v[1] = w1;
            xq[oc] = v;
            if j % 4 == 0 {
                xd[row * comptime!(k / 32) + j / 4] = amax / 127.0f32;
            }
        }
    }
    sync_cube();
}

/// Loads step `c` of a warp (Q8_0 blocks `c · unroll ..`) of one matrix into registers: for
/// each block the lane's 8 quant bytes of its two rows (vectors `q0`, `q1`) into `lo`/`hi` and
/// the rows' scales (words `s0`, `s1`) into `sc`, at entries `at ..`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn q8_stage<NW: Size>(
    w: &Array<Vector<u32, NW>>,
    ws: &Array<u32>,
    q0: usize,
    q1: usize,
    s0: usize,
    s1: usize,
    c: usize,
    lo: &mut Array<Vector<u32, NW>>,
    hi: &mut Array<Vector<u32, NW>>,
    sc: &mut Array<f32>,
    #[comptime] at: usize,
    #[comptime] unroll: usize,
) {
    #[unroll]
    for u in 0..unroll {
        let b = c * unroll + u;
        lo[comptime!(at + u)] = w[q0 + 4 * b];
        hi[comptime!(at + u)] = w[q1 + 4 * b];
        sc[comptime!(2 * (at + u))] = f32::reinterpret(ws[s0 + b]);
        sc[comptime!(2 * (at + u) + 1)] = f32::reinterpret(ws[s1 + b]);
    }
}

/// The MMAs of step `c` from the registers [`q8_stage`] filled at `at ..`: one `m16n8k32` per
/// block against the quantized `x` rows, each block's integer dots scaled by the weight rows'
/// and the `x` rows' block scales into `acc[acc_at .. acc_at + 4]`. Lane `(g, t)` holds rows
/// `g` (entries 0, 1) and `g + 8` (2, 3) against `x` rows `2t` and `2t + 1` (rows past
/// `m_rows` repeat the last).
#[cube]
#[allow(clippy::too_many_arguments)]
fn q8_step<NW: Size>(
    xq: &SharedMemory<Vector<u32, NW>>,
    xd: &SharedMemory<f32>,
    xrow: usize,
    t: usize,
    c: usize,
    lo: &Array<Vector<u32, NW>>,
    hi: &Array<Vector<u32, NW>>,
    sc: &Array<f32>,
    acc: &mut Array<f32>,
    #[comptime] at: usize,
    #[comptime] acc_at: usize,
    #[comptime] nb: usize,
    #[comptime] m_rows: usize,
    #[comptime] unroll: usize,
) {
    let def = MmaDefinition::<i8, i8, i32>::new(16usize, 8usize, 32usize);
    let size!(NA) = def.vector_size(MatrixIdent::A);
    let size!(NB) = def.vector_size(MatrixIdent::B);
    let size!(NC) = def.vector_size(MatrixIdent::Accumulator);
    let va = def.vectors_per_lane(MatrixIdent::A);
    let vb = def.vectors_per_lane(MatrixIdent::B);
    let vc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let mut ra = Array::<Vector<i8, NA>>::new(va);
    let mut rb = Array::<Vector<i8, NB>>::new(vb);
    let mut rc = Array::<Vector<i32, NC>>::new(vc);
    #[unroll]
    for i in 0..vc {
        rc[i] = Vector::<i32, NC>::new(0i32);
    }
    #[unroll]
    for u in 0..unroll {
        let b = c * unroll + u;
        let l = lo[comptime!(at + u)];
        let h = hi[comptime!(at + u)];
        let xv = xq[xrow + 4 * b];
        ra[0] = Vector::<i8, NA>::reinterpret(l[0]);
        ra[1] = Vector::<i8, NA>::reinterpret(h[0]);
        ra[2] = Vector::<i8, NA>::reinterpret(l[1]);
        ra[3] = Vector::<i8, NA>::reinterpret(h[1]);
        rb[0] = Vector::<i8, NB>::reinterpret(xv[0]);
        rb[1] = Vector::<i8, NB>::reinterpret(xv[1]);
        let d = def.execute(&ra, &rb, &rc);
        #[unroll]
        for i in 0..4usize {
            // with one x row, every column is that row: only columns 0 and 2·t are read
            if comptime!(i % 2 == 0 || m_rows > 1) {
                let col = min(2 * t + comptime!(i % 2), comptime!(m_rows - 1));
                let dx = xd[col * nb + b];
                let sw = sc[comptime!(2 * (at + u) + i / 2)];
                let dot = d[comptime!(i / 2)][comptime!(i % 2)];
                acc[comptime!(acc_at + i)] += f32::cast_from(dot) * (sw * dx);
            }
        }
    }
}

/// This warp's share of the 16-row tile `tile` of the Q8_0 matrix `wa` (quants as 8-byte
/// vectors, scales as f32 words from word `soa`; `n` rows) times the `x` rows, added to
/// `acc[0..4]`; with `two`, the same tile of `wb` (same `n`) into `acc[4..8]` in the same
/// steps. The cube quantizes `x` into `xq`/`xd` here (every unit calls this).
///
/// The loads are staged in registers, two steps deep: a warp's first step is issued before
/// the quantization of `x` (so the weights' latency overlaps it), and every step's loads are
/// issued before the previous step's MMAs (the MMAs are `asm volatile`, which the compiler
/// does not move loads across: written in the obvious order, one block's loads at a time were
/// in flight, stop 19).
#[cube]
#[allow(clippy::too_many_arguments)]
fn q8_tile<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    xq: &mut SharedMemory<Vector<u32, NW>>,
    xd: &mut SharedMemory<f32>,
    wa: &Array<Vector<u32, NW>>,
    wsa: &Array<u32>,
    soa: usize,
    wb: &Array<Vector<u32, NW>>,
    wsb: &Array<u32>,
    sob: usize,
    n: usize,
    tile: usize,
    acc: &mut Array<f32>,
    #[comptime] k: usize,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
    #[comptime] unroll: usize,
    #[comptime] two: bool,
) {
    let nb = comptime!(k / 32);
    let lane = UNIT_POS_PLANE as usize;
    let g = lane / 4;
    let t = lane % 4;
    let warp = (UNIT_POS / PLANE_DIM) as usize;
    let r0 = min(tile * 16 + g, n - 1);
    let r1 = min(tile * 16 + g + 8, n - 1);
    let (q0, q1) = (r0 * comptime!(k / 8) + t, r1 * comptime!(k / 8) + t);
    let (sa0, sa1) = (soa + r0 * nb, soa + r1 * nb);
    let (sb0, sb1) = (sob + r0 * nb, sob + r1 * nb);
    let xrow = min(g, comptime!(m_rows - 1)) * comptime!(k / 8) + t;
    let chunks = comptime!(nb / unroll);
    // registers: two buffers of `mats · unroll` blocks
    let buf = comptime!(if two { 2 * unroll } else { unroll });
    let mut lo = Array::<Vector<u32, NW>>::new(comptime!(2 * buf));
    let mut hi = Array::<Vector<u32, NW>>::new(comptime!(2 * buf));
    let mut sc = Array::<f32>::new(comptime!(4 * buf));
    let mut c = warp;
    let c0 = min(c, comptime!(chunks - 1));
    q8_stage::<NW>(wa, wsa, q0, q1, sa0, sa1, c0, &mut lo, &mut hi, &mut sc, 0usize, unroll);
    if comptime!(two) {
        q8_stage::<NW>(wb, wsb, q0, q1, sb0, sb1, c0, &mut lo, &mut hi, &mut sc, unroll, unroll);
    }
    quantize_x::<F, NX, NW>(x, xq, xd, k, m_rows, warps);
    loop {
        if c >= chunks {
            break;
        }
        let cn = c + warps;
        if cn < chunks {
            q8_stage::<NW>(wa, wsa, q0, q1, sa0, sa1, cn, &mut lo, &mut hi, &mut sc, buf, unroll);
            if comptime!(two) {
                q8_stage::<NW>(
                    wb,
                    wsb,
                    q0,
                    q1,
                    sb0,
                    sb1,
                    cn,
                    &mut lo,
                    &mut hi,
                    &mut sc,
                    comptime!(buf + unroll),
                    unroll,
                );
            }
        }
        q8_step::<NW>(
            xq, xd, xrow, t, c, &lo, &hi, &sc, acc, 0usize, 0usize, nb, m_rows, unroll,
        );
        if comptime!(two) {
            q8_step::<NW>(
                xq, xd, xrow, t, c, &lo, &hi, &sc, acc, unroll, 4usize, nb, m_rows, unroll,
            );
        }
        c = cn;
        if c >= chunks {
            break;
        }
        let cn = c + warps;
        if cn < chunks {
            q8_stage::<NW>(wa, wsa, q0, q1, sa0, sa1, cn, &mut lo, &mut hi, &mut sc, 0usize, unroll);
            if comptime!(two) {
                q8_stage::<NW>(wb, wsb, q0, q1, sb0, sb1, cn, &mut lo, &mut hi, &mut sc, unroll, unroll);
            }
        }
        q8_step::<NW>(xq, xd, xrow, t, c, &lo, &hi, &sc, acc, buf, 0usize, nb, m_rows, unroll);
        if comptime!(two) {
            q8_step::<NW>(
                xq,
                xd,
                xrow,
                t,
                c,
                &lo,
                &hi,
                &sc,
                acc,
                comptime!(buf + unroll),
                4usize,
                nb,
                m_rows,
                unroll,
            );
        }
        c = cn;
    }
}

/// Sums `acc[0..len]` over the cube's warps: afterwards the first warp's lanes hold the totals.
#[cube]
fn warps_sum(acc: &mut Array<f32>, #[comptime] len: usize, #[comptime] warps: usize) {
    if comptime!(warps > 1) {
        let units = comptime!(32 * warps);
        let mut red = SharedMemory::<f32>::new(comptime!(len * 32 * warps));
        let u = UNIT_POS as usize;
        #[unroll]
        for i in 0..len {
            red[i * units + u] = acc[i];
        }
        sync_cube();
        if u < 32 {
            #[unroll]
            for i in 0..len {
                let mut s = 0.0f32;
                #[unroll]
                for p in 0..warps {
                    s += red[i * units + p * 32 + u];
                }
                acc[i] = s;
            }
        }
    }
}

/// 16-row tiles (cubes) of a launch in `mode` over matrices of `a0`, `a1`, `a2` rows.
#[cube]
fn tile_count(a0: usize, a1: usize, a2: usize, #[comptime] mode: u32) -> usize {
    if comptime!(mode == MMA_THREE) {
        a0.div_ceil(16) + a1.div_ceil(16) + a2.div_ceil(16)
    } else {
        a0.div_ceil(16)
    }
}

/// The end of every tile: the warps' sums meet, then the first warp writes the tile to `out:
/// [m_rows, n]` (with `silu`, `acc[0..4]` gate and `acc[4..8]` up products, each rounded to `F`
/// first, combined as `silu(g) · u`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn finish<F: Float>(
    out: &mut Array<F>,
    acc: &mut Array<f32>,
    n: usize,
    tile: usize,
    #[comptime] silu: bool,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
) {
    warps_sum(acc, comptime!(if silu { 8usize } else { 4usize }), warps);
    if comptime!(silu) {
        #[unroll]
        for i in 0..4usize {
            let gv = f32::cast_from(F::cast_from(acc[i]));
            let uv = f32::cast_from(F::cast_from(acc[4 + i]));
            acc[i] = gv / (1.0f32 + f32::exp(0.0f32 - gv)) * uv;
        }
    }
    store_tile::<F>(out, acc, n, tile, 0usize, m_rows);
}

/// Writes the first warp's tile results `acc[at..at + 4]` of `tile` to `out: [m_rows, n]`.
#[cube]
fn store_tile<F: Float>(
    out: &mut Array<F>,
    acc: &Array<f32>,
    n: usize,
    tile: usize,
    #[comptime] at: usize,
    #[comptime] m_rows: usize,
) {
    let lane = UNIT_POS as usize;
    if lane < 32 {
        let (g, t) = (lane / 4, lane % 4);
        #[unroll]
        for i in 0..4usize {
            let row = tile * 16 + g + comptime!(8 * (i / 2));
            let col = 2 * t + comptime!(i % 2);
            if row < n && col < m_rows {
                out[col * n + row] = F::cast_from(acc[at + i]);
            }
        }
    }
}

/// `out_i = x · W_iᵀ` on tensor cores for Q8_0 `W_i` in the split layout (see the module
/// docs). `mode` [`MMA_ONE`]: `W_0` alone; [`MMA_THREE`]: cubes over the tiles of `W_0`, `W_1`,
/// `W_2` side by side; [`MMA_SILU`]: every cube the same tile of `W_0` (gate) and `W_1` (up),
/// `out_0 = silu(x · W_0ᵀ) · (x · W_1ᵀ)` with both products rounded to `F` first.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn q8_mma_kernel<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    w0: &Array<Vector<u32, NW>>,
    s0: &Array<u32>,
    w1: &Array<Vector<u32, NW>>,
    s1: &Array<u32>,
    w2: &Array<Vector<u32, NW>>,
    s2: &Array<u32>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    n0: u32,
    n1: u32,
    n2: u32,
    so0: u32,
    so1: u32,
    so2: u32,
    #[comptime] k: usize,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
    #[comptime] unroll: usize,
    #[comptime] mode: u32,
    #[define(F)] _dtype: StorageType,
) {
    let (a0, a1, a2) = (n0 as usize, n1 as usize, n2 as usize);
    let (t0, t1) = (a0.div_ceil(16), a1.div_ceil(16));
    let c = CUBE_POS;
    if c >= tile_count(a0, a1, a2, mode) {
        terminate!();
    }
    let mut xq = SharedMemory::<Vector<u32, NW>>::new(comptime!(m_rows * k / 8));
    let mut xd = SharedMemory::<f32>::new(comptime!(m_rows * k / 32));
    let mut acc = zeros(comptime!(if mode == MMA_SILU { 8usize } else { 4usize }));
    let (so0, so1, so2) = (so0 as usize, so1 as usize, so2 as usize);
    if comptime!(mode == MMA_SILU) {
        q8_tile::<F, NX, NW>(
            x, &mut xq, &mut xd, w0, s0, so0, w1, s1, so1, a0, c, &mut acc, k, m_rows, warps, unroll, true,
        );
        finish::<F>(out0, &mut acc, a0, c, true, m_rows, warps);
    } else if c < t0 {
        q8_tile::<F, NX, NW>(
            x, &mut xq, &mut xd, w0, s0, so0, w0, s0, so0, a0, c, &mut acc, k, m_rows, warps, unroll, false,
        );
        finish::<F>(out0, &mut acc, a0, c, false, m_rows, warps);
    } else if c < t0 + t1 {
        q8_tile::<F, NX, NW>(
            x,
            &mut xq,
            &mut xd,
            w1,
            s1,
            so1,
            w1,
            s1,
            so1,
            a1,
            c - t0,
            &mut acc,
            k,
            m_rows,
            warps,
            unroll,
            false,
        );
        finish::<F>(out1, &mut acc, a1, c - t0, false, m_rows, warps);
    } else {
        q8_tile::<F, NX, NW>(
            x,
            &mut xq,
            &mut xd,
            w2,
            s2,
            so2,
            w2,
            s2,
            so2,
            a2,
            c - t0 - t1,
            &mut acc,
            k,
            m_rows,
            warps,
            unroll,
            false,
        );
        finish::<F>(out2, &mut acc, a2, c - t0 - t1, false, m_rows, warps);
    }
}

/// Loads step `c` of a warp (16-value slices `c · unroll ..`) of a dense tile into registers:
/// per slice the lane's 4 values of its two rows (vector offsets `r0`, `r1`) and of its `x`
/// row (`xr`), at entries `at ..`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_stage<F: Float, N4: Size>(
    x: &Array<Vector<F, N4>>,
    w: &Array<Vector<F, N4>>,
    r0: usize,
    r1: usize,
    xr: usize,
    c: usize,
    lo: &mut Array<Vector<F, N4>>,
    hi: &mut Array<Vector<F, N4>>,
    xs: &mut Array<Vector<F, N4>>,
    #[comptime] at: usize,
    #[comptime] unroll: usize,
) {
    #[unroll]
    for u in 0..unroll {
        let j = 4 * (c * unroll + u);
        lo[comptime!(at + u)] = w[r0 + j];
        hi[comptime!(at + u)] = w[r1 + j];
        xs[comptime!(at + u)] = x[xr + j];
    }
}

/// The MMAs of a dense step from the registers [`dense_stage`] filled at `at ..`, accumulated
/// in `rc`.
#[cube]
fn dense_step<F: Float, N4: Size, NC: Size>(
    lo: &Array<Vector<F, N4>>,
    hi: &Array<Vector<F, N4>>,
    xs: &Array<Vector<F, N4>>,
    rc: &mut Array<Vector<f32, NC>>,
    #[comptime] at: usize,
    #[comptime] unroll: usize,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let size!(NA) = def.vector_size(MatrixIdent::A);
    let size!(NB) = def.vector_size(MatrixIdent::B);
    let va = def.vectors_per_lane(MatrixIdent::A);
    let vb = def.vectors_per_lane(MatrixIdent::B);
    let mut ra = Array::<Vector<F, NA>>::new(va);
    let mut rb = Array::<Vector<F, NB>>::new(vb);
    #[unroll]
    for u in 0..unroll {
        let l = lo[comptime!(at + u)];
        let h = hi[comptime!(at + u)];
        let xv = xs[comptime!(at + u)];
        #[unroll]
        for e in 0..2usize {
            let mut a0 = Vector::<F, NA>::empty();
            let mut a1 = Vector::<F, NA>::empty();
            let mut b = Vector::<F, NB>::empty();
            a0[0] = l[2 * e];
            a0[1] = l[2 * e + 1];
            a1[0] = h[2 * e];
            a1[1] = h[2 * e + 1];
            b[0] = xv[2 * e];
            b[1] = xv[2 * e + 1];
            ra[2 * e] = a0;
            ra[2 * e + 1] = a1;
            rb[e] = b;
        }
        def.execute_inplace(&ra, &rb, rc);
    }
}

/// This warp's share of the 16-row tile `tile` of a dense bf16/f16 weight `w` (`n` rows of
/// `k` values, `pitch` 4-value vectors apart) times the `x` rows (`xp` vectors apart), on
/// `m16n8k16` MMAs with f32 accumulation, added to `acc[at..at + 4]` (lanes as in
/// [`q8_step`]). Lane `(g, t)` feeds values `16j + 4t .. 16j + 4t + 3` of slice `j` (one
/// 8-byte load per row and one of `x`), the same permutation of `k` in A and B. Loads are
/// staged two steps deep as in [`q8_tile`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_tile<F: Float, N4: Size>(
    x: &Array<Vector<F, N4>>,
    xp: usize,
    w: &Array<Vector<F, N4>>,
    pitch: usize,
    n: usize,
    tile: usize,
    acc: &mut Array<f32>,
    #[comptime] at: usize,
    #[comptime] k: usize,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
    #[comptime] unroll: usize,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let size!(NC) = def.vector_size(MatrixIdent::Accumulator);
    let vc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let mut rc = Array::<Vector<f32, NC>>::new(vc);
    #[unroll]
    for i in 0..vc {
        rc[i] = Vector::<f32, NC>::new(0.0f32);
    }
    let lane = UNIT_POS_PLANE as usize;
    let g = lane / 4;
    let t = lane % 4;
    let warp = (UNIT_POS / PLANE_DIM) as usize;
    let r0 = min(tile * 16 + g, n - 1) * pitch + t;
    let r1 = min(tile * 16 + g + 8, n - 1) * pitch + t;
    let xr = min(g, comptime!(m_rows - 1)) * xp + t;
    let chunks = comptime!(k / 16 / unroll);
    let mut lo = Array::<Vector<F, N4>>::new(comptime!(2 * unroll));
    let mut hi = Array::<Vector<F, N4>>::new(comptime!(2 * unroll));
    let mut xs = Array::<Vector<F, N4>>::new(comptime!(2 * unroll));
    let mut c = warp;
    dense_stage::<F, N4>(
        x,
        w,
        r0,
        r1,
        xr,
        min(c, comptime!(chunks - 1)),
        &mut lo,
        &mut hi,
        &mut xs,
        0usize,
        unroll,
    );
    loop {
        if c >= chunks {
            break;
        }
        let cn = c + warps;
        if cn < chunks {
            dense_stage::<F, N4>(x, w, r0, r1, xr, cn, &mut lo, &mut hi, &mut xs, unroll, unroll);
        }
        dense_step::<F, N4, NC>(&lo, &hi, &xs, &mut rc, 0usize, unroll);
        c = cn;
        if c >= chunks {
            break;
        }
        let cn = c + warps;
        if cn < chunks {
            dense_stage::<F, N4>(x, w, r0, r1, xr, cn, &mut lo, &mut hi, &mut xs, 0usize, unroll);
        }
        dense_step::<F, N4, NC>(&lo, &hi, &xs, &mut rc, unroll, unroll);
        c = cn;
    }
    #[unroll]
    for i in 0..4usize {
        acc[at + i] += rc[comptime!(i / 2)][comptime!(i % 2)];
    }
}

/// `out_i = x · W_iᵀ` on tensor cores for dense bf16/f16 `W_i` stored row-major (a transposed
/// view, rows `p_i` 4-value vectors apart); `mode` as in [`q8_mma_kernel`]. `x` rows are `xp`
/// vectors apart.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_mma_kernel<F: Float, N4: Size>(
    x: &Array<Vector<F, N4>>,
    w0: &Array<Vector<F, N4>>,
    w1: &Array<Vector<F, N4>>,
    w2: &Array<Vector<F, N4>>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    n0: u32,
    n1: u32,
    n2: u32,
    p0: u32,
    p1: u32,
    p2: u32,
    xp: u32,
    #[comptime] k: usize,
    #[comptime] m_rows: usize,
    #[comptime] warps: usize,
    #[comptime] unroll: usize,
    #[comptime] mode: u32,
    #[define(F)] _dtype: StorageType,
) {
    let (a0, a1, a2) = (n0 as usize, n1 as usize, n2 as usize);
    let (t0, t1) = (a0.div_ceil(16), a1.div_ceil(16));
    let c = CUBE_POS;
    if c >= tile_count(a0, a1, a2, mode) {
        terminate!();
    }
    let xp = xp as usize;
    let mut acc = zeros(comptime!(if mode == MMA_SILU { 8usize } else { 4usize }));
    if comptime!(mode == MMA_SILU) {
        dense_tile::<F, N4>(
            x,
            xp,
            w0,
            p0 as usize,
            a0,
            c,
            &mut acc,
            0usize,
            k,
            m_rows,
            warps,
            unroll,
        );
        dense_tile::<F, N4>(
            x,
            xp,
            w1,
            p1 as usize,
            a0,
            c,
            &mut acc,
            4usize,
            k,
            m_rows,
            warps,
            unroll,
        );
        finish::<F>(out0, &mut acc, a0, c, true, m_rows, warps);
    } else if c < t0 {
        dense_tile::<F, N4>(
            x,
            xp,
            w0,
            p0 as usize,
            a0,
            c,
            &mut acc,
            0usize,
            k,
            m_rows,
            warps,
            unroll,
        );
        finish::<F>(out0, &mut acc, a0, c, false, m_rows, warps);
    } else if c < t0 + t1 {
        dense_tile::<F, N4>(
            x,
            xp,
            w1,
            p1 as usize,
            a1,
            c - t0,
            &mut acc,
            0usize,
            k,
            m_rows,
            warps,
            unroll,
        );
        finish::<F>(out1, &mut acc, a1, c - t0, false, m_rows, warps);
    } else {
        dense_tile::<F, N4>(
            x,
            xp,
            w2,
            p2 as usize,
            a2,
            c - t0 - t1,
            &mut acc,
            0usize,
            k,
            m_rows,
            warps,
            unroll,
        );
        finish::<F>(out2, &mut acc, a2, c - t0 - t1, false, m_rows, warps);
    }
}

/// Whether `client` runs `m16n8k16` MMAs of `dtype` (bf16 or f16) with f32 accumulation.
pub(crate) fn mma_half_supported<R: burn_cubecl::CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    dtype: burn::tensor::DType,
) -> bool {
    use cubecl::ir::{ElemType, FloatKind, features::MmaConfig};
    let kind = match dtype {
        burn::tensor::DType::BF16 => FloatKind::BF16,
        burn::tensor::DType::F16 => FloatKind::F16,
        _ => return false,
    };
    let props = client.properties();
    let cfg = MmaConfig {
        a_type: ElemType::Float(kind).into(),
        b_type: ElemType::Float(kind).into(),
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        n: 8,
        k: 16,
    };
    props.features.matmul.mma.contains(&cfg)
        && props.hardware.plane_size_min == 32
        && props.hardware.plane_size_max == 32
        && client.features().plane.contains(cubecl::features::Plane::Ops)
}

/// The tensor-core launch of a dense bf16/f16 matvec: warps per 16-row tile and 16-value
/// slices per warp step, or `None` when the shape does not ask for it (`mma = 1` in the dense
/// shape), tensor cores are off or missing, or `m`/`k` do not fit (`k` a multiple of 16).
pub(crate) fn dense_mma_launch<R: burn_cubecl::CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    dtype: burn::tensor::DType,
    m: usize,
    k: usize,
) -> Option<MmaLaunch> {
    let shape = super::matvec_shape(None);
    if shape.mma == 0
        || super::tensor_cores_off()
        || !(1..=MMA_MAX_ROWS).contains(&m)
        || k == 0
        || !k.is_multiple_of(16)
        || !mma_half_supported(client, dtype)
    {
        return None;
    }
    let warps = if shape.units == 0 {
        4
    } else {
        (shape.units as usize / 32).clamp(1, 32)
    };
    let slices = k / 16;
    let unroll = [8usize, 4, 2, 1]
        .into_iter()
        .find(|&u| u <= shape.unroll.max(1) && slices.is_multiple_of(u))
        .unwrap_or(1);
    Some(MmaLaunch { warps, unroll })
}

/// How the tensor-core Q8_0 matvec is launched: warps per cube (each cube owns 16 weight
/// rows) and Q8_0 blocks per warp step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MmaLaunch {
    pub warps: usize,
    pub unroll: usize,
}

impl MmaLaunch {
    /// The launch for Q8_0 rows of `k` values times `m` rows of `x` with `shape`, when the
    /// shape asks for tensor cores (`mma = 1`), the device has them and the operands fit.
    pub(crate) fn new<R: burn_cubecl::CubeRuntime>(
        client: &cubecl::client::ComputeClient<R>,
        shape: super::MatvecShape,
        m: usize,
        k: usize,
    ) -> Option<MmaLaunch> {
        if shape.mma == 0 || super::tensor_cores_off() || !mma_i8_supported(client) {
            return None;
        }
        let warps = if shape.units == 0 {
            4
        } else {
            (shape.units as usize / 32).clamp(1, 32)
        };
        let l = MmaLaunch {
            warps,
            unroll: mma_unroll(k, shape.unroll),
        };
        mma_fits(m, k, warps).then_some(l)
    }

    /// Launches [`q8_mma_kernel`] in `mode` for `x: [m, k]` (contiguous, float), the words of up
    /// to three `[n_i, k]` Q8_0 matrices (unused ones repeat the first) with their scale
    /// offsets, and outputs `[m, n_i]` of `x`'s dtype.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch<R: burn_cubecl::CubeRuntime>(
        &self,
        x: burn_cubecl::tensor::CubeTensor<R>,
        words: [burn_cubecl::tensor::CubeTensor<R>; 3],
        outs: [&burn_cubecl::tensor::CubeTensor<R>; 3],
        ns: [usize; 3],
        scale_offsets: [usize; 3],
        m: usize,
        k: usize,
        mode: u32,
    ) {
        let client = x.client.clone();
        let dtype = x.dtype;
        let tiles = match mode {
            MMA_THREE => ns.iter().map(|n| n.div_ceil(16)).sum(),
            _ => ns[0].div_ceil(16),
        };
        let count = cubecl::calculate_cube_count_elemwise(&client, tiles, CubeDim::new_1d(1));
        let [w0, w1, w2] = words;
        // SAFETY: `x` is a contiguous [m, k] float tensor (k a multiple of 32, m ≤ MMA_MAX_ROWS,
        // checked by `mma_fits`); each word tensor holds n_i rows of Q8_0 in the split layout
        // (quants row-major, read as 8-byte vectors at whole-block offsets, then f32 scales at
        // the given word offset); rows past n_i are clamped to the last row and not written;
        // outputs are contiguous [m, n_i]; cubes past the tiles return before any barrier.
        unsafe {
            q8_mma_kernel::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_1d(32 * self.warps as u32),
                4,
                2,
                x.into_array_arg(),
                w0.clone().into_array_arg(),
                w0.into_array_arg(),
                w1.clone().into_array_arg(),
                w1.into_array_arg(),
                w2.clone().into_array_arg(),
                w2.into_array_arg(),
                outs[0].clone().into_array_arg(),
                outs[1].clone().into_array_arg(),
                outs[2].clone().into_array_arg(),
                ns[0] as u32,
                ns[1] as u32,
                ns[2] as u32,
                scale_offsets[0] as u32,
                scale_offsets[1] as u32,
                scale_offsets[2] as u32,
                k,
                m,
                self.warps,
                self.unroll,
                mode,
                dtype.into(),
            );
        }
    }

    /// Launches [`dense_mma_kernel`] in `mode` for `x: [m, k]` (rows `xp` 4-value vectors
    /// apart), up to three dense weights (row-major `[n_i, k]`, rows `pitches[i]` 4-value
    /// vectors apart; unused ones repeat the first) and contiguous outputs `[m, n_i]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_dense<R: burn_cubecl::CubeRuntime>(
        &self,
        x: &burn_cubecl::tensor::CubeTensor<R>,
        ws: [&burn_cubecl::tensor::CubeTensor<R>; 3],
        outs: [&burn_cubecl::tensor::CubeTensor<R>; 3],
        ns: [usize; 3],
        pitches: [usize; 3],
        xp: usize,
        m: usize,
        k: usize,
        mode: u32,
    ) {
        let client = x.client.clone();
        let tiles = match mode {
            MMA_THREE => ns.iter().map(|n| n.div_ceil(16)).sum(),
            _ => ns[0].div_ceil(16),
        };
        let count = cubecl::calculate_cube_count_elemwise(&client, tiles, CubeDim::new_1d(1));
        // SAFETY: `x` holds m ≤ MMA_MAX_ROWS rows of k values (k a multiple of 16, unit stride,
        // rows `xp` 4-vectors apart, checked by the caller's `DenseLaunch`); each weight holds
        // n_i rows of k values `pitches[i]` 4-vectors apart, read in 8-byte vectors at
        // 16-value slices; rows past n_i are clamped to the last row and not written; outputs
        // are contiguous [m, n_i]; cubes past the tiles return before any barrier.
        unsafe {
            dense_mma_kernel::launch_unchecked::<R>(
                &client,
                count,
                CubeDim::new_1d(32 * self.warps as u32),
                4,
                x.clone().into_array_arg(),
                ws[0].clone().into_array_arg(),
                ws[1].clone().into_array_arg(),
                ws[2].clone().into_array_arg(),
                outs[0].clone().into_array_arg(),
                outs[1].clone().into_array_arg(),
                outs[2].clone().into_array_arg(),
                ns[0] as u32,
                ns[1] as u32,
                ns[2] as u32,
                pitches[0] as u32,
                pitches[1] as u32,
                pitches[2] as u32,
                xp as u32,
                k,
                m,
                self.warps,
                self.unroll,
                mode,
                x.dtype.into(),
            );
        }
    }
}
