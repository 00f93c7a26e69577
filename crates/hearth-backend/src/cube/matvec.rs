//! Packed weights on the device: matrix × vector with dequantization fused into the load, and a
//! dequantization kernel for products with many rows.
//!
//! The weight is `[rows = N, cols = K]` in the layout of [`PackedFormat::to_words`] (`u32`
//! words). Every matvec kernel runs one cube per output element `(m, n)` whose units share the
//! row's dot product (f32 accumulation), then reduce it over the cube (plane + shared memory).
//!
//! - F32, Q8_0 and Q4_0 (the *vector* formats): each unit reads whole aligned 16-byte vectors
//!   of the row (4 f32, 16 `i8` = half a Q8_0 block, or one Q4_0 block's 32 nibbles), with
//!   `x` read 4 values at a time; the 32 units of a warp read 512 consecutive weight bytes per
//!   load. Q8_0/Q4_0 scales sit after all quants (the split layout), read as one word.
//! - Q4_K/Q6_K: 32-value chunks (Q4_K's sub-blocks with their own 6-bit scale and min; for
//!   Q6_K two groups of 16 with their `i8` scales), one value per unit, so that a warp reads one
//!   chunk's consecutive words.
//!
//! Every argument is an `Array` with its shape passed as scalars: tensor arguments would make
//! cubecl upload their shapes and strides on every launch (a device allocation and a copy),
//! which cost more host time than the whole kernel.

use super::matmul::{Fold, input_scale, norm_scale, write_rows};
use super::mma::{MMA_ONE, MMA_SILU, MMA_THREE, MmaLaunch};
use super::reduce::{cube_sum, cube_sum_rows, zeros};
use super::{
    MATVEC_MAX_ROWS, MatvecShape, kernel_float, matmul_f32, matvec_shape, matvec_units, plane_reductions, prim,
    reduction_cube_dim, single_plane, wrap,
};
use crate::{BackendError, PACKED_BLOCK, PackedFormat, PackedMatrix, PackedStorage};
use burn::tensor::{DType, Shape, Tensor as BTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

const FMT_F32: u32 = 0;
const FMT_Q8_0: u32 = 1;
const FMT_Q4_0: u32 = 2;
const FMT_Q4_K: u32 = 3;
const FMT_Q6_K: u32 = 4;

pub(crate) fn format_id(f: PackedFormat) -> u32 {
    match f {
        PackedFormat::F32 => FMT_F32,
        PackedFormat::Q8_0 => FMT_Q8_0,
        PackedFormat::Q4_0 => FMT_Q4_0,
        PackedFormat::Q4_K => FMT_Q4_K,
        PackedFormat::Q6_K => FMT_Q6_K,
    }
}

/// 32-value chunks per block of `f` (1, or 8 for the K-quants' super-blocks).
fn chunks_per_block(f: PackedFormat) -> usize {
    f.block_len() / PACKED_BLOCK
}

/// Byte `k` (runtime) of the byte array that starts at word `base` of `w`.
#[cube]
fn byte_at(w: &Array<u32>, base: usize, k: usize) -> u32 {
    (w[base + k / 4] >> (u32::cast_from(k % 4) * 8u32)) & 0xFFu32
}

/// Scale and min (6 bits each) of sub-block `j` of a Q4_K super-block whose 12 packed scale
/// bytes start at word `base`, as f32.
#[cube]
fn q4_k_scale_min(w: &Array<u32>, base: usize, j: usize) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (byte_at(w, base, j) & 63u32, byte_at(w, base, j + 4) & 63u32)
    } else {
        let hi = byte_at(w, base, j + 4);
        (
            (hi & 0xFu32) | ((byte_at(w, base, j - 4) >> 6u32) << 4u32),
            (hi >> 4u32) | ((byte_at(w, base, j) >> 6u32) << 4u32),
        )
    };
    (f32::cast_from(sc), f32::cast_from(m))
}

/// Sign-extended `i8` in the low byte of `byte`, as f32.
#[cube]
fn i8_value(byte: u32) -> f32 {
    // (byte ^ 0x80) - 128
    f32::cast_from(byte ^ 0x80u32) - 128.0f32
}

/// Whether `f` is read by the vectorised kernels ([`vec_row_dot`]).
pub(crate) fn vector_format(f: PackedFormat) -> bool {
    matches!(f, PackedFormat::F32 | PackedFormat::Q8_0 | PackedFormat::Q4_0)
}

/// Word offset of the scales in the split layout (Q8_0, Q4_0): after every quant word.
pub(crate) fn scale_offset(f: PackedFormat, rows: usize, cols: usize) -> usize {
    match f {
        PackedFormat::Q8_0 => rows * cols / 4,
        PackedFormat::Q4_0 => rows * cols / 8,
        _ => 0,
    }
}

/// 16-byte vectors per row of `k` values for a vector format.
fn row_vectors(f: PackedFormat, k: usize) -> usize {
    match f {
        PackedFormat::F32 => k / 4,
        PackedFormat::Q8_0 => k / 16,
        _ => k / 32,
    }
}

/// Whether `client`'s device computes in f16 (the f16-pair conversion of quants needs it).
fn f16_arithmetic<R: CubeRuntime>(client: &cubecl::client::ComputeClient<R>) -> bool {
    client
        .properties()
        .type_usage(StorageType::Scalar(cubecl::ir::ElemType::Float(
            cubecl::ir::FloatKind::F16,
        )))
        .contains(cubecl::features::TypeUsage::Arithmetic)
}

/// How a vector-format matvec is launched on `client` for rows of `k` values of `format`:
/// the process's [`MatvecShape`], its units per cube and its reduction path.
pub(crate) struct VecLaunch {
    pub(crate) shape: MatvecShape,
    pub(crate) units: u32,
    pub(crate) use_plane: bool,
    pub(crate) single_plane: bool,
}

impl VecLaunch {
    pub(crate) fn new<R: CubeRuntime>(
        client: &cubecl::client::ComputeClient<R>,
        format: PackedFormat,
        k: usize,
    ) -> Self {
        let mut shape = matvec_shape(Some(format));
        if shape.convert == 2 && !f16_arithmetic(client) {
            shape.convert = 1;
        }
        let units = matvec_units(client, shape, row_vectors(format, k));
        VecLaunch {
            shape,
            units,
            use_plane: plane_reductions(client),
            single_plane: single_plane(client, units),
        }
    }

    /// Cubes per activation row over `n` weight rows.
    pub(crate) fn cubes(&self, n: usize) -> usize {
        n.div_ceil(self.shape.rows)
    }
}

/// Vector `v` of a row of a vector-format weight (quants at vector `row + v`, scales from word
/// `srow`), dotted with the matching `x` values (`x` row at vector `x_row`). `convert` picks how
/// quants become f32 (see [`super::MatvecShape::convert`]). With `norm`, `x` is the raw
/// residual stream: each value is scaled by the norm weight `g` (same layout as one `x` row)
/// before the dot, and with `first` its square is also added to `acc[ss]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn vec_dot_at<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    x_row: usize,
    wq: &Array<Vector<u32, NW>>,
    ws: &Array<u32>,
    row: usize,
    srow: usize,
    v: usize,
    g: &Array<Vector<F, NX>>,
    acc: &mut Array<f32>,
    #[comptime] ss: usize,
    #[comptime] format: u32,
    #[comptime] convert: u32,
    #[comptime] norm: bool,
    #[comptime] first: bool,
) -> f32 {
    let q = wq[row + v];
    let mut s = 0.0f32;
    if comptime!(format == FMT_F32) {
        let xv = load_x(x, x_row + v, g, v, acc, ss, norm, first);
        #[unroll]
        for i in 0..4usize {
            s += f32::reinterpret(q[i]) * xv[i];
        }
    } else if comptime!(format == FMT_Q8_0) {
        // a vector is half a block: 16 i8 values
        let d = f32::reinterpret(ws[srow + v / 2]);
        #[unroll]
        for i in 0..4usize {
            let xv = load_x(x, x_row + 4 * v + i, g, 4 * v + i, acc, ss, norm, first);
            if comptime!(convert == 2) {
                // bytes 0 and 2, then 1 and 3, biased by 128 and placed in the mantissas of an
                // f16 pair (1024 + byte ^ 0x80): one logic op per two values; minus 1024 + 128
                // in f16 is exact
                let off = Vector::<half::f16, Const<2>>::new(half::f16::new(1152.0));
                let lo = Vector::<half::f16, Const<2>>::reinterpret((q[i] & 0x00FF_00FFu32) ^ 0x6480_6480u32) - off;
                let hi = Vector::<half::f16, Const<2>>::reinterpret(((q[i] >> 8u32) & 0x00FF_00FFu32) ^ 0x6480_6480u32)
                    - off;
                let lo = Vector::<f32, Const<2>>::cast_from(lo);
                let hi = Vector::<f32, Const<2>>::cast_from(hi);
                s += lo[0] * xv[0];
                s += hi[0] * xv[1];
                s += lo[1] * xv[2];
                s += hi[1] * xv[3];
            } else {
                // bias every byte by 128 (0..=255), once per word
                let word = q[i] ^ 0x8080_8080u32;
                #[unroll]
                for b in 0..4usize {
                    let byte = (word >> comptime!((b * 8) as u32)) & 0xFFu32;
                    let value = if comptime!(convert == 1) {
                        // 2²³ + byte, exactly, then minus 2²³ + 128
                        f32::reinterpret(byte | 0x4B00_0000u32) - 8_388_736.0f32
                    } else {
                        f32::cast_from(byte) - 128.0f32
                    };
                    s += value * xv[b];
                }
            }
        }
        s *= d;
    } else {
        // Q4_0: a vector is one block; byte j holds values j (low nibble) and j + 16 (high)
        let d = f32::reinterpret(ws[srow + v]);
        let mut s16 = 0.0f32;
        #[unroll]
        for i in 0..4usize {
            let lo = load_x(x, x_row + 8 * v + i, g, 8 * v + i, acc, ss, norm, first);
            let hi = load_x(x, x_row + 8 * v + 4 + i, g, 8 * v + 4 + i, acc, ss, norm, first);
            let word = q[i];
            if comptime!(convert == 2) {
                // f16 pairs 1024 + nibble (low nibbles of bytes 0 and 2) and 1024 + 16 · nibble
                // (their high nibbles, left in place), then bytes 1 and 3 the same: one logic op
                // per two values; the offsets subtract exactly in f16 and the high nibbles'
                // factor 16 is taken out once per block
                let base = 0x6400_6400u32;
                let (off_l, off_h) = (
                    Vector::<half::f16, Const<2>>::new(half::f16::new(1032.0)),
                    Vector::<half::f16, Const<2>>::new(half::f16::new(1152.0)),
                );
                let w8 = word >> 8u32;
                let l02 = Vector::<f32, Const<2>>::cast_from(
                    Vector::<half::f16, Const<2>>::reinterpret((word & 0x000F_000Fu32) | base) - off_l,
                );
                let h02 = Vector::<f32, Const<2>>::cast_from(
                    Vector::<half::f16, Const<2>>::reinterpret((word & 0x00F0_00F0u32) | base) - off_h,
                );
                let l13 = Vector::<f32, Const<2>>::cast_from(
                    Vector::<half::f16, Const<2>>::reinterpret((w8 & 0x000F_000Fu32) | base) - off_l,
                );
                let h13 = Vector::<f32, Const<2>>::cast_from(
                    Vector::<half::f16, Const<2>>::reinterpret((w8 & 0x00F0_00F0u32) | base) - off_h,
                );
                s += l02[0] * lo[0];
                s16 += h02[0] * hi[0];
                s += l13[0] * lo[1];
                s16 += h13[0] * hi[1];
                s += l02[1] * lo[2];
                s16 += h02[1] * hi[2];
                s += l13[1] * lo[3];
                s16 += h13[1] * hi[3];
            } else {
                #[unroll]
                for b in 0..4usize {
                    let l = (word >> comptime!((b * 8) as u32)) & 0xFu32;
                    let h = (word >> comptime!((b * 8 + 4) as u32)) & 0xFu32;
                    let (l, h) = if comptime!(convert == 1) {
                        // 2²³ + nibble, exactly, then minus 2²³ + 8
                        (
                            f32::reinterpret(l | 0x4B00_0000u32) - 8_388_616.0f32,
                            f32::reinterpret(h | 0x4B00_0000u32) - 8_388_616.0f32,
                        )
                    } else {
                        (f32::cast_from(l) - 8.0f32, f32::cast_from(h) - 8.0f32)
                    };
                    s += l * lo[b] + h * hi[b];
                }
            }
        }
        s = (s + s16 * 0.0625f32) * d;
    }
    s
}

/// `x` vector `at` as f32; with `norm` scaled by the norm weight's vector `gat` (and with
/// `first` its squares summed into `acc[ss]`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_x<F: Float, NX: Size>(
    x: &Array<Vector<F, NX>>,
    at: usize,
    g: &Array<Vector<F, NX>>,
    gat: usize,
    acc: &mut Array<f32>,
    #[comptime] ss: usize,
    #[comptime] norm: bool,
    #[comptime] first: bool,
) -> Vector<f32, NX> {
    let xv = Vector::<f32, NX>::cast_from(x[at]);
    if comptime!(norm && first) {
        acc[ss] += f32::cast_from((xv * xv).vector_sum());
    }
    if comptime!(norm) {
        xv * Vector::<f32, NX>::cast_from(g[gat])
    } else {
        xv
    }
}

/// 16-byte vectors per row of `k` values of a vector format.
#[cube]
fn vectors_per_row(k: usize, #[comptime] format: u32) -> usize {
    if comptime!(format == FMT_F32) {
        k / 4
    } else if comptime!(format == FMT_Q8_0) {
        k / 16
    } else {
        k / 32
    }
}

/// One unrolled pass of [`vec_rows_dot`] over a row (quants at vector `row`, scales from word
/// `srow`): the sum of the dots of vectors `v, v + cube_dim, ...` (`unroll` of them), each
/// past the row's `nvec` vectors loaded as the last one and its product dropped.
#[cube]
#[allow(clippy::too_many_arguments)]
fn whole_pass_dot<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    x_row: usize,
    wq: &Array<Vector<u32, NW>>,
    ws: &Array<u32>,
    row: usize,
    srow: usize,
    v: usize,
    nvec: usize,
    g: &Array<Vector<F, NX>>,
    acc: &mut Array<f32>,
    #[comptime] ss: usize,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
) -> f32 {
    let mut s = 0.0f32;
    #[unroll]
    for u in 0..unroll {
        let vu = v + u * cube_dim;
        let d = vec_dot_at::<F, NX, NW>(
            x,
            x_row,
            wq,
            ws,
            row,
            srow,
            min(vu, nvec - 1),
            g,
            acc,
            ss,
            format,
            convert,
            false,
            false,
        );
        s += select(vu < nvec, d, 0.0f32);
    }
    s
}

/// This unit's shares of the dot products of `rows` consecutive rows `n0, n0 + 1, ...` of a
/// vector-format weight `a` (and, with `two`, of the same rows of `b`) with the `x` row that
/// starts at vector `x_row`, added to `acc[r]` (and `acc[rows + r]`). Units take the rows'
/// 16-byte vectors `UNIT_POS, UNIT_POS + cube_dim, ...`, `unroll` per row per pass; every
/// load of `x` serves all the rows. Rows at or past `n_rows` repeat the last row (their sums
/// are not written). `wq`/`ws` are the same words as vectors of 4 and as single words;
/// `scale_off` is the scales' word offset in the split layout.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn vec_rows_dot<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    x_row: usize,
    aq: &Array<Vector<u32, NW>>,
    as_: &Array<u32>,
    bq: &Array<Vector<u32, NW>>,
    bs: &Array<u32>,
    n0: usize,
    n_rows: usize,
    k: usize,
    scale_off: usize,
    g: &Array<Vector<F, NX>>,
    acc: &mut Array<f32>,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] two: bool,
    #[comptime] convert: u32,
    #[comptime] norm: bool,
) {
    // with `norm`, the sum of squares of the x row goes to acc[ss] (counted on the first row)
    let ss = comptime!(if two { 2 * rows } else { rows });
    let nvec = vectors_per_row(k, format);
    let spr = k / 32;
    let mut v = UNIT_POS as usize;
    if comptime!(!norm) {
        // Every pass is a whole unrolled one: a vector past the row's end is replaced by its
        // last (a valid load, its product dropped), so that rows whose length is not a
        // multiple of `unroll · cube_dim` (down: 896 vectors over 128 units) still keep
        // `unroll` loads per row in flight instead of walking their rest one load at a time.
        while v < nvec {
            #[unroll]
            for r in 0..rows {
                let n = if n0 + r < n_rows { n0 + r } else { n_rows - 1 };
                let (row, srow) = (n * nvec, scale_off + n * spr);
                let s = whole_pass_dot::<F, NX, NW>(
                    x, x_row, aq, as_, row, srow, v, nvec, g, acc, ss, format, cube_dim, unroll, convert,
                );
                acc[r] += s;
                if two {
                    let t = whole_pass_dot::<F, NX, NW>(
                        x, x_row, bq, bs, row, srow, v, nvec, g, acc, ss, format, cube_dim, unroll, convert,
                    );
                    acc[rows + r] += t;
                }
            }
            v += comptime!(unroll * cube_dim);
        }
    } else {
        // with the norm folded in, each x value's square is counted once: whole passes,
        // then single vectors
        while v + comptime!((unroll - 1) * cube_dim) < nvec {
            #[unroll]
            for r in 0..rows {
                let n = if n0 + r < n_rows { n0 + r } else { n_rows - 1 };
                let (row, srow) = (n * nvec, scale_off + n * spr);
                let mut s = 0.0f32;
                #[unroll]
                for u in 0..unroll {
                    s += vec_dot_at::<F, NX, NW>(
                        x,
                        x_row,
                        aq,
                        as_,
                        row,
                        srow,
                        v + u * cube_dim,
                        g,
                        acc,
                        ss,
                        format,
                        convert,
                        norm,
                        comptime!(r == 0),
                    );
                }
                acc[r] += s;
                if two {
                    let mut t = 0.0f32;
                    #[unroll]
                    for u in 0..unroll {
                        t += vec_dot_at::<F, NX, NW>(
                            x,
                            x_row,
                            bq,
                            bs,
                            row,
                            srow,
                            v + u * cube_dim,
                            g,
                            acc,
                            ss,
                            format,
                            convert,
                            norm,
                            false,
                        );
                    }
                    acc[rows + r] += t;
                }
            }
            v += comptime!(unroll * cube_dim);
        }
        while v < nvec {
            #[unroll]
            for r in 0..rows {
                let n = if n0 + r < n_rows { n0 + r } else { n_rows - 1 };
                let (row, srow) = (n * nvec, scale_off + n * spr);
                let s = vec_dot_at::<F, NX, NW>(
                    x,
                    x_row,
                    aq,
                    as_,
                    row,
                    srow,
                    v,
                    g,
                    acc,
                    ss,
                    format,
                    convert,
                    norm,
                    comptime!(r == 0),
                );
                acc[r] += s;
                if two {
                    let t = vec_dot_at::<F, NX, NW>(
                        x, x_row, bq, bs, row, srow, v, g, acc, ss, format, convert, norm, false,
                    );
                    acc[rows + r] += t;
                }
            }
            v += cube_dim;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn vec_matvec_kernel<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    wq: &Array<Vector<u32, NW>>,
    ws: &Array<u32>,
    gw: &Array<Vector<F, NX>>,
    res: &Array<F>,
    out: &mut Array<F>,
    gn: &Array<F>,
    hg: &mut Array<F>,
    ssa: &mut Array<Atomic<f32>>,
    n_rows: u32,
    m_rows: u32,
    k: u32,
    scale_off: u32,
    eps: f32,
    ss_at: u32,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] norm: bool,
    #[comptime] residual: bool,
    #[comptime] carried: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cube c: rows n0 .. n0 + rows of output row m
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * m_rows as usize {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let m = c / groups;
    let kk = k as usize;
    let sums = comptime!(rows + norm as usize);
    let mut acc = zeros(sums);
    vec_rows_dot::<F, NX, NW>(
        x,
        m * kk / 4,
        wq,
        ws,
        wq,
        ws,
        n0,
        nr,
        kk,
        scale_off as usize,
        gw,
        &mut acc,
        format,
        cube_dim,
        rows,
        unroll,
        false,
        convert,
        norm,
    );
    let mut shared = SharedMemory::<f32>::new(sums * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, sums, use_plane, single_plane);
    if UNIT_POS == 0 {
        let scale = norm_scale(&acc, rows, k, eps, norm);
        write_rows::<F>(
            &acc,
            scale,
            res,
            out,
            gn,
            hg,
            ssa,
            m * nr,
            n0,
            nr,
            ss_at as usize + m,
            rows,
            residual,
            carried,
        );
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn vec_matvec3_kernel<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    wq0: &Array<Vector<u32, NW>>,
    ws0: &Array<u32>,
    wq1: &Array<Vector<u32, NW>>,
    ws1: &Array<u32>,
    wq2: &Array<Vector<u32, NW>>,
    ws2: &Array<u32>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    n0: u32,
    n1: u32,
    n2: u32,
    m_rows: u32,
    k: u32,
    so0: u32,
    so1: u32,
    so2: u32,
    gw: &Array<Vector<F, NX>>,
    eps: f32,
    ssr: &Array<f32>,
    ss_at: u32,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] norm: bool,
    #[comptime] carried: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cubes: m-major over the three matrices' row groups [g0 | g1 | g2]
    let c = CUBE_POS;
    let (a0, a1, a2) = (n0 as usize, n1 as usize, n2 as usize);
    let (g0, g1) = (a0.div_ceil(rows), a1.div_ceil(rows));
    let gt = g0 + g1 + a2.div_ceil(rows);
    if c >= gt * m_rows as usize {
        terminate!();
    }
    let g = c % gt;
    let m = c / gt;
    let kk = k as usize;
    let xr = m * kk / 4;
    let sums = comptime!(rows + norm as usize);
    let mut acc = zeros(sums);
    if g < g0 {
        vec_rows_dot::<F, NX, NW>(
            x,
            xr,
            wq0,
            ws0,
            wq0,
            ws0,
            g * rows,
            a0,
            kk,
            so0 as usize,
            gw,
            &mut acc,
            format,
            cube_dim,
            rows,
            unroll,
            false,
            convert,
            norm,
        );
    } else if g < g0 + g1 {
        vec_rows_dot::<F, NX, NW>(
            x,
            xr,
            wq1,
            ws1,
            wq1,
            ws1,
            (g - g0) * rows,
            a1,
            kk,
            so1 as usize,
            gw,
            &mut acc,
            format,
            cube_dim,
            rows,
            unroll,
            false,
            convert,
            norm,
        );
    } else {
        vec_rows_dot::<F, NX, NW>(
            x,
            xr,
            wq2,
            ws2,
            wq2,
            ws2,
            (g - g0 - g1) * rows,
            a2,
            kk,
            so2 as usize,
            gw,
            &mut acc,
            format,
            cube_dim,
            rows,
            unroll,
            false,
            convert,
            norm,
        );
    }
    let mut shared = SharedMemory::<f32>::new(sums * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, sums, use_plane, single_plane);
    if UNIT_POS == 0 {
        let scale = input_scale(&acc, rows, k, eps, norm, ssr, ss_at as usize + m, carried);
        #[unroll]
        for r in 0..rows {
            if g < g0 {
                let n = g * rows + r;
                if n < a0 {
                    out0[m * a0 + n] = F::cast_from(acc[r] * scale);
                }
            } else if g < g0 + g1 {
                let n = (g - g0) * rows + r;
                if n < a1 {
                    out1[m * a1 + n] = F::cast_from(acc[r] * scale);
                }
            } else {
                let n = (g - g0 - g1) * rows + r;
                if n < a2 {
                    out2[m * a2 + n] = F::cast_from(acc[r] * scale);
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn vec_matvec_silu_kernel<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    wqg: &Array<Vector<u32, NW>>,
    wsg: &Array<u32>,
    wqu: &Array<Vector<u32, NW>>,
    wsu: &Array<u32>,
    out: &mut Array<F>,
    n_rows: u32,
    m_rows: u32,
    k: u32,
    so: u32,
    gw: &Array<Vector<F, NX>>,
    eps: f32,
    ssr: &Array<f32>,
    ss_at: u32,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] norm: bool,
    #[comptime] carried: bool,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * m_rows as usize {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let m = c / groups;
    let kk = k as usize;
    // gate rows in acc[0..rows], up rows in acc[rows..2·rows]
    let sums = comptime!(2 * rows + norm as usize);
    let mut acc = zeros(sums);
    vec_rows_dot::<F, NX, NW>(
        x,
        m * kk / 4,
        wqg,
        wsg,
        wqu,
        wsu,
        n0,
        nr,
        kk,
        so as usize,
        gw,
        &mut acc,
        format,
        cube_dim,
        rows,
        unroll,
        true,
        convert,
        norm,
    );
    let mut shared = SharedMemory::<f32>::new(sums * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, sums, use_plane, single_plane);
    if UNIT_POS == 0 {
        let scale = input_scale(
            &acc,
            comptime!(2 * rows),
            k,
            eps,
            norm,
            ssr,
            ss_at as usize + m,
            carried,
        );
        #[unroll]
        for r in 0..rows {
            if n0 + r < nr {
                // both products rounded to F first, as the separate matvecs would leave them
                let g = f32::cast_from(F::cast_from(acc[r] * scale));
                let u = f32::cast_from(F::cast_from(acc[rows + r] * scale));
                out[m * nr + n0 + r] = F::cast_from(g / (1.0f32 + f32::exp(0.0f32 - g)) * u);
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn packed_matvec_kernel<F: Float>(
    x: &Array<F>,
    w: &Array<u32>,
    out: &mut Array<F>,
    n_rows: u32,
    m_rows: u32,
    chunks: u32,
    #[comptime] format: u32,
    #[comptime] words_per_block: usize,
    #[comptime] chunks_per_block: usize,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS;
    let nr = n_rows as usize;
    if c >= nr * m_rows as usize {
        terminate!();
    }
    let n = c % nr;
    let m = c / nr;
    let nc = chunks as usize;
    let x_row = m * nc * 32;
    let acc = partial_row_dot::<F>(x, x_row, w, n, nc, format, words_per_block, chunks_per_block, cube_dim);
    let mut shared = SharedMemory::<f32>::new(cube_dim);
    let total = cube_sum(acc, &mut shared, use_plane);
    if UNIT_POS == 0 {
        out[m * nr + n] = F::cast_from(total);
    }
}

/// Value `e` (0..32) of the 32-value chunk `j` (0..8) of the K-quant super-block at word `wb`
/// of `w`, dequantized to f32.
#[cube]
fn chunk_value(w: &Array<u32>, wb: usize, j: usize, e: usize, #[comptime] format: u32) -> f32 {
    let shift = u32::cast_from(e % 4) * 8u32;
    if comptime!(format == FMT_Q4_K) {
        let (sc, m) = q4_k_scale_min(w, wb + 2, j);
        let word = w[wb + 5 + (j / 2) * 8 + e / 4] >> (u32::cast_from(j % 2) * 4u32);
        let q = f32::cast_from((word >> shift) & 0xFu32);
        f32::reinterpret(w[wb]) * sc * q - f32::reinterpret(w[wb + 1]) * m
    } else {
        let g = j / 4;
        let sub = j % 4;
        let t = e / 4;
        let lw = w[wb + 1 + g * 16 + (sub % 2) * 8 + t] >> (u32::cast_from(sub / 2) * 4u32);
        let hw = w[wb + 33 + g * 8 + t] >> (u32::cast_from(sub) * 2u32);
        let lo = (lw >> shift) & 0xFu32;
        let hi = (hw >> shift) & 3u32;
        let q = f32::cast_from(lo | (hi << 4u32)) - 32.0f32;
        let sw = w[wb + 49 + j / 2] >> (u32::cast_from(j % 2) * 16u32);
        let sbyte = if t < 4 { sw & 0xFFu32 } else { (sw >> 8u32) & 0xFFu32 };
        f32::reinterpret(w[wb]) * i8_value(sbyte) * q
    }
}

/// This unit's share of the dot product of row `n` of a K-quant `w` with the `x` row at
/// `x_row`. The cube's units form groups of 32: unit `32·g + e` takes value `e` of the chunks
/// `g, g + G, ...` (`G = cube_dim / 32` groups), so that the 32 units of a warp read 32
/// consecutive `x` values and one chunk's consecutive weight words at each step.
#[cube]
#[allow(clippy::too_many_arguments)]
fn partial_row_dot<F: Float>(
    x: &Array<F>,
    x_row: usize,
    w: &Array<u32>,
    n: usize,
    nc: usize,
    #[comptime] format: u32,
    #[comptime] words_per_block: usize,
    #[comptime] chunks_per_block: usize,
    #[comptime] cube_dim: usize,
) -> f32 {
    let row = n * (nc / chunks_per_block) * words_per_block;
    let e = UNIT_POS as usize % 32;
    let mut acc = 0.0f32;
    let mut b = UNIT_POS as usize / 32;
    while b < nc {
        let wb = row + (b / chunks_per_block) * words_per_block;
        acc += chunk_value(w, wb, b % chunks_per_block, e, format) * f32::cast_from(x[x_row + b * 32 + e]);
        b += comptime!(cube_dim / 32);
    }
    acc
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn packed_matvec3_kernel<F: Float>(
    x: &Array<F>,
    w0: &Array<u32>,
    w1: &Array<u32>,
    w2: &Array<u32>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    n0: u32,
    n1: u32,
    n2: u32,
    m_rows: u32,
    chunks: u32,
    #[comptime] format: u32,
    #[comptime] words_per_block: usize,
    #[comptime] chunks_per_block: usize,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cubes: m-major over the concatenated outputs [n0 | n1 | n2]
    let c = CUBE_POS;
    let (a0, a1, a2) = (n0 as usize, n1 as usize, n2 as usize);
    let nt = a0 + a1 + a2;
    if c >= nt * m_rows as usize {
        terminate!();
    }
    let j = c % nt;
    let m = c / nt;
    let nc = chunks as usize;
    let x_row = m * nc * 32;
    let acc = if j < a0 {
        partial_row_dot::<F>(x, x_row, w0, j, nc, format, words_per_block, chunks_per_block, cube_dim)
    } else if j < a0 + a1 {
        partial_row_dot::<F>(
            x,
            x_row,
            w1,
            j - a0,
            nc,
            format,
            words_per_block,
            chunks_per_block,
            cube_dim,
        )
    } else {
        partial_row_dot::<F>(
            x,
            x_row,
            w2,
            j - a0 - a1,
            nc,
            format,
            words_per_block,
            chunks_per_block,
            cube_dim,
        )
    };
    let mut shared = SharedMemory::<f32>::new(cube_dim);
    let total = cube_sum(acc, &mut shared, use_plane);
    if UNIT_POS == 0 {
        if j < a0 {
            out0[m * a0 + j] = F::cast_from(total);
        } else if j < a0 + a1 {
            out1[m * a1 + j - a0] = F::cast_from(total);
        } else {
            out2[m * a2 + j - a0 - a1] = F::cast_from(total);
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn packed_matvec_silu_kernel<F: Float>(
    x: &Array<F>,
    wg: &Array<u32>,
    wu: &Array<u32>,
    out: &mut Array<F>,
    n_rows: u32,
    m_rows: u32,
    chunks: u32,
    #[comptime] format: u32,
    #[comptime] words_per_block: usize,
    #[comptime] chunks_per_block: usize,
    #[comptime] cube_dim: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS;
    let nr = n_rows as usize;
    if c >= nr * m_rows as usize {
        terminate!();
    }
    let n = c % nr;
    let m = c / nr;
    let nc = chunks as usize;
    let x_row = m * nc * 32;
    let g = partial_row_dot::<F>(x, x_row, wg, n, nc, format, words_per_block, chunks_per_block, cube_dim);
    let u = partial_row_dot::<F>(x, x_row, wu, n, nc, format, words_per_block, chunks_per_block, cube_dim);
    let mut shared_g = SharedMemory::<f32>::new(cube_dim);
    let mut shared_u = SharedMemory::<f32>::new(cube_dim);
    // both products rounded to F first, as the separate matvecs would leave them
    let g = f32::cast_from(F::cast_from(cube_sum(g, &mut shared_g, use_plane)));
    let u = f32::cast_from(F::cast_from(cube_sum(u, &mut shared_u, use_plane)));
    if UNIT_POS == 0 {
        out[m * nr + n] = F::cast_from(g / (1.0f32 + f32::exp(0.0f32 - g)) * u);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dequantize_kernel<F: Float>(
    w: &Array<u32>,
    out: &mut Array<F>,
    total_chunks: u32,
    scale_off: u32,
    #[comptime] format: u32,
    #[comptime] words_per_block: usize,
    #[comptime] chunks_per_block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i < total_chunks as usize {
        let wb = (i / chunks_per_block) * words_per_block;
        let j = i % chunks_per_block;
        // out is [N, K] contiguous: chunk i starts at value 32 i
        let ob = i * 32;
        if comptime!(format == FMT_F32) {
            #[unroll]
            for e in 0..32usize {
                out[ob + e] = F::cast_from(f32::reinterpret(w[wb + e]));
            }
        } else if comptime!(format == FMT_Q8_0) {
            // split layout: block i's quants at 8 i, its scale after every quant
            let d = f32::reinterpret(w[scale_off as usize + i]);
            #[unroll]
            for t in 0..8usize {
                let word = w[i * 8 + t];
                #[unroll]
                for b in 0..4usize {
                    let byte = (word >> comptime!((b * 8) as u32)) & 0xFFu32;
                    out[ob + t * 4 + b] = F::cast_from(i8_value(byte) * d);
                }
            }
        } else if comptime!(format == FMT_Q4_0) {
            let d = f32::reinterpret(w[scale_off as usize + i]);
            #[unroll]
            for t in 0..4usize {
                let word = w[i * 4 + t];
                #[unroll]
                for b in 0..4usize {
                    let byte = (word >> comptime!((b * 8) as u32)) & 0xFFu32;
                    out[ob + t * 4 + b] = F::cast_from((f32::cast_from(byte & 0xFu32) - 8.0f32) * d);
                    out[ob + t * 4 + b + 16] = F::cast_from((f32::cast_from(byte >> 4u32) - 8.0f32) * d);
                }
            }
        } else if comptime!(format == FMT_Q4_K) {
            let (sc, m) = q4_k_scale_min(w, wb + 2, j);
            let dl = f32::reinterpret(w[wb]) * sc;
            let ml = f32::reinterpret(w[wb + 1]) * m;
            let qb = wb + 5 + (j / 2) * 8;
            let shift = u32::cast_from(j % 2) * 4u32;
            #[unroll]
            for t in 0..8usize {
                let word = w[qb + t] >> shift;
                #[unroll]
                for b in 0..4usize {
                    let q = f32::cast_from((word >> comptime!((b * 8) as u32)) & 0xFu32);
                    out[ob + t * 4 + b] = F::cast_from(dl * q - ml);
                }
            }
        } else {
            let g = j / 4;
            let sub = j % 4;
            let lb = wb + 1 + g * 16 + (sub % 2) * 8;
            let hb = wb + 33 + g * 8;
            let lshift = u32::cast_from(sub / 2) * 4u32;
            let hshift = u32::cast_from(sub) * 2u32;
            let d = f32::reinterpret(w[wb]);
            let sw = w[wb + 49 + j / 2] >> (u32::cast_from(j % 2) * 16u32);
            let d0 = d * i8_value(sw & 0xFFu32);
            let d1 = d * i8_value((sw >> 8u32) & 0xFFu32);
            #[unroll]
            for t in 0..8usize {
                let lw = w[lb + t] >> lshift;
                let hw = w[hb + t] >> hshift;
                #[unroll]
                for b in 0..4usize {
                    let lo = (lw >> comptime!((b * 8) as u32)) & 0xFu32;
                    let hi = (hw >> comptime!((b * 8) as u32)) & 3u32;
                    let q = f32::cast_from(lo | (hi << 4u32)) - 32.0f32;
                    if comptime!(t < 4) {
                        out[ob + t * 4 + b] = F::cast_from(d0 * q);
                    } else {
                        out[ob + t * 4 + b] = F::cast_from(d1 * q);
                    }
                }
            }
        }
    }
}

/// The device words of a packed matrix, checked against its shape.
pub(crate) fn words<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
) -> Result<CubeTensor<R>, BackendError> {
    let bad = |reason: String| BackendError::PackedShape {
        format: w.format(),
        reason,
    };
    let PackedStorage::Words(t) = w.storage() else {
        return Err(bad("not stored as device blocks (made by the fallback upload)".into()));
    };
    let block = w.format().block_len();
    let expected = w.format().matrix_words(w.rows(), w.cols());
    if w.rows() == 0 || !w.cols().is_multiple_of(block) || w.cols() == 0 || t.dims() != [expected] {
        return Err(bad(format!(
            "{:?} words for a [{}, {}] matrix (expected {expected})",
            t.dims(),
            w.rows(),
            w.cols()
        )));
    }
    let t = t.clone().into_primitive();
    if t.dtype.size() != 4 {
        return Err(bad(format!("device words are {:?}, not 32-bit", t.dtype)));
    }
    Ok(t)
}

/// The tensor-core launch for a Q8_0 product without a fold, when the process's shape asks
/// for it and the device and operands allow it.
fn mma_launch<R: CubeRuntime>(
    client: &cubecl::client::ComputeClient<R>,
    format: PackedFormat,
    fold: &Fold<R>,
    m: usize,
    k: usize,
) -> Option<MmaLaunch> {
    if format != PackedFormat::Q8_0 || fold.any() {
        return None;
    }
    MmaLaunch::new(client, matvec_shape(Some(format)), m, k)
}

/// `Ok` when `fold` is empty, or when the kernel taking it (`vector`: a vector-format matvec
/// that folds it) can take its operands for `x: [m, k]` and outputs of width `n`.
#[allow(clippy::too_many_arguments)]
fn fold_supported<R: CubeRuntime>(
    op: &'static str,
    fold: &Fold<R>,
    vector: bool,
    dtype: DType,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(), BackendError> {
    if !fold.any() {
        return Ok(());
    }
    if vector && fold.fits(dtype, m, k, n) {
        return Ok(());
    }
    Err(BackendError::ShapeMismatch {
        op,
        reason: "no kernel folds this norm, residual or norm sums (format or operand layout)".into(),
    })
}

fn check_x<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
) -> Result<(), BackendError> {
    w.check_input(x.dims())?;
    if !kernel_float(x.dtype()) {
        return Err(BackendError::ShapeMismatch {
            op: "packed_matmul",
            reason: format!("x has dtype {:?}", x.dtype()),
        });
    }
    Ok(())
}

/// `x · Wᵀ` for `x: [M, K]` and device-packed `W: [N, K]` with the fused matrix × vector
/// kernel (one cube per output, dequantization in registers, f32 accumulation). Meant for small
/// `M` (decode); each row of `x` reads the whole weight.
///
/// Errors: [`BackendError::ShapeMismatch`] for a wrong `x` width or a non-float `x`,
/// [`BackendError::PackedShape`] for a matrix not stored as device blocks.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{HearthBackend, PackedFormat, Wgpu, cube};
/// let dev = Default::default();
/// let mut block = vec![0u8; 34]; // Q8_0: d = 1, q = [1, 0, 0, ...]
/// block[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
/// block[2] = 1;
/// let w = Wgpu::upload_packed(PackedFormat::Q8_0, &block, 1, 32, &dev).unwrap();
/// let x = Tensor::<Wgpu, 2>::ones([1, 32], &dev);
/// let y = cube::packed_matvec(x, &w).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1.0]);
/// # }
/// ```
pub fn packed_matvec<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    packed_matvec_fold(x, w, &Fold::none())
}

pub(crate) fn packed_matvec_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
    fold: &Fold<R>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    check_x(&x, w)?;
    let words = words(w)?;
    let [m, k] = x.dims();
    let n = w.rows();
    let x = into_contiguous(prim(x));
    let client = x.client.clone();
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    if m == 0 {
        return Ok(wrap(out));
    }
    let format = w.format();
    fold_supported(
        "packed_matvec",
        fold,
        vector_format(format) && fold.sums_in.is_none(),
        dtype,
        m,
        k,
        n,
    )?;
    let (g, eps) = (fold.norm_arg(&x).0.clone(), fold.eps());
    let (gn, hg, ssa, ss_at) = fold.sums_out_args(&out);
    let use_plane = plane_reductions(&client);
    if let Some(l) = mma_launch(&client, format, fold, m, k) {
        let so = scale_offset(format, n, k);
        l.launch(
            x,
            [words.clone(), words.clone(), words],
            [&out; 3],
            [n; 3],
            [so; 3],
            m,
            k,
            MMA_ONE,
        );
        return Ok(wrap(out));
    }
    let cube_count = calculate_cube_count_elemwise(&client, m * n, CubeDim::new_1d(1));
    if vector_format(format) {
        let l = VecLaunch::new(&client, format, k);
        let cube_count = calculate_cube_count_elemwise(&client, m * l.cubes(n), CubeDim::new_1d(1));
        // SAFETY: the kernel only indexes within the extents validated above (x is [m, k]
        // contiguous, k a multiple of 32; the words hold n rows of the format, scales after
        // the quants at `scale_offset`; out is [m, n] contiguous; rows past n are clamped to
        // the last row and not written); cubes past the work return.
        unsafe {
            vec_matvec_kernel::launch_unchecked::<R>(
                &client,
                cube_count,
                CubeDim::new_1d(l.units),
                4,
                4,
                x.into_array_arg(),
                words.clone().into_array_arg(),
                words.into_array_arg(),
                g.clone().into_array_arg(),
                fold.residual_arg(&out).clone().into_array_arg(),
                out.clone().into_array_arg(),
                gn.clone().into_array_arg(),
                hg.clone().into_array_arg(),
                ssa.clone().into_array_arg(),
                n as u32,
                m as u32,
                k as u32,
                scale_offset(format, n, k) as u32,
                eps,
                ss_at,
                format_id(format),
                l.units as usize,
                l.shape.rows,
                l.shape.unroll,
                l.shape.convert,
                l.use_plane,
                l.single_plane,
                fold.norm.is_some(),
                fold.residual.is_some(),
                fold.sums_out.is_some(),
                dtype.into(),
            );
        }
        return Ok(wrap(out));
    }
    let chunks = k / PACKED_BLOCK;
    let cube_dim = reduction_cube_dim(&client, chunks * 32);
    // SAFETY: the kernel only indexes within the extents validated above (shapes and word
    // counts of its arguments, all contiguous); units past the work return early.
    unsafe {
        packed_matvec_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(cube_dim),
            x.into_array_arg(),
            words.into_array_arg(),
            out.clone().into_array_arg(),
            n as u32,
            m as u32,
            chunks as u32,
            format_id(format),
            format.words_per_block(),
            chunks_per_block(format),
            cube_dim as usize,
            use_plane,
            dtype.into(),
        );
    }
    Ok(wrap(out))
}

/// Dequantizes a device-packed `[N, K]` matrix to a dense `[N, K]` tensor of `dtype` on the
/// device (one unit per 32-value chunk).
///
/// Errors: [`BackendError::PackedShape`] for a matrix not stored as device blocks or a
/// non-float `dtype`.
pub fn dequantize_packed<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
    dtype: DType,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    let words = words(w)?;
    if !kernel_float(dtype) {
        return Err(BackendError::PackedShape {
            format: w.format(),
            reason: format!("cannot dequantize to {dtype:?}"),
        });
    }
    let (n, k) = (w.rows(), w.cols());
    let client = words.client.clone();
    let out = empty_device_contiguous_dtype(client.clone(), words.device.clone(), Shape::new([n, k]), dtype);
    let chunks = k / PACKED_BLOCK;
    let total = n * chunks;
    let cube_dim = CubeDim::new(&client, total);
    let cube_count = calculate_cube_count_elemwise(&client, total, cube_dim);
    // SAFETY: the kernel only indexes within the extents validated above (shapes, strides
    // and word counts of its arguments); units past the work return early.
    unsafe {
        dequantize_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            words.into_array_arg(),
            out.clone().into_array_arg(),
            total as u32,
            scale_offset(w.format(), n, k) as u32,
            format_id(w.format()),
            w.format().words_per_block(),
            chunks_per_block(w.format()),
            dtype.into(),
        );
    }
    Ok(wrap(out))
}

/// `x · Wᵀ` for device-packed `W`: the fused [`packed_matvec`] for up to
/// [`MATVEC_MAX_ROWS`] rows of `x`, else [`dequantize_packed`] + [`matmul_f32`].
///
/// Errors: as [`packed_matvec`].
pub fn packed_matmul<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: &PackedMatrix<CubeBackend<R, F, I, BT>>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    check_x(&x, w)?;
    if x.dims()[0] <= MATVEC_MAX_ROWS {
        return packed_matvec(x, w);
    }
    let dense = dequantize_packed(w, x.dtype())?;
    matmul_f32(x, dense.transpose())
}

/// Whether `ws` are all device blocks of one format (the fused multi-matrix kernels' input).
fn same_format<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    ws: &[&PackedMatrix<CubeBackend<R, F, I, BT>>],
) -> bool {
    ws.iter().all(|w| {
        w.format() == ws[0].format() && w.cols() == ws[0].cols() && matches!(w.storage(), PackedStorage::Words(_))
    })
}

/// `[x · W₀ᵀ, x · W₁ᵀ, x · W₂ᵀ]` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and three
/// device-packed matrices of one format and width `K` (e.g. q/k/v projections), in one launch
/// of the matvec kernel: one cube per output element of the three, as [`packed_matvec`].
///
/// Errors: [`BackendError::ShapeMismatch`] for a wrong `x` or more than
/// [`MATVEC_MAX_ROWS`] rows, [`BackendError::PackedShape`] when the matrices are not device
/// blocks of one format and width.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{HearthBackend, PackedFormat, Wgpu, cube};
/// let dev = Default::default();
/// let bytes: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
/// let w = Wgpu::upload_packed(PackedFormat::F32, &bytes, 2, 32, &dev).unwrap();
/// let [a, _, _] = cube::packed_matvec3(Tensor::ones([1, 32], &dev), [&w, &w, &w]).unwrap();
/// assert_eq!(a.into_data().to_vec::<f32>().unwrap(), vec![496.0, 1520.0]);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn packed_matvec3<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: [&PackedMatrix<CubeBackend<R, F, I, BT>>; 3],
) -> Result<[BTensor<CubeBackend<R, F, I, BT>, 2>; 3], BackendError> {
    packed_matvec3_fold(x, w, &Fold::none())
}

#[allow(clippy::type_complexity)]
pub(crate) fn packed_matvec3_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    w: [&PackedMatrix<CubeBackend<R, F, I, BT>>; 3],
    fold: &Fold<R>,
) -> Result<[BTensor<CubeBackend<R, F, I, BT>, 2>; 3], BackendError> {
    for wi in w {
        check_x(&x, wi)?;
    }
    let [m, k] = x.dims();
    if m > MATVEC_MAX_ROWS {
        return Err(BackendError::ShapeMismatch {
            op: "packed_matvec3",
            reason: format!("{m} rows (at most {MATVEC_MAX_ROWS})"),
        });
    }
    if !same_format(&w) {
        return Err(BackendError::PackedShape {
            format: w[0].format(),
            reason: "the three matrices must be device blocks of one format".into(),
        });
    }
    let words = [words(w[0])?, words(w[1])?, words(w[2])?];
    let x = into_contiguous(prim(x));
    let client = x.client.clone();
    let use_plane = plane_reductions(&client);
    let dtype = x.dtype;
    let outs =
        w.map(|wi| empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([m, wi.rows()]), dtype));
    if m == 0 {
        return Ok(outs.map(wrap));
    }
    let nt = w[0].rows() + w[1].rows() + w[2].rows();
    let [w0, w1, w2] = words;
    let format = w[0].format();
    fold_supported(
        "packed_matvec3",
        fold,
        vector_format(format) && fold.residual.is_none() && fold.sums_out.is_none(),
        dtype,
        m,
        k,
        0,
    )?;
    let (g, eps) = (fold.norm_arg(&x).0.clone(), fold.eps());
    let (ssr, ss_at) = fold.sums_in_arg(&x);
    let (ssr, ss_at) = (ssr.clone(), ss_at);
    if let Some(l) = mma_launch(&client, format, fold, m, k) {
        let ns = [w[0].rows(), w[1].rows(), w[2].rows()];
        let so = [0, 1, 2].map(|i| scale_offset(format, ns[i], k));
        l.launch(x, [w0, w1, w2], [&outs[0], &outs[1], &outs[2]], ns, so, m, k, MMA_THREE);
        return Ok(outs.map(wrap));
    }
    let cube_count = calculate_cube_count_elemwise(&client, m * nt, CubeDim::new_1d(1));
    if vector_format(format) {
        let l = VecLaunch::new(&client, format, k);
        let groups: usize = w.iter().map(|wi| l.cubes(wi.rows())).sum();
        let cube_count = calculate_cube_count_elemwise(&client, m * groups, CubeDim::new_1d(1));
        let so = |i: usize| scale_offset(format, w[i].rows(), k) as u32;
        // SAFETY: as in `packed_matvec`, for each of the three matrices and outputs.
        unsafe {
            vec_matvec3_kernel::launch_unchecked::<R>(
                &client,
                cube_count,
                CubeDim::new_1d(l.units),
                4,
                4,
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
                w[0].rows() as u32,
                w[1].rows() as u32,
                w[2].rows() as u32,
                m as u32,
                k as u32,
                so(0),
                so(1),
                so(2),
                g.clone().into_array_arg(),
                eps,
                ssr.into_array_arg(),
                ss_at,
                format_id(format),
                l.units as usize,
                l.shape.rows,
                l.shape.unroll,
                l.shape.convert,
                l.use_plane,
                l.single_plane,
                fold.norm.is_some(),
                fold.sums_in.is_some(),
                dtype.into(),
            );
        }
        return Ok(outs.map(wrap));
    }
    let chunks = k / PACKED_BLOCK;
    let cube_dim = reduction_cube_dim(&client, chunks * 32);
    // SAFETY: the kernel only indexes within the extents validated above (shapes and word
    // counts of its arguments, all contiguous); units past the work return early.
    unsafe {
        packed_matvec3_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(cube_dim),
            x.into_array_arg(),
            w0.into_array_arg(),
            w1.into_array_arg(),
            w2.into_array_arg(),
            outs[0].clone().into_array_arg(),
            outs[1].clone().into_array_arg(),
            outs[2].clone().into_array_arg(),
            w[0].rows() as u32,
            w[1].rows() as u32,
            w[2].rows() as u32,
            m as u32,
            chunks as u32,
            format_id(format),
            format.words_per_block(),
            chunks_per_block(format),
            cube_dim as usize,
            use_plane,
            dtype.into(),
        );
    }
    Ok(outs.map(wrap))
}

/// `silu(x · Gᵀ) · (x · Uᵀ)` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and device-packed
/// `G, U: [N, K]` of one format, in one launch: each cube computes both dot products of its
/// output (f32, each rounded to the float dtype as the separate products would be) and the
/// gate.
///
/// Errors: as [`packed_matvec3`], and [`BackendError::ShapeMismatch`] when `G` and `U`
/// differ in shape.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{HearthBackend, PackedFormat, Wgpu, cube};
/// let dev = Default::default();
/// let bytes: Vec<u8> = (0..32).flat_map(|_| 1f32.to_le_bytes()).collect();
/// let w = Wgpu::upload_packed(PackedFormat::F32, &bytes, 1, 32, &dev).unwrap();
/// let y = cube::packed_matvec_silu(Tensor::zeros([1, 32], &dev), &w, &w).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0]);
/// # }
/// ```
pub fn packed_matvec_silu<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    gate: &PackedMatrix<CubeBackend<R, F, I, BT>>,
    up: &PackedMatrix<CubeBackend<R, F, I, BT>>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    packed_matvec_silu_fold(x, gate, up, &Fold::none())
}

pub(crate) fn packed_matvec_silu_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<CubeBackend<R, F, I, BT>, 2>,
    gate: &PackedMatrix<CubeBackend<R, F, I, BT>>,
    up: &PackedMatrix<CubeBackend<R, F, I, BT>>,
    fold: &Fold<R>,
) -> Result<BTensor<CubeBackend<R, F, I, BT>, 2>, BackendError> {
    check_x(&x, gate)?;
    check_x(&x, up)?;
    let [m, k] = x.dims();
    if m > MATVEC_MAX_ROWS || gate.rows() != up.rows() {
        return Err(BackendError::ShapeMismatch {
            op: "packed_matvec_silu",
            reason: format!(
                "{m} rows (at most {MATVEC_MAX_ROWS}), gate {} and up {} outputs",
                gate.rows(),
                up.rows()
            ),
        });
    }
    if !same_format(&[gate, up]) {
        return Err(BackendError::PackedShape {
            format: gate.format(),
            reason: "gate and up must be device blocks of one format".into(),
        });
    }
    let (wg, wu) = (words(gate)?, words(up)?);
    let n = gate.rows();
    let x = into_contiguous(prim(x));
    let client = x.client.clone();
    let use_plane = plane_reductions(&client);
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
    if m == 0 {
        return Ok(wrap(out));
    }
    let format = gate.format();
    fold_supported(
        "packed_matvec_silu",
        fold,
        vector_format(format) && fold.residual.is_none() && fold.sums_out.is_none(),
        dtype,
        m,
        k,
        0,
    )?;
    let (g, eps) = (fold.norm_arg(&x).0.clone(), fold.eps());
    let (ssr, ss_at) = fold.sums_in_arg(&x);
    let (ssr, ss_at) = (ssr.clone(), ss_at);
    if let Some(l) = mma_launch(&client, format, fold, m, k) {
        let so = scale_offset(format, n, k);
        l.launch(x, [wg.clone(), wu, wg], [&out; 3], [n; 3], [so; 3], m, k, MMA_SILU);
        return Ok(wrap(out));
    }
    let cube_count = calculate_cube_count_elemwise(&client, m * n, CubeDim::new_1d(1));
    if vector_format(format) {
        let l = VecLaunch::new(&client, format, k);
        let cube_count = calculate_cube_count_elemwise(&client, m * l.cubes(n), CubeDim::new_1d(1));
        // SAFETY: as in `packed_matvec`, for both matrices (same shape, checked above).
        unsafe {
            vec_matvec_silu_kernel::launch_unchecked::<R>(
                &client,
                cube_count,
                CubeDim::new_1d(l.units),
                4,
                4,
                x.into_array_arg(),
                wg.clone().into_array_arg(),
                wg.into_array_arg(),
                wu.clone().into_array_arg(),
                wu.into_array_arg(),
                out.clone().into_array_arg(),
                n as u32,
                m as u32,
                k as u32,
                scale_offset(format, n, k) as u32,
                g.clone().into_array_arg(),
                eps,
                ssr.into_array_arg(),
                ss_at,
                format_id(format),
                l.units as usize,
                l.shape.rows,
                l.shape.unroll,
                l.shape.convert,
                l.use_plane,
                l.single_plane,
                fold.norm.is_some(),
                fold.sums_in.is_some(),
                dtype.into(),
            );
        }
        return Ok(wrap(out));
    }
    let chunks = k / PACKED_BLOCK;
    let cube_dim = reduction_cube_dim(&client, chunks * 32);
    // SAFETY: the kernel only indexes within the extents validated above (shapes and word
    // counts of its arguments, all contiguous); units past the work return early.
    unsafe {
        packed_matvec_silu_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(cube_dim),
            x.into_array_arg(),
            wg.into_array_arg(),
            wu.into_array_arg(),
            out.clone().into_array_arg(),
            n as u32,
            m as u32,
            chunks as u32,
            format_id(format),
            format.words_per_block(),
            chunks_per_block(format),
            cube_dim as usize,
            use_plane,
            dtype.into(),
        );
    }
    Ok(wrap(out))
}
