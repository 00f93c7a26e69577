//! The routed-expert step of a MoE layer at decode: every expert a token was routed to, in two
//! launches per token whatever `top_k` is.
//!
//! 1. `moe_up`: one cube per (expert of the token, `rows` rows of the intermediate width)
//!    computes `silu(x · gateᵀ) ⊙ (x · upᵀ)` for its rows, reading `x` once for both
//!    matrices. The experts' weights arrive as a [`Sequence`] of arrays (one binding each),
//!    and a cube picks its expert's with a branch that is uniform over the cube.
//! 2. `moe_down`: one cube per `rows` output rows walks the token's experts in turn and sums
//!    `wⱼ · (hⱼ · downⱼᵀ)` in f32 before one cube reduction, so the token's output is written
//!    once (no scatter-add, no atomics).
//!
//! The per-row dot products are those of the dense matvec (`dense_rows_dot`: bf16/f16/f32
//! weights, 16-byte vectors) and of the vector-format packed matvec (`vec_rows_dot`: F32, Q8_0
//! and Q4_0 device blocks, dequantized in registers). K-quants, more than
//! [`MOE_MAX_EXPERTS`] experts per token or more than [`super::MATVEC_MAX_ROWS`] tokens are
//! declined (`None`): [`crate::ops::moe_experts`] (one product per expert with the other
//! kernels) serves them.

use super::matmul::{DenseLaunch, dense_rows_dot};
use super::matvec::{VecLaunch, format_id, scale_offset, vec_rows_dot, vector_format, words};
use super::reduce::{cube_sum_rows, zeros};
use super::{MATVEC_MAX_ROWS, kernel_float, prim, wrap};
use crate::{Expert, PackedMatrix, Weight};
use burn::tensor::{Shape, Tensor as BTensor};
use burn_cubecl::{
    BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous,
    ops::numeric::empty_device_contiguous_dtype, tensor::CubeTensor,
};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// Experts per token the grouped kernels take in one launch (one binding per expert matrix:
/// DeepSeek-V3, Qwen3-MoE and OLMoE route to 8).
pub const MOE_MAX_EXPERTS: usize = 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn moe_up_dense_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    gates: Sequence<Array<Vector<F, N>>>,
    ups: Sequence<Array<Vector<F, N>>>,
    out: &mut Array<F>,
    n_rows: u32,
    k: u32,
    xr: u32,
    wp: u32,
    p0: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cube c: rows n0 .. n0 + rows of expert e's gate and up
    let experts = comptime![gates.len()];
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * experts {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let e = c / groups;
    let nv = k as usize / x.vector_size();
    let sums = comptime!(2 * rows);
    let mut acc = zeros(sums);
    #[unroll]
    for i in 0..experts {
        if e == i {
            dense_rows_dot::<F, N>(
                x,
                xr as usize,
                gates.index(i),
                ups.index(i),
                n0,
                nr,
                nv,
                wp as usize,
                x,
                &mut acc,
                cube_dim,
                rows,
                unroll,
                true,
                false,
            );
        }
    }
    let mut shared = SharedMemory::<f32>::new(sums * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, sums, use_plane, single_plane);
    if UNIT_POS == 0 {
        silu_rows::<F>(&acc, out, (p0 as usize + e) * nr, n0, nr, rows);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn moe_down_dense_kernel<F: Float, N: Size>(
    h: &Array<Vector<F, N>>,
    downs: Sequence<Array<Vector<F, N>>>,
    weights: Sequence<f32>,
    out: &mut Array<F>,
    n_rows: u32,
    k: u32,
    hp: u32,
    wp: u32,
    p0: u32,
    t: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] add: bool,
    #[define(F)] _dtype: StorageType,
) {
    // cube c: output rows n0 .. n0 + rows of token t, summed over the token's experts (with
    // `add`, onto what an earlier launch for the token's other experts wrote)
    let experts = comptime![downs.len()];
    let c = CUBE_POS;
    let nr = n_rows as usize;
    if c >= nr.div_ceil(rows) {
        terminate!();
    }
    let n0 = c * rows;
    let nv = k as usize / h.vector_size();
    let mut acc = zeros(rows);
    #[unroll]
    for i in 0..experts {
        let mut part = zeros(rows);
        dense_rows_dot::<F, N>(
            h,
            (p0 as usize + i) * hp as usize,
            downs.index(i),
            downs.index(i),
            n0,
            nr,
            nv,
            wp as usize,
            h,
            &mut part,
            cube_dim,
            rows,
            unroll,
            false,
            false,
        );
        let w = weights[i];
        #[unroll]
        for r in 0..rows {
            acc[r] += w * part[r];
        }
    }
    let mut shared = SharedMemory::<f32>::new(rows * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, rows, use_plane, single_plane);
    if UNIT_POS == 0 {
        #[unroll]
        for r in 0..rows {
            if n0 + r < nr {
                let at = t as usize * nr + n0 + r;
                let mut y = acc[r];
                if comptime!(add) {
                    y += f32::cast_from(out[at]);
                }
                out[at] = F::cast_from(y);
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn moe_up_vec_kernel<F: Float, NX: Size, NW: Size>(
    x: &Array<Vector<F, NX>>,
    gq: Sequence<Array<Vector<u32, NW>>>,
    gs: Sequence<Array<u32>>,
    uq: Sequence<Array<Vector<u32, NW>>>,
    us: Sequence<Array<u32>>,
    out: &mut Array<F>,
    n_rows: u32,
    k: u32,
    so: u32,
    xr: u32,
    p0: u32,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let experts = comptime![gq.len()];
    let c = CUBE_POS;
    let nr = n_rows as usize;
    let groups = nr.div_ceil(rows);
    if c >= groups * experts {
        terminate!();
    }
    let n0 = (c % groups) * rows;
    let e = c / groups;
    let sums = comptime!(2 * rows);
    let mut acc = zeros(sums);
    #[unroll]
    for i in 0..experts {
        if e == i {
            vec_rows_dot::<F, NX, NW>(
                x,
                xr as usize,
                gq.index(i),
                gs.index(i),
                uq.index(i),
                us.index(i),
                n0,
                nr,
                k as usize,
                so as usize,
                x,
                &mut acc,
                format,
                cube_dim,
                rows,
                unroll,
                true,
                convert,
                false,
            );
        }
    }
    let mut shared = SharedMemory::<f32>::new(sums * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, sums, use_plane, single_plane);
    if UNIT_POS == 0 {
        silu_rows::<F>(&acc, out, (p0 as usize + e) * nr, n0, nr, rows);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn moe_down_vec_kernel<F: Float, NX: Size, NW: Size>(
    h: &Array<Vector<F, NX>>,
    dq: Sequence<Array<Vector<u32, NW>>>,
    ds: Sequence<Array<u32>>,
    weights: Sequence<f32>,
    out: &mut Array<F>,
    n_rows: u32,
    k: u32,
    so: u32,
    p0: u32,
    t: u32,
    #[comptime] format: u32,
    #[comptime] cube_dim: usize,
    #[comptime] rows: usize,
    #[comptime] unroll: usize,
    #[comptime] convert: u32,
    #[comptime] use_plane: bool,
    #[comptime] single_plane: bool,
    #[comptime] add: bool,
    #[define(F)] _dtype: StorageType,
) {
    let experts = comptime![dq.len()];
    let c = CUBE_POS;
    let nr = n_rows as usize;
    if c >= nr.div_ceil(rows) {
        terminate!();
    }
    let n0 = c * rows;
    let kk = k as usize;
    let mut acc = zeros(rows);
    #[unroll]
    for i in 0..experts {
        let mut part = zeros(rows);
        vec_rows_dot::<F, NX, NW>(
            h,
            (p0 as usize + i) * kk / 4,
            dq.index(i),
            ds.index(i),
            dq.index(i),
            ds.index(i),
            n0,
            nr,
            kk,
            so as usize,
            h,
            &mut part,
            format,
            cube_dim,
            rows,
            unroll,
            false,
            convert,
            false,
        );
        let w = weights[i];
        #[unroll]
        for r in 0..rows {
            acc[r] += w * part[r];
        }
    }
    let mut shared = SharedMemory::<f32>::new(rows * cube_dim);
    cube_sum_rows(&mut acc, &mut shared, rows, use_plane, single_plane);
    if UNIT_POS == 0 {
        #[unroll]
        for r in 0..rows {
            if n0 + r < nr {
                let at = t as usize * nr + n0 + r;
                let mut y = acc[r];
                if comptime!(add) {
                    y += f32::cast_from(out[at]);
                }
                out[at] = F::cast_from(y);
            }
        }
    }
}

/// Unit 0's epilogue of `moe_up`: `out[base + n0 + r] = silu(g) · u` for the cube's rows below
/// `nr`, the gate sums in `acc[0..rows]`, the up sums in `acc[rows..2·rows]` (each rounded to
/// `F` first, as two separate products would leave them).
#[cube]
fn silu_rows<F: Float>(
    acc: &Array<f32>,
    out: &mut Array<F>,
    base: usize,
    n0: usize,
    nr: usize,
    #[comptime] rows: usize,
) {
    #[unroll]
    for r in 0..rows {
        if n0 + r < nr {
            let g = f32::cast_from(F::cast_from(acc[r]));
            let u = f32::cast_from(F::cast_from(acc[rows + r]));
            out[base + n0 + r] = F::cast_from(g / (1.0f32 + f32::exp(0.0f32 - g)) * u);
        }
    }
}

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// One expert's packed gate, up and down.
type PackedExpert<'a, R, F, I, BT> = [&'a PackedMatrix<Cube<R, F, I, BT>>; 3];

/// How the experts' matrices are stored, when the grouped kernels take them all.
enum Kind<'a, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> {
    Dense(Vec<[CubeTensor<R>; 3]>),
    Packed(Vec<PackedExpert<'a, R, F, I, BT>>),
}

/// The routed experts of a MoE layer for `x: [n, K]` (n ≤ [`MATVEC_MAX_ROWS`] tokens):
/// `experts[t·k .. (t + 1)·k]` are token `t`'s experts and `weights` their routing weights
/// (`k = experts.len() / n`); returns `[n, K]`, each row
/// `Σⱼ wⱼ · downⱼ(silu(gateⱼ · x) ⊙ upⱼ · x)`, in two launches per token (more where a token's
/// experts need more bindings than the device gives one kernel, or more than
/// [`MOE_MAX_EXPERTS`]: then the experts are split evenly over launches and the later down
/// launches add to the output). All experts must be dense device weights (transposed views of
/// row-major `[out, in]`, the dtype of `x`) or all device blocks of one vector format (F32,
/// Q8_0, Q4_0), with equal shapes.
///
/// `None` when the operands do not fit these kernels (other formats or layouts, more tokens,
/// mismatched lengths): [`crate::HearthBackend::moe_experts`] then multiplies expert by
/// expert.
///
/// ```no_run
/// # #[cfg(feature = "wgpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Expert, Weight, Wgpu, cube};
/// let dev = Default::default();
/// let gate = Tensor::<Wgpu, 2>::ones([2, 4], &dev).transpose(); // [4, 2], stored [2, 4]
/// let down = Tensor::<Wgpu, 2>::ones([4, 2], &dev).transpose(); // [2, 4], stored [4, 2]
/// let e = Expert { gate: Weight::Dense(&gate), up: Weight::Dense(&gate), down: Weight::Dense(&down) };
/// let y = cube::moe_experts(Tensor::zeros([1, 4], &dev), &[e], &[1.0]).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 4]);
/// # }
/// ```
pub fn moe_experts<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: BTensor<Cube<R, F, I, BT>, 2>,
    experts: &[Expert<'_, Cube<R, F, I, BT>>],
    weights: &[f32],
) -> Option<BTensor<Cube<R, F, I, BT>, 2>> {
    let [n, hid] = x.dims();
    if n == 0 || n > MATVEC_MAX_ROWS || experts.is_empty() || experts.len() != weights.len() {
        return None;
    }
    if !experts.len().is_multiple_of(n) || !kernel_float(x.dtype()) {
        return None;
    }
    let k = experts.len() / n;
    let x = into_contiguous(prim(x));
    let client = x.client.clone();
    // bindings of one launch: up takes x, 2 (dense) or 4 (packed) per expert and the output
    let per = if matches!(experts[0].gate, Weight::Dense(_)) {
        2
    } else {
        4
    };
    let fit = ((client.properties().hardware.max_bindings as usize).saturating_sub(2) / per).min(MOE_MAX_EXPERTS);
    if fit == 0 {
        return None;
    }
    let launches = launches(n, k, fit);
    let kind = classify::<R, F, I, BT>(experts)?;
    match kind {
        Kind::Dense(ws) => dense(&x, &ws, weights, &launches, n * k, hid),
        Kind::Packed(ws) => packed(&x, &ws, weights, &launches, n * k, hid),
    }
    .map(wrap)
}

/// One launch of each kernel: token `t`, its experts `lo..hi` (indices into the pairs), and
/// whether the down launch adds to an earlier one's output.
struct Launch {
    t: usize,
    lo: usize,
    hi: usize,
    add: bool,
}

/// The launches for `n` tokens of `k` experts each, at most `fit` experts per launch, a
/// token's experts split evenly (8 over launches of 7 → 4 + 4).
fn launches(n: usize, k: usize, fit: usize) -> Vec<Launch> {
    let parts = k.div_ceil(fit);
    let mut out = Vec::with_capacity(n * parts);
    for t in 0..n {
        for p in 0..parts {
            let (lo, hi) = (t * k + p * k / parts, t * k + (p + 1) * k / parts);
            out.push(Launch { t, lo, hi, add: p > 0 });
        }
    }
    out
}

fn classify<'a, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    experts: &[Expert<'a, Cube<R, F, I, BT>>],
) -> Option<Kind<'a, R, F, I, BT>> {
    match experts[0].gate {
        Weight::Dense(_) => {
            let mut out = Vec::with_capacity(experts.len());
            for e in experts {
                let (Weight::Dense(g), Weight::Dense(u), Weight::Dense(d)) = (e.gate, e.up, e.down) else {
                    return None;
                };
                out.push([prim(g.clone()), prim(u.clone()), prim(d.clone())]);
            }
            Some(Kind::Dense(out))
        }
        Weight::Packed(p0) => {
            let mut out = Vec::with_capacity(experts.len());
            for e in experts {
                let (Weight::Packed(g), Weight::Packed(u), Weight::Packed(d)) = (e.gate, e.up, e.down) else {
                    return None;
                };
                let same = |a: &PackedMatrix<_>, b: &PackedMatrix<_>| {
                    a.format() == p0.format() && a.rows() == b.rows() && a.cols() == b.cols()
                };
                let first = &experts[0];
                let (Weight::Packed(g0), Weight::Packed(d0)) = (first.gate, first.down) else {
                    return None;
                };
                if !same(g, g0) || !same(u, g0) || !same(d, d0) || d.format() != p0.format() {
                    return None;
                }
                out.push([g, u, d]);
            }
            vector_format(p0.format()).then_some(Kind::Packed(out))
        }
    }
}

/// Dense experts: `ws[j] = [gate, up, down]` (transposed views).
fn dense<R: CubeRuntime>(
    x: &CubeTensor<R>,
    ws: &[[CubeTensor<R>; 3]],
    weights: &[f32],
    launches: &[Launch],
    pairs: usize,
    hid: usize,
) -> Option<CubeTensor<R>> {
    let n = x.meta.shape()[0];
    let gu: Vec<&CubeTensor<R>> = ws.iter().flat_map(|w| [&w[0], &w[1]]).collect();
    let (up, dims) = DenseLaunch::new(x, &gu)?;
    let (inter, wp) = dims[0];
    if dims.iter().any(|d| *d != (inter, wp)) {
        return None;
    }
    let client = x.client.clone();
    let dtype = x.dtype;
    // the experts' intermediate rows, [n·k, inter]
    let downs: Vec<&CubeTensor<R>> = ws.iter().map(|w| &w[2]).collect();
    // the down launch reads rows of h, `inter` apart
    let (down, ddims) = DenseLaunch::with_rows(&client, dtype, 1, inter, inter, &downs)?;
    let h = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([pairs, inter]), dtype);
    let (dn, dwp) = ddims[0];
    if dn != hid || ddims.iter().any(|d| *d != (dn, dwp)) {
        return None;
    }
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([n, hid]), dtype);
    for &Launch { t, lo, hi, add } in launches {
        let mut gates = SequenceArg::new();
        let mut ups = SequenceArg::new();
        for w in &ws[lo..hi] {
            gates.push(w[0].clone().into_array_arg());
            ups.push(w[1].clone().into_array_arg());
        }
        // SAFETY: x holds n rows of `hid` (contiguous; row t starts at vector t·xp), every gate
        // and up `inter` rows of `hid` `wp` vectors apart (the transposed views checked by
        // `DenseLaunch::new`, one pitch for all); h is [n·k, inter] contiguous and the cubes
        // write rows (t·k + e)·inter + r, r < inter; rows past `inter` are clamped and not
        // written; cubes past the work return early.
        unsafe {
            moe_up_dense_kernel::launch_unchecked::<R>(
                &client,
                calculate_cube_count_elemwise(&client, (hi - lo) * up.cubes(inter), CubeDim::new_1d(1)),
                CubeDim::new_1d(up.units),
                up.vs,
                x.clone().into_array_arg(),
                gates,
                ups,
                h.clone().into_array_arg(),
                inter as u32,
                hid as u32,
                (t * up.xp) as u32,
                wp as u32,
                lo as u32,
                up.units as usize,
                up.rows,
                up.unroll,
                up.use_plane,
                up.single_plane,
                dtype.into(),
            );
        }
        let mut ds = SequenceArg::new();
        let mut wt = SequenceArg::new();
        for (w, &r) in ws[lo..hi].iter().zip(&weights[lo..hi]) {
            ds.push(w[2].clone().into_array_arg());
            wt.push(r);
        }
        // SAFETY: h holds n·k rows of `inter` (contiguous, row pitch `inter / vs` vectors),
        // every down `hid` rows of `inter` `dwp` vectors apart (checked by `DenseLaunch::new`);
        // out is [n, hid] contiguous and the cubes write row t, columns below `hid`.
        unsafe {
            moe_down_dense_kernel::launch_unchecked::<R>(
                &client,
                calculate_cube_count_elemwise(&client, down.cubes(hid), CubeDim::new_1d(1)),
                CubeDim::new_1d(down.units),
                down.vs,
                h.clone().into_array_arg(),
                ds,
                wt,
                out.clone().into_array_arg(),
                hid as u32,
                inter as u32,
                down.xp as u32,
                dwp as u32,
                lo as u32,
                t as u32,
                down.units as usize,
                down.rows,
                down.unroll,
                down.use_plane,
                down.single_plane,
                add,
                dtype.into(),
            );
        }
    }
    Some(out)
}

/// Packed experts of one vector format: `ws[j] = [gate, up, down]`.
fn packed<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &CubeTensor<R>,
    ws: &[PackedExpert<'_, R, F, I, BT>],
    weights: &[f32],
    launches: &[Launch],
    pairs: usize,
    hid: usize,
) -> Option<CubeTensor<R>> {
    let n = x.meta.shape()[0];
    let format = ws[0][0].format();
    let inter = ws[0][0].rows();
    if ws[0][0].cols() != hid || ws[0][2].rows() != hid || ws[0][2].cols() != inter {
        return None;
    }
    let mut words_of = Vec::with_capacity(ws.len());
    for w in ws {
        words_of.push([words(w[0]).ok()?, words(w[1]).ok()?, words(w[2]).ok()?]);
    }
    let client = x.client.clone();
    let dtype = x.dtype;
    let h = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([pairs, inter]), dtype);
    let out = empty_device_contiguous_dtype(client.clone(), x.device.clone(), Shape::new([n, hid]), dtype);
    let (lu, ld) = (
        VecLaunch::new(&client, format, hid),
        VecLaunch::new(&client, format, inter),
    );
    let (so_up, so_down) = (
        scale_offset(format, inter, hid) as u32,
        scale_offset(format, hid, inter) as u32,
    );
    for &Launch { t, lo, hi, add } in launches {
        let (mut gq, mut gs, mut uq, mut us) = (
            SequenceArg::new(),
            SequenceArg::new(),
            SequenceArg::new(),
            SequenceArg::new(),
        );
        for w in &words_of[lo..hi] {
            gq.push(w[0].clone().into_array_arg());
            gs.push(w[0].clone().into_array_arg());
            uq.push(w[1].clone().into_array_arg());
            us.push(w[1].clone().into_array_arg());
        }
        // SAFETY: as `packed_matvec_silu` for every expert's gate and up (one format and
        // shape, checked above): x holds n rows of `hid` (contiguous), h is [n·k, inter]
        // contiguous and the cubes write rows (t·k + e)·inter + r, r < inter.
        unsafe {
            moe_up_vec_kernel::launch_unchecked::<R>(
                &client,
                calculate_cube_count_elemwise(&client, (hi - lo) * lu.cubes(inter), CubeDim::new_1d(1)),
                CubeDim::new_1d(lu.units),
                4,
                4,
                x.clone().into_array_arg(),
                gq,
                gs,
                uq,
                us,
                h.clone().into_array_arg(),
                inter as u32,
                hid as u32,
                so_up,
                (t * hid / 4) as u32,
                lo as u32,
                format_id(format),
                lu.units as usize,
                lu.shape.rows,
                lu.shape.unroll,
                lu.shape.convert,
                lu.use_plane,
                lu.single_plane,
                dtype.into(),
            );
        }
        let (mut dq, mut ds, mut wt) = (SequenceArg::new(), SequenceArg::new(), SequenceArg::new());
        for (w, &r) in words_of[lo..hi].iter().zip(&weights[lo..hi]) {
            dq.push(w[2].clone().into_array_arg());
            ds.push(w[2].clone().into_array_arg());
            wt.push(r);
        }
        // SAFETY: as `packed_matvec` for every expert's down (one format and shape): h holds
        // n·k rows of `inter` (contiguous), out is [n, hid] contiguous and the cubes write
        // row t, columns below `hid`.
        unsafe {
            moe_down_vec_kernel::launch_unchecked::<R>(
                &client,
                calculate_cube_count_elemwise(&client, ld.cubes(hid), CubeDim::new_1d(1)),
                CubeDim::new_1d(ld.units),
                4,
                4,
                h.clone().into_array_arg(),
                dq,
                ds,
                wt,
                out.clone().into_array_arg(),
                hid as u32,
                inter as u32,
                so_down,
                lo as u32,
                t as u32,
                format_id(format),
                ld.units as usize,
                ld.shape.rows,
                ld.shape.unroll,
                ld.shape.convert,
                ld.use_plane,
                ld.single_plane,
                add,
                dtype.into(),
            );
        }
    }
    Some(out)
}
