//! Full-f32 matmul on cubecl backends through cubek's register/plane-vector strategies.
//!
//! burn's own `float_matmul` launches `cubek::matmul::launch::Strategy::Auto`, which tries a
//! tensor-core (CMMA) kernel first; on CUDA its f32 operands are then staged as TF32 (10-bit
//! mantissa). The strategies used here never call cubek's `adjust_dtypes`, so f32 stays f32.

use super::mma::{MMA_ONE, MMA_SILU, MMA_THREE, MmaLaunch, dense_mma_launch};
use super::reduce::{cube_sum_rows, zeros};
use super::{MATVEC_MAX_ROWS, kernel_float, matvec_shape, matvec_units, plane_reductions, prim, single_plane, wrap};
use crate::BackendError;
use burn::tensor::{DType, Tensor};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, tensor::CubeTensor};
use burn_cubecl::{
    kernel::matmul::init_matmul_output,
    ops::numeric::{empty_device_contiguous_dtype, empty_device_dtype},
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};
use cubek::matmul::{
    definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError},
    launch::{Strategy, launch_ref},
    routines::{
        BlueprintStrategy, TileSizeSelection, double_unit::DoubleUnitSelectionArgs,
        simple_unit::SimpleUnitSelectionArgs,
    },
};
use cubek::std::InputBinding;
use std::sync::OnceLock;

/// This unit's shares of the dot products of `rows` consecutive rows `n0, n0 + 1, ...` of the
/// row-major weight `a` (and, with `two`, of the same rows of `b`) with the `x` row at vector
/// `xr` (rows of `nv` vectors, `wp` vectors apart in the weights), added to `acc[r]` (and `acc[rows + r]`). Units take the rows'
/// vectors `UNIT_POS, UNIT_POS + cube_dim, ...`, `unroll` per row per pass; each load of `x`
/// serves every row. Rows at or past `nr` repeat the last row (their sums are not written).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_rows_dot<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    xr: usize,
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    n0: usize,
    nr: usize,
    nv: usize,
    wp: usize,
    gw: &Array<Vector<F, N>>,
    acc: &mut Array<f32>,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] two: bool,
    #[comptime] norm: bool,
) {
    // with `norm`: x is the raw residual stream; each value is scaled by the norm weight `gw`
    // and its square summed into acc[ss] (once per value, on the first row)
    let ss = comptime!(if two { 2 * rows } else { rows });
    let mut sq = Vector::<f32, N>::zeroed();
    let mut v = UNIT_POS as usize;
    // Every pass is a whole unrolled one: a vector past the row's end reads the row's last
    // (a valid address) against a zero `x`, so rows whose length is not a multiple of
    // `unroll · cube_dim` keep `unroll` loads per row in flight to the end.
    while v < nv {
        #[unroll]
        for r in 0..rows {
            let wr = (if n0 + r < nr { n0 + r } else { nr - 1 }) * wp;
            let mut s = Vector::<f32, N>::zeroed();
            let mut t = Vector::<f32, N>::zeroed();
            #[unroll]
            for u in 0..unroll {
                let vu = v + u * cube_dim;
                let vc = min(vu, nv - 1);
                let live = Vector::<f32, N>::new(select(vu < nv, 1.0f32, 0.0f32));
                let x0 = Vector::<f32, N>::cast_from(x[xr + vc]) * live;
                let xv = if comptime!(norm) {
                    x0 * Vector::<f32, N>::cast_from(gw[vc])
                } else {
                    x0
                };
                if comptime!(norm && r == 0) {
                    sq += x0 * x0;
                }
                s += Vector::<f32, N>::cast_from(a[wr + vc]) * xv;
                if two {
                    t += Vector::<f32, N>::cast_from(b[wr + vc]) * xv;
                }
            }
            acc[r] += f32::cast_from(s.vector_sum());
            if two {
                acc[rows + r] += f32::cast_from(t.vector_sum());
            }
        }
        v += comptime!(unroll * cube_dim);
    }
    if comptime!(norm) {
        acc[ss] += f32::cast_from(sq.vector_sum());
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dense_matvec_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    gw: &Array<Vector<F, N>>,
    res: &Array<F>,
    out: &mut Array<F>,
    gn: &Array<F>,
    hg: &mut Array<F>,
    ssa: &mut Array<Atomic<f32>>,
    n_rows: u32,
    m_rows: u32,
    k: u32,
    xp: u32,
    wp: u32,
    eps: f32,
    ss_at: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] norm: bool,
    #[comptime] residual: bool,
    #[comptime] carried: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cube c: weight rows n0 .. n0 + rows of output row m (row pitches xp, wp in vectors)
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * m_rows as usize {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let m = c / groups;
    let nv = k as usize / w.vector_size();
    let sums = comptime!(rows + norm as usize);
    let mut acc = zeros(sums);
    let (xp, wp) = (xp as usize, wp as usize);
    dense_rows_dot::<F, N>(
        x,
        m * xp,
        w,
        w,
        n0,
        nr,
        nv,
        wp,
        gw,
        &mut acc,
        cube_dim,
        rows,
        unroll,
        false,
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

/// A producer's epilogue (unit 0, after the reduction): `out[base + n0 + r] = acc[r] · scale
/// (+ res)` for the cube's rows below `nr`; with `sums`, also `hg = out ⊙ gn` (the next
/// norm's weight) and the sum of the rounded outputs' squares added to `ssa[ss]`, one atomic
/// addition per cube.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_rows<F: Float>(
    acc: &Array<f32>,
    scale: f32,
    res: &Array<F>,
    out: &mut Array<F>,
    gn: &Array<F>,
    hg: &mut Array<F>,
    ssa: &mut Array<Atomic<f32>>,
    base: usize,
    n0: usize,
    nr: usize,
    ss: usize,
    #[comptime] rows: usize,
    #[comptime] residual: bool,
    #[comptime] sums: bool,
) {
    let mut sq = 0.0f32;
    #[unroll]
    for r in 0..rows {
        if n0 + r < nr {
            let mut y = acc[r] * scale;
            if comptime!(residual) {
                y += f32::cast_from(res[base + n0 + r]);
            }
            let yf = F::cast_from(y);
            out[base + n0 + r] = yf;
            if comptime!(sums) {
                let h = f32::cast_from(yf);
                sq += h * h;
                hg[base + n0 + r] = F::cast_from(h * f32::cast_from(gn[n0 + r]));
            }
        }
    }
    if comptime!(sums) {
        ssa[ss].fetch_add(sq);
    }
}

/// The RMSNorm factor `1 / sqrt(mean(x²) + eps)` of a cube whose reduced sum of squares is
/// `acc[at]` (`k` values), or 1 without `norm`.
#[cube]
pub(crate) fn norm_scale(acc: &Array<f32>, #[comptime] at: usize, k: u32, eps: f32, #[comptime] norm: bool) -> f32 {
    let mut s = 1.0f32;
    if comptime!(norm) {
        s = 1.0f32 / f32::sqrt(acc[at] / f32::cast_from(k) + eps);
    }
    s
}

/// A consumer's RMSNorm factor: from the carried sum of squares `ssr[ss]` with `sums` (its
/// `x` is `h ⊙ g`), else [`norm_scale`].
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_scale(
    acc: &Array<f32>,
    #[comptime] at: usize,
    k: u32,
    eps: f32,
    #[comptime] norm: bool,
    ssr: &Array<f32>,
    ss: usize,
    #[comptime] sums: bool,
) -> f32 {
    let mut s = norm_scale(acc, at, k, eps, norm);
    if comptime!(sums) {
        s = 1.0f32 / f32::sqrt(ssr[ss] / f32::cast_from(k) + eps);
    }
    s
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dense_matvec3_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w0: &Array<Vector<F, N>>,
    w1: &Array<Vector<F, N>>,
    w2: &Array<Vector<F, N>>,
    out0: &mut Array<F>,
    out1: &mut Array<F>,
    out2: &mut Array<F>,
    n0: u32,
    n1: u32,
    n2: u32,
    m_rows: u32,
    k: u32,
    xp: u32,
    wp0: u32,
    wp1: u32,
    wp2: u32,
    gw: &Array<Vector<F, N>>,
    eps: f32,
    ssr: &Array<f32>,
    ss_at: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
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
    let nv = k as usize / w0.vector_size();
    let xr = m * xp as usize;
    let sums = comptime!(rows + norm as usize);
    let mut acc = zeros(sums);
    if g < g0 {
        dense_rows_dot::<F, N>(
            x,
            xr,
            w0,
            w0,
            g * rows,
            a0,
            nv,
            wp0 as usize,
            gw,
            &mut acc,
            cube_dim,
            rows,
            unroll,
            false,
            norm,
        );
    } else if g < g0 + g1 {
        dense_rows_dot::<F, N>(
            x,
            xr,
            w1,
            w1,
            (g - g0) * rows,
            a1,
            nv,
            wp1 as usize,
            gw,
            &mut acc,
            cube_dim,
            rows,
            unroll,
            false,
            norm,
        );
    } else {
        dense_rows_dot::<F, N>(
            x,
            xr,
            w2,
            w2,
            (g - g0 - g1) * rows,
            a2,
            nv,
            wp2 as usize,
            gw,
            &mut acc,
            cube_dim,
            rows,
            unroll,
            false,
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
fn dense_matvec_silu_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    wg: &Array<Vector<F, N>>,
    wu: &Array<Vector<F, N>>,
    out: &mut Array<F>,
    n_rows: u32,
    m_rows: u32,
    k: u32,
    xp: u32,
    wp: u32,
    gw: &Array<Vector<F, N>>,
    eps: f32,
    ssr: &Array<f32>,
    ss_at: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
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
    let nv = k as usize / wg.vector_size();
    // gate rows in acc[0..rows], up rows in acc[rows..2·rows]
    let sums = comptime!(2 * rows + norm as usize);
    let mut acc = zeros(sums);
    let (xp, wp) = (xp as usize, wp as usize);
    dense_rows_dot::<F, N>(
        x,
        m * xp,
        wg,
        wu,
        n0,
        nr,
        nv,
        wp,
        gw,
        &mut acc,
        cube_dim,
        rows,
        unroll,
        true,
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
                // both products rounded to F first, as the separate matmuls would leave them
                let g = f32::cast_from(F::cast_from(acc[r] * scale));
                let u = f32::cast_from(F::cast_from(acc[rows + r] * scale));
                out[m * nr + n0 + r] = F::cast_from(g / (1.0f32 + f32::exp(0.0f32 - g)) * u);
            }
        }
    }
}

/// `(K, N, row pitch)` of a weight stored transposed (a `.transpose()` view of a row-major
/// `[N, K]` whose rows may be padded, as CUDA allocations can be; hearth's loader keeps dense
/// device weights so), or `None` for any other layout.
fn transposed_dims<R: CubeRuntime>(w: &CubeTensor<R>) -> Option<(usize, usize, usize)> {
    let (shape, strides) = (w.meta.shape(), w.meta.strides());
    (shape.len() == 2 && strides[0] == 1 && strides[1] >= shape[0] && shape[1] > 0)
        .then(|| (shape[0], shape[1], strides[1]))
}

/// The launch of a dense matvec over `x: [m, k]` (≤ [`MATVEC_MAX_ROWS`] rows, unit column
/// stride, a kernel float) and transposed weights of width `k` and `x`'s dtype, or `None`
/// when these operands do not fit the kernels.
pub(crate) struct DenseLaunch {
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// Elements per vector: 16 bytes where `k` and every row pitch allow.
    pub(crate) vs: usize,
    /// `x`'s row pitch, in vectors.
    pub(crate) xp: usize,
    pub(crate) units: u32,
    pub(crate) rows: usize,
    pub(crate) unroll: usize,
    pub(crate) use_plane: bool,
    pub(crate) single_plane: bool,
}

impl DenseLaunch {
    /// The launch and, per weight, `(N, row pitch in vectors)`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn new<R: CubeRuntime>(
        x: &CubeTensor<R>,
        ws: &[&CubeTensor<R>],
    ) -> Option<(DenseLaunch, Vec<(usize, usize)>)> {
        let (xs, xst) = (x.meta.shape(), x.meta.strides());
        if xs.len() != 2 {
            return None;
        }
        let (m, k) = (xs[0], xs[1]);
        if m == 0 || m > MATVEC_MAX_ROWS || k == 0 || (k > 1 && xst[1] != 1) || (m > 1 && xst[0] < k) {
            return None;
        }
        let x_pitch = if m > 1 { xst[0] } else { k };
        Self::with_rows(&x.client, x.dtype, m, k, x_pitch, ws)
    }

    /// [`Self::new`] for `m` rows of `k` values of `dtype`, `x_pitch` elements apart (rows of
    /// an `x` that is not a tensor of its own, e.g. the rows of a larger buffer).
    #[allow(clippy::type_complexity)]
    pub(crate) fn with_rows<R: CubeRuntime>(
        client: &cubecl::client::ComputeClient<R>,
        dtype: DType,
        m: usize,
        k: usize,
        x_pitch: usize,
        ws: &[&CubeTensor<R>],
    ) -> Option<(DenseLaunch, Vec<(usize, usize)>)> {
        if !kernel_float(dtype) || m == 0 || k == 0 || x_pitch < k {
            return None;
        }
        let mut dims = Vec::with_capacity(ws.len());
        for w in ws {
            let (wk, n, pitch) = transposed_dims(w)?;
            if wk != k || w.dtype != dtype {
                return None;
            }
            dims.push((n, pitch));
        }
        // 16 bytes, within the device's vector width (SPIR-V vectors stop at 4 components:
        // f16 weights read 8 bytes at a time on Vulkan)
        let widest = (16 / dtype.size()).min(client.properties().hardware.max_vector_size.max(1));
        let vs = (0..=widest.trailing_zeros())
            .rev()
            .map(|p| 1usize << p)
            .find(|v| k.is_multiple_of(*v) && x_pitch.is_multiple_of(*v) && dims.iter().all(|d| d.1.is_multiple_of(*v)))
            .unwrap_or(1);
        let shape = matvec_shape(None);
        let units = matvec_units(client, shape, k * dtype.size() / 16);
        let launch = DenseLaunch {
            m,
            k,
            vs,
            xp: x_pitch / vs,
            units,
            rows: shape.rows,
            unroll: shape.unroll,
            use_plane: plane_reductions(client),
            single_plane: single_plane(client, units),
        };
        let dims = dims.into_iter().map(|(n, pitch)| (n, pitch / vs)).collect();
        Some((launch, dims))
    }

    pub(crate) fn cubes(&self, n: usize) -> usize {
        n.div_ceil(self.rows)
    }

    /// The tensor-core launch for these operands without a fold, where the dense shape asks
    /// for it and the device, dtype and 8-byte vectors (`vs` ≥ 4) allow it.
    fn mma<R: CubeRuntime>(&self, x: &CubeTensor<R>, fold: &Fold<R>) -> Option<MmaLaunch> {
        if fold.any() || self.vs < 4 {
            return None;
        }
        dense_mma_launch(&x.client, x.dtype, self.m, self.k)
    }

    /// A strictly contiguous `[m, n]` output (`empty_device_dtype` may pad rows; the kernels
    /// write at `m · n + n`).
    fn output<R: CubeRuntime>(&self, x: &CubeTensor<R>, n: usize) -> CubeTensor<R> {
        empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            burn::tensor::Shape::new([self.m, n]),
            x.dtype,
        )
    }
}

/// What a matrix × vector kernel folds around its products: the RMSNorm of its input (weight
/// `[K]` and eps: `x` is then the raw residual stream, normalised inside the kernel), a
/// residual `[M, N]` added to its output, and the carried norm sums of
/// [`crate::NormSums`]: read (`sums_in`, `x` is `h ⊙ g`) or written (`sums_out`).
pub(crate) struct Fold<R: CubeRuntime> {
    pub(crate) norm: Option<(CubeTensor<R>, f32)>,
    pub(crate) residual: Option<CubeTensor<R>>,
    pub(crate) sums_in: Option<SumsIn<R>>,
    pub(crate) sums_out: Option<SumsOut<R>>,
}

/// A consumer's carried norm: the f32 sums buffer, the slot's first index and the norm's eps.
pub(crate) struct SumsIn<R: CubeRuntime> {
    pub(crate) buf: CubeTensor<R>,
    pub(crate) at: usize,
    pub(crate) eps: f32,
}

/// A producer's carried norm: the next norm's weight `[N]`, the `[M, N]` output `h ⊙ next`,
/// the f32 sums buffer and the slot's first index.
pub(crate) struct SumsOut<R: CubeRuntime> {
    pub(crate) next: CubeTensor<R>,
    pub(crate) hg: CubeTensor<R>,
    pub(crate) buf: CubeTensor<R>,
    pub(crate) at: usize,
}

impl<R: CubeRuntime> Fold<R> {
    /// Nothing folded.
    pub(crate) fn none() -> Self {
        Fold {
            norm: None,
            residual: None,
            sums_in: None,
            sums_out: None,
        }
    }

    /// Whether anything is folded.
    pub(crate) fn any(&self) -> bool {
        self.norm.is_some() || self.residual.is_some() || self.sums_in.is_some() || self.sums_out.is_some()
    }

    /// The eps of the folded or carried norm (0 without one).
    pub(crate) fn eps(&self) -> f32 {
        match (&self.norm, &self.sums_in) {
            (Some((_, eps)), _) => *eps,
            (None, Some(s)) => s.eps,
            (None, None) => 0.0,
        }
    }

    /// The carried sums as a consumer's arguments (`x` and 0 when there are none: never read).
    pub(crate) fn sums_in_arg<'a>(&'a self, x: &'a CubeTensor<R>) -> (&'a CubeTensor<R>, u32) {
        match &self.sums_in {
            Some(s) => (&s.buf, s.at as u32),
            None => (x, 0),
        }
    }

    /// The producer's `(next, hg, buf, at)` arguments (`out` and 0 when there are none: never
    /// touched).
    #[allow(clippy::type_complexity)]
    pub(crate) fn sums_out_args<'a>(
        &'a self,
        out: &'a CubeTensor<R>,
    ) -> (&'a CubeTensor<R>, &'a CubeTensor<R>, &'a CubeTensor<R>, u32) {
        match &self.sums_out {
            Some(s) => (&s.next, &s.hg, &s.buf, s.at as u32),
            None => (out, out, out, 0),
        }
    }

    /// Whether the kernels can take these operands for `x: [m, k]` and outputs of width `n`
    /// (`n` = 0: no residual expected): a contiguous `[k]` norm weight and a contiguous
    /// `[m, n]` residual, both in `dtype`.
    pub(crate) fn fits(&self, dtype: DType, m: usize, k: usize, n: usize) -> bool {
        let contiguous = |t: &CubeTensor<R>, shape: &[usize]| {
            t.dtype == dtype
                && t.meta.shape().as_slice() == shape
                && t.meta
                    .strides()
                    .iter()
                    .rev()
                    .zip(shape.iter().rev())
                    .try_fold(1usize, |want, (&st, &d)| (d == 1 || st == want).then_some(want * d))
                    .is_some()
        };
        let buffer = |b: &CubeTensor<R>, at: usize| {
            b.dtype == DType::F32
                && b.meta.shape().len() == 1
                && b.meta.strides()[0] == 1
                && b.meta.shape()[0] >= at + m
        };
        self.norm.as_ref().is_none_or(|(g, _)| contiguous(g, &[k]))
            && self.residual.as_ref().is_none_or(|r| n > 0 && contiguous(r, &[m, n]))
            && self
                .sums_in
                .as_ref()
                .is_none_or(|s| self.norm.is_none() && buffer(&s.buf, s.at))
            && self.sums_out.as_ref().is_none_or(|s| {
                n > 0 && contiguous(&s.next, &[n]) && contiguous(&s.hg, &[m, n]) && buffer(&s.buf, s.at)
            })
    }

    /// The norm weight as a kernel argument (`x` itself when there is none: never read).
    pub(crate) fn norm_arg<'a>(&'a self, x: &'a CubeTensor<R>) -> (&'a CubeTensor<R>, f32) {
        match &self.norm {
            Some((g, eps)) => (g, *eps),
            None => (x, 0.0),
        }
    }

    /// The residual as a kernel argument (`out` when there is none: never read).
    pub(crate) fn residual_arg<'a>(&'a self, out: &'a CubeTensor<R>) -> &'a CubeTensor<R> {
        self.residual.as_ref().unwrap_or(out)
    }
}

/// `x · w` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and `w: [K, N]` stored transposed:
/// [`MatvecShape`](super::MatvecShape)`::rows` weight rows per cube read as 16-byte vectors,
/// f32 accumulation. `None` when the operands are not in that shape and layout.
pub(crate) fn dense_matvec<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    fold: &Fold<R>,
) -> Option<CubeTensor<R>> {
    let (l, dims) = DenseLaunch::new(lhs, &[rhs])?;
    let (n, wp) = dims[0];
    if !fold.fits(lhs.dtype, l.m, l.k, n) {
        return None;
    }
    let client = lhs.client.clone();
    let out = l.output(lhs, n);
    if let Some(t) = l.mma(lhs, fold) {
        let p = wp * l.vs / 4;
        t.launch_dense(
            lhs,
            [rhs; 3],
            [&out; 3],
            [n; 3],
            [p; 3],
            l.xp * l.vs / 4,
            l.m,
            l.k,
            MMA_ONE,
        );
        return Some(out);
    }
    if fold.sums_in.is_some() {
        return None;
    }
    let (gw, _) = fold.norm_arg(lhs);
    let (gn, hg, ssa, ss_at) = fold.sums_out_args(&out);
    // SAFETY: x holds m rows of k (unit stride, `xp` vectors apart) and w n rows of k (`wp`
    // vectors apart: the transposed view checked by `DenseLaunch::new`); out (and hg) are
    // [m, n] contiguous, the next norm's weight [n] and the sums buffer holds `ss_at + m`
    // values (`Fold::fits`); rows past n are clamped to the last row and not written; cubes
    // past the work return early.
    unsafe {
        dense_matvec_kernel::launch_unchecked::<R>(
            &client,
            calculate_cube_count_elemwise(&client, l.m * l.cubes(n), CubeDim::new_1d(1)),
            CubeDim::new_1d(l.units),
            l.vs,
            lhs.clone().into_array_arg(),
            rhs.clone().into_array_arg(),
            gw.clone().into_array_arg(),
            fold.residual_arg(&out).clone().into_array_arg(),
            out.clone().into_array_arg(),
            gn.clone().into_array_arg(),
            hg.clone().into_array_arg(),
            ssa.clone().into_array_arg(),
            n as u32,
            l.m as u32,
            l.k as u32,
            l.xp as u32,
            wp as u32,
            fold.eps(),
            ss_at,
            l.units as usize,
            l.rows,
            l.unroll,
            l.use_plane,
            l.single_plane,
            fold.norm.is_some(),
            fold.residual.is_some(),
            fold.sums_out.is_some(),
            lhs.dtype.into(),
        );
    }
    Some(out)
}

/// `[x · w₀, x · w₁, x · w₂]` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and three dense
/// weights `[K, Nᵢ]` stored transposed (attention's q/k/v projections), in one launch of the
/// dense matvec kernel (each cube takes rows of one of the three). `None` when the operands
/// do not fit (other layouts or dtypes, more rows): the caller multiplies them separately.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let w = Tensor::<Wgpu, 2>::ones([3, 8], &dev).transpose(); // [8, 3], stored [3, 8]
/// let [q, _, _] = cube::dense_matvec3(Tensor::ones([1, 8], &dev), [&w, &w, &w]).unwrap();
/// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![8.0; 3]);
/// # }
/// ```
#[allow(clippy::type_complexity)]
pub fn dense_matvec3<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<CubeBackend<R, F, I, BT>, 2>,
    w: [&Tensor<CubeBackend<R, F, I, BT>, 2>; 3],
) -> Option<[Tensor<CubeBackend<R, F, I, BT>, 2>; 3]> {
    dense_matvec3_fold(x, w, &Fold::none())
}

#[allow(clippy::type_complexity)]
pub(crate) fn dense_matvec3_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<CubeBackend<R, F, I, BT>, 2>,
    w: [&Tensor<CubeBackend<R, F, I, BT>, 2>; 3],
    fold: &Fold<R>,
) -> Option<[Tensor<CubeBackend<R, F, I, BT>, 2>; 3]> {
    let x = prim(x);
    let ws = w.map(|t| prim(t.clone()));
    let (l, dims) = DenseLaunch::new(&x, &[&ws[0], &ws[1], &ws[2]])?;
    if fold.residual.is_some() || fold.sums_out.is_some() || !fold.fits(x.dtype, l.m, l.k, 0) {
        return None;
    }
    let (gw, eps) = (fold.norm_arg(&x).0, fold.eps());
    let (ssr, ss_at) = fold.sums_in_arg(&x);
    let ns: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let client = x.client.clone();
    let outs = [l.output(&x, ns[0]), l.output(&x, ns[1]), l.output(&x, ns[2])];
    if let Some(t) = l.mma(&x, fold) {
        let p = [0, 1, 2].map(|i| dims[i].1 * l.vs / 4);
        let o = [&outs[0], &outs[1], &outs[2]];
        t.launch_dense(
            &x,
            [&ws[0], &ws[1], &ws[2]],
            o,
            [ns[0], ns[1], ns[2]],
            p,
            l.xp * l.vs / 4,
            l.m,
            l.k,
            MMA_THREE,
        );
        return Some(outs.map(wrap));
    }
    let groups: usize = ns.iter().map(|&n| l.cubes(n)).sum();
    let [w0, w1, w2] = ws;
    // SAFETY: as in `dense_matvec`, for each of the three weights and outputs.
    unsafe {
        dense_matvec3_kernel::launch_unchecked::<R>(
            &client,
            calculate_cube_count_elemwise(&client, l.m * groups, CubeDim::new_1d(1)),
            CubeDim::new_1d(l.units),
            l.vs,
            x.clone().into_array_arg(),
            w0.into_array_arg(),
            w1.into_array_arg(),
            w2.into_array_arg(),
            outs[0].clone().into_array_arg(),
            outs[1].clone().into_array_arg(),
            outs[2].clone().into_array_arg(),
            ns[0] as u32,
            ns[1] as u32,
            ns[2] as u32,
            l.m as u32,
            l.k as u32,
            l.xp as u32,
            dims[0].1 as u32,
            dims[1].1 as u32,
            dims[2].1 as u32,
            gw.clone().into_array_arg(),
            eps,
            ssr.clone().into_array_arg(),
            ss_at,
            l.units as usize,
            l.rows,
            l.unroll,
            l.use_plane,
            l.single_plane,
            fold.norm.is_some(),
            fold.sums_in.is_some(),
            x.dtype.into(),
        );
    }
    Some(outs.map(wrap))
}

/// `silu(x · g) · (x · u)` for `x: [M, K]` (M ≤ [`MATVEC_MAX_ROWS`]) and dense `g, u: [K, N]`
/// stored transposed (an MLP's gate and up), in one launch: each cube computes both products
/// of its rows from the same loads of `x` (f32, each rounded to the float dtype as the
/// separate products would be) and the gate. `None` when the operands do not fit.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let w = Tensor::<Wgpu, 2>::ones([2, 8], &dev).transpose();
/// let y = cube::dense_matvec_silu(Tensor::zeros([1, 8], &dev), &w, &w).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 2]);
/// # }
/// ```
pub fn dense_matvec_silu<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<CubeBackend<R, F, I, BT>, 2>,
    gate: &Tensor<CubeBackend<R, F, I, BT>, 2>,
    up: &Tensor<CubeBackend<R, F, I, BT>, 2>,
) -> Option<Tensor<CubeBackend<R, F, I, BT>, 2>> {
    dense_matvec_silu_fold(x, gate, up, &Fold::none())
}

pub(crate) fn dense_matvec_silu_fold<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: Tensor<CubeBackend<R, F, I, BT>, 2>,
    gate: &Tensor<CubeBackend<R, F, I, BT>, 2>,
    up: &Tensor<CubeBackend<R, F, I, BT>, 2>,
    fold: &Fold<R>,
) -> Option<Tensor<CubeBackend<R, F, I, BT>, 2>> {
    let x = prim(x);
    let (g, u) = (prim(gate.clone()), prim(up.clone()));
    let (l, dims) = DenseLaunch::new(&x, &[&g, &u])?;
    // one pitch for both weights (the kernel walks their rows together)
    if dims[0] != dims[1] || fold.residual.is_some() || fold.sums_out.is_some() || !fold.fits(x.dtype, l.m, l.k, 0) {
        return None;
    }
    let (gw, eps) = (fold.norm_arg(&x).0, fold.eps());
    let (ssr, ss_at) = fold.sums_in_arg(&x);
    let (n, wp) = dims[0];
    let client = x.client.clone();
    let out = l.output(&x, n);
    if let Some(t) = l.mma(&x, fold) {
        let p = wp * l.vs / 4;
        t.launch_dense(
            &x,
            [&g, &u, &g],
            [&out; 3],
            [n; 3],
            [p; 3],
            l.xp * l.vs / 4,
            l.m,
            l.k,
            MMA_SILU,
        );
        return Some(wrap(out));
    }
    // SAFETY: as in `dense_matvec`, for both weights (same shape, checked above).
    unsafe {
        dense_matvec_silu_kernel::launch_unchecked::<R>(
            &client,
            calculate_cube_count_elemwise(&client, l.m * l.cubes(n), CubeDim::new_1d(1)),
            CubeDim::new_1d(l.units),
            l.vs,
            x.clone().into_array_arg(),
            g.into_array_arg(),
            u.into_array_arg(),
            out.clone().into_array_arg(),
            n as u32,
            l.m as u32,
            l.k as u32,
            l.xp as u32,
            wp as u32,
            gw.clone().into_array_arg(),
            eps,
            ssr.clone().into_array_arg(),
            ss_at,
            l.units as usize,
            l.rows,
            l.unroll,
            l.use_plane,
            l.single_plane,
            fold.norm.is_some(),
            fold.sums_in.is_some(),
            x.dtype.into(),
        );
    }
    Some(wrap(out))
}

/// A strategy by the name used in `HEARTH_MATMUL` (for benchmarking on a GPU).
fn named(name: &str) -> Option<Strategy> {
    let unit = |tile_size| SimpleUnitSelectionArgs { tile_size };
    Some(match name {
        "vecmat" => Strategy::SimpleVecMat(BlueprintStrategy::Inferred(().into())),
        "double_vecmat" => Strategy::DoubleVecMat(BlueprintStrategy::Inferred(().into())),
        "gemv_plane" => Strategy::GemvPlaneParallel(BlueprintStrategy::Inferred(Default::default())),
        "gemv_unit" => Strategy::GemvUnitPerpendicular(BlueprintStrategy::Inferred(Default::default())),
        "unit" => Strategy::SimpleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MaxTileSize))),
        "unit_min" => Strategy::SimpleUnit(BlueprintStrategy::Inferred(unit(TileSizeSelection::MinTileSize))),
        "double_unit" => Strategy::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs {
            tile_size: TileSizeSelection::MaxTileSize,
        })),
        "naive" => Strategy::Naive,
        // burn's choice: tensor cores, TF32 for f32 on CUDA. Only for comparisons.
        "auto" => Strategy::Auto,
        _ => return None,
    })
}

/// Strategy names tried in order: for one-row products, for many-row f32 products and for
/// many-row half-precision (bf16/f16) products.
struct Plan {
    vec: Vec<&'static str>,
    mat: Vec<&'static str>,
    mat_half: Vec<&'static str>,
}

/// The default is SimpleVecMat (one row) / SimpleUnit (more rows, f32) / burn's automatic
/// choice (more rows, half precision: tensor cores with f32 accumulation, 10-20x faster than
/// SimpleUnit there), each falling back to the others and finally to Naive (always
/// available). f32 never takes `auto` by default: on CUDA it would round f32 operands to TF32.
/// `HEARTH_MATMUL="vec=a,b;mat=c,d"` puts its names first in either list (`mat` in both
/// many-row lists), e.g. `HEARTH_MATMUL="vec=gemv_unit;mat=double_unit"`, to compare kernels
/// on a GPU.
fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let mut vec = vec!["vecmat", "gemv_unit", "gemv_plane", "unit", "naive"];
        let mut mat = vec!["unit", "double_unit", "naive"];
        let mut mat_half = vec!["auto", "unit", "double_unit", "naive"];
        if let Ok(spec) = std::env::var("HEARTH_MATMUL") {
            let known = |s: &str| -> Vec<&'static str> {
                let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
                leaked
                    .split(',')
                    .map(str::trim)
                    .filter(|n| named(n).is_some())
                    .collect()
            };
            for part in spec.split(';') {
                match part.split_once('=') {
                    Some(("vec", v)) => vec = [known(v), vec].concat(),
                    Some(("mat", v)) => {
                        mat = [known(v), mat].concat();
                        mat_half = [known(v), mat_half].concat();
                    }
                    _ => {}
                }
            }
        }
        Plan { vec, mat, mat_half }
    })
}

/// `HEARTH_MATMUL_TRACE=1` prints which strategy ran each product (and why others did not).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("HEARTH_MATMUL_TRACE").is_some_and(|v| v != "0"))
}

fn launch<R: CubeRuntime>(
    strategy: &Strategy,
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    out: &CubeTensor<R>,
) -> Result<(), MatmulSetupError> {
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: lhs.dtype.into(),
        rhs: rhs.dtype.into(),
        out: out.dtype.into(),
    });
    launch_ref(
        strategy,
        &out.client,
        InputBinding::new(lhs.clone().binding(), lhs.dtype.into()),
        InputBinding::new(rhs.clone().binding(), rhs.dtype.into()),
        out.clone().binding(),
        &mut dtypes,
    )
}

/// Matrix product with the contract of burn's `Tensor::matmul` (batch dims broadcast), in full
/// f32 for f32 inputs on every device (no TF32). Half-precision inputs accumulate in f32.
///
/// Errors: [`BackendError::ShapeMismatch`] when the shapes cannot be multiplied or the dtypes
/// differ.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Wgpu, cube};
/// let dev = Default::default();
/// let a = Tensor::<Wgpu, 3>::ones([2, 1, 3], &dev);
/// let b = Tensor::<Wgpu, 3>::ones([1, 3, 4], &dev); // broadcast over the batch
/// assert_eq!(cube::matmul_f32(a, b).unwrap().dims(), [2, 1, 4]);
/// # }
/// ```
pub fn matmul_f32<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    lhs: Tensor<CubeBackend<R, F, I, BT>, D>,
    rhs: Tensor<CubeBackend<R, F, I, BT>, D>,
) -> Result<Tensor<CubeBackend<R, F, I, BT>, D>, BackendError> {
    let mismatch = |reason: String| BackendError::ShapeMismatch { op: "matmul", reason };
    let (ld, rd) = (lhs.dims(), rhs.dims());
    if D < 2 || lhs.dtype() != rhs.dtype() {
        return Err(mismatch(format!("{ld:?} {:?} × {rd:?} {:?}", lhs.dtype(), rhs.dtype())));
    }
    let (lhs, rhs) = (prim(lhs), prim(rhs));
    let out_shape = cubecl::zspace::calculate_matmul_output(lhs.meta.shape(), rhs.meta.shape())
        .map_err(|e| mismatch(format!("{ld:?} × {rd:?}: {e:?}")))?;
    if out_shape.num_elements() == 0 || ld[D - 1] == 0 {
        // nothing to launch; an empty K sums to zero
        let out = empty_device_dtype(lhs.client.clone(), lhs.device.clone(), out_shape.clone(), lhs.dtype);
        let out: Tensor<CubeBackend<R, F, I, BT>, D> = wrap(out);
        return Ok(out.zeros_like());
    }
    if let Some(out) = dense_matvec(&lhs, &rhs, &Fold::none()) {
        return Ok(wrap(out));
    }
    let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
    let plan = plan();
    let half = matches!(lhs.dtype, DType::BF16 | DType::F16);
    let names = match (out_shape[D - 2] == 1, half) {
        (true, _) => &plan.vec,
        (false, false) => &plan.mat,
        (false, true) => &plan.mat_half,
    };
    let mut errors = Vec::new();
    for name in names {
        let strategy = named(name).expect("plan() keeps known names");
        // setup errors are returned before anything is launched, so the next one may run
        match launch(&strategy, &lhs, &rhs, &out) {
            Ok(()) => {
                if trace() {
                    eprintln!("hearth matmul {ld:?} x {rd:?}: {name} (skipped: {})", errors.join("; "));
                }
                return Ok(wrap(out));
            }
            Err(e) => errors.push(format!("{name}: {e:?}")),
        }
    }
    Err(mismatch(format!(
        "no f32 matmul kernel applies to {ld:?} × {rd:?}: {}",
        errors.join("; ")
    )))
}
