//! AVX-512 kernels (F/BW/VL/VNNI/VBMI + GFNI).
//!
//! Q4_0, Q4_1 and Q8_0 use "window" kernels: the weight rows are read as plain 64-byte
//! registers (scale bytes included) and the activations are laid out once per call to match
//! them byte for byte (see [`WinFmt`]), so a register costs one `vpdpbusd` per 64 quant bytes
//! (two for nibbles) plus one `vpermt2w` + `vcvtph2ps` for the per-lane weight scales. The same
//! inner step serves matvec (several rows, one activation vector) and the small-batch matmul
//! (a tile of rows × a tile of activation vectors, each weight register unpacked once).

use std::arch::x86_64::*;

use super::act::KAct;
use super::act::{Line, RegTable, TABLES_Q4_0, TABLES_Q4_1, TABLES_Q8_0, WIN_Q4_0, WIN_Q4_1, WIN_Q8_0, WinAct, WinFmt};
use super::avx2::prefetch;
use super::{Prepared, WeightFormat, scalar};

/// Window-kernel format selectors (const generic `F`).
pub(super) const F_Q4_0: u8 = 0;
pub(super) const F_Q4_1: u8 = 1;
pub(super) const F_Q8_0: u8 = 2;

/// The window format and register tables of selector `F`.
pub(super) fn win_fmt(f: u8) -> (WinFmt, &'static [RegTable]) {
    match f {
        F_Q4_0 => (WIN_Q4_0, &TABLES_Q4_0),
        F_Q4_1 => (WIN_Q4_1, &TABLES_Q4_1),
        _ => (WIN_Q8_0, &TABLES_Q8_0),
    }
}

/// Selector of a window-kernel format.
pub(super) fn win_selector(fmt: WeightFormat) -> Option<u8> {
    match fmt {
        WeightFormat::Q4_0 => Some(F_Q4_0),
        WeightFormat::Q4_1 => Some(F_Q4_1),
        WeightFormat::Q8_0 => Some(F_Q8_0),
        _ => None,
    }
}

/// Quantizes `x` (blocks of 32, as [`super::Q8Activations`]) and lays it out for the window
/// kernels of format selector `f`.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set. `x.len()` must be a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn build_win(x: &[f32], f: u8) -> WinAct {
    let (wf, tables) = win_fmt(f);
    assert!(x.len().is_multiple_of(32));
    let nb = x.len() / 32;
    let nw = nb.div_ceil(wf.wb);
    // Zero padding: a register's 128-quant source window and the 32-scale table may run past
    // the last block; padded quants and scales are zero, so they contribute nothing.
    let mut lines = super::act::pooled_lines(nw * wf.nreg * wf.lpr);
    let (mut qs, mut d) = super::act::take_win_scratch(nw * wf.wb * 32 + 160, nw * wf.wb + 32);
    // SAFETY: AVX2 and FMA are enabled for this function.
    unsafe { super::avx2::quantize_blocks(x, 32, &mut qs[..x.len()], &mut d[..nb]) };
    let ones = _mm512_set1_epi8(1);
    let zero = _mm512_setzero_si512();
    for (w, out) in lines.chunks_exact_mut(wf.nreg * wf.lpr).enumerate() {
        let qb = &qs[w * wf.wb * 32..];
        let db = &d[w * wf.wb..];
        assert!(db.len() >= 32 && qb.len() >= 144 + tables.iter().map(|t| t.base).max().unwrap_or(0));
        // SAFETY: `db` has at least 32 floats (asserted); every table read is a 64-byte array.
        unsafe {
            let (d0, d1) = (_mm512_loadu_ps(db.as_ptr()), _mm512_loadu_ps(db.as_ptr().add(16)));
            for (t, o) in tables.iter().zip(out.chunks_exact_mut(wf.lpr)) {
                // SAFETY (loads): t.base + 144 <= qb.len() by the assertion above.
                let src = |o: usize| _mm512_loadu_si512(qb.as_ptr().add(t.base + o) as *const _);
                let il = _mm512_loadu_si512(t.src.as_ptr() as *const _);
                let xl = _mm512_maskz_permutex2var_epi8(t.valid, src(0), il, src(64));
                let lb = _mm512_loadu_si512(t.lane_blk.as_ptr() as *const _);
                let da = _mm512_maskz_permutex2var_ps(t.lane_valid, d0, lb, d1);
                let mut sum = _mm512_dpbusd_epi32(zero, ones, xl);
                // SAFETY (stores): `o` is `lpr` aligned 64-byte lines, `i < lpr`.
                let ob = o.as_mut_ptr() as *mut u8;
                let op = |i: usize| ob.add(64 * i) as *mut _;
                _mm512_store_si512(op(0), xl);
                if wf.nibbles {
                    let xh = _mm512_maskz_permutex2var_epi8(t.valid, src(16), il, src(80));
                    sum = _mm512_dpbusd_epi32(sum, ones, xh);
                    _mm512_store_si512(op(1), xh);
                    _mm512_store_ps(op(2) as *mut f32, da);
                    if f == F_Q4_1 {
                        _mm512_store_ps(op(3) as *mut f32, _mm512_mul_ps(da, _mm512_cvtepi32_ps(sum)));
                    } else {
                        _mm512_store_si512(op(3), _mm512_sub_epi32(zero, _mm512_slli_epi32::<3>(sum)));
                    }
                } else {
                    _mm512_store_ps(op(1) as *mut f32, da);
                    _mm512_store_si512(op(2), _mm512_sub_epi32(zero, _mm512_slli_epi32::<7>(sum)));
                }
            }
        }
    }
    super::act::return_win_scratch((qs, d));
    WinAct { fmt: wf, nb, lines }
}

/// Dot products of `R` weight rows (raw row starts, each `acts[0].nb` blocks of format `F`)
/// with `C` prepared activation vectors: `out[r][c] = row r · activations c`.
///
/// Every (row, vector) pair accumulates the same per-lane sequence whatever `R` and `C` are,
/// so matvec and matmul give bit-identical results.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set; each `w[r]` must be valid for
/// reading `acts[0].nb` blocks of format `F`; every `acts[c]` must have been built by
/// [`build_win`] for `F` with the same `nb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn win_dot<const F: u8, const R: usize, const C: usize>(w: [*const u8; R], acts: [&WinAct; C]) -> [[f32; C]; R] {
    let (wf, tables) = win_fmt(F);
    let nb = acts[0].nb;
    let wbytes = wf.wb * wf.bb;
    let (full, tail) = (nb / wf.wb, nb % wf.wb);
    let lp: [*const u8; C] = acts.map(|a| a.lines.as_ptr() as *const u8);
    let pf = super::prefetch_distance();
    let m4 = _mm512_set1_epi8(0x0F);
    let gf_hi = _mm512_set1_epi64(0x1020_4080_0000_0000);
    let x80 = _mm512_set1_epi8(-128);
    let one16 = _mm512_set1_epi16(1);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut prev = [_mm512_setzero_si512(); R];
    // One weight register (byte offset `off` of every row, register table `t`, activation
    // line index `li`); `mask` selects the bytes to load (all but in a ragged last register).
    let mut step = |off: usize, li: usize, t: &RegTable, mask: u64| {
        // SAFETY: the caller guarantees `off + 64` (or the masked prefix) is inside every row;
        // masked-out bytes are not accessed. `li + lpr` lines exist in every activation buffer
        // (built for this `nb`), and the table arrays are 64 bytes.
        unsafe {
            let idx = _mm512_loadu_si512(t.d_idx.as_ptr() as *const _);
            let mut lo = [_mm512_setzero_si512(); R];
            let mut hi = [_mm512_setzero_si512(); R];
            let mut dw = [_mm512_setzero_ps(); R];
            let mut mw = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let p = w[r].add(off);
                prefetch(p, pf);
                let raw = if mask == u64::MAX {
                    _mm512_loadu_si512(p as *const _)
                } else {
                    _mm512_maskz_loadu_epi8(mask, p as *const i8)
                };
                if F == F_Q8_0 {
                    lo[r] = _mm512_xor_si512(raw, x80);
                } else {
                    lo[r] = _mm512_and_si512(raw, m4);
                    hi[r] = _mm512_gf2p8affine_epi64_epi8::<0>(raw, gf_hi);
                }
                if F == F_Q4_1 {
                    // Lanes over a block's `d, m` words hold no quants: zero their scales so
                    // that arbitrary bits there (NaN, inf) cannot leak in through `0 · x`.
                    let k = t.lane_valid as u32;
                    let dws = _mm512_maskz_permutex2var_epi16(k, prev[r], idx, raw);
                    dw[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(dws));
                    let mws = _mm512_maskz_permutex2var_epi16(k, prev[r], _mm512_add_epi16(idx, one16), raw);
                    mw[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(mws));
                } else {
                    // Every lane of a Q4_0/Q8_0 register holds quants (checked by the tables).
                    let dws = _mm512_permutex2var_epi16(prev[r], idx, raw);
                    dw[r] = _mm512_cvtph_ps(_mm512_castsi512_si256(dws));
                }
                prev[r] = raw;
            }
            for c in 0..C {
                let l = lp[c].add(64 * li);
                let ld = |i: usize| _mm512_load_si512(l.add(64 * i) as *const _);
                let ldf = |i: usize| _mm512_load_ps(l.add(64 * i) as *const f32);
                if F == F_Q8_0 {
                    let (x, da, bias) = (ld(0), ldf(1), ld(2));
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(bias, lo[r], x);
                        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], da), acc[r][c]);
                    }
                } else {
                    let (xl, xh, da) = (ld(0), ld(1), ldf(2));
                    let init = if F == F_Q4_0 { ld(3) } else { _mm512_setzero_si512() };
                    for r in 0..R {
                        let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo[r], xl), hi[r], xh);
                        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], da), acc[r][c]);
                        if F == F_Q4_1 {
                            acc[r][c] = _mm512_fmadd_ps(mw[r], ldf(3), acc[r][c]);
                        }
                    }
                }
            }
        }
    };
    for wi in 0..full {
        for (j, t) in tables.iter().enumerate() {
            step(wi * wbytes + 64 * j, (wi * wf.nreg + j) * wf.lpr, t, u64::MAX);
        }
    }
    if tail > 0 {
        let bytes = tail * wf.bb;
        for (j, t) in tables.iter().enumerate().take(bytes.div_ceil(64)) {
            let rem = bytes - 64 * j;
            let mask = if rem >= 64 { u64::MAX } else { (1u64 << rem) - 1 };
            step(full * wbytes + 64 * j, (full * wf.nreg + j) * wf.lpr, t, mask);
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
    out
}

/// Checks that `a` was built for rows of `row_bytes` in format `F` (so `win_dot` stays in bounds).
fn check_win<const F: u8>(a: &WinAct, row_bytes: usize) {
    let (wf, _) = win_fmt(F);
    assert_eq!(a.fmt, wf);
    assert_eq!(a.nb * wf.bb, row_bytes);
    assert_eq!(a.lines.len(), a.nb.div_ceil(wf.wb) * wf.nreg * wf.lpr);
}

/// Rows per pass of the window matvec (activation loads are shared by the rows of a pass).
const MV_ROWS: usize = 4;

/// Matvec rows of a window format, [`MV_ROWS`] rows per pass.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
fn rows_win<const F: u8>(chunk: &[u8], row_bytes: usize, a: &WinAct, out: &mut [f32]) {
    check_win::<F>(a, row_bytes);
    assert_eq!(chunk.len(), row_bytes * out.len());
    let mut groups = chunk.chunks_exact(MV_ROWS * row_bytes);
    let mut outs = out.chunks_exact_mut(MV_ROWS);
    for (c, o) in (&mut groups).zip(&mut outs) {
        let w: [*const u8; MV_ROWS] = std::array::from_fn(|i| c[i * row_bytes..].as_ptr());
        // SAFETY: each pointer starts a `row_bytes`-long row inside `chunk`; `a` matches
        // (checked above); the CPU features are those of this function.
        let v = unsafe { win_dot::<F, MV_ROWS, 1>(w, [a]) };
        for (o, v) in o.iter_mut().zip(v) {
            *o = v[0];
        }
    }
    for (r, o) in groups.remainder().chunks_exact(row_bytes).zip(outs.into_remainder()) {
        // SAFETY: as above, one row.
        *o = unsafe { win_dot::<F, 1, 1>([r.as_ptr()], [a]) }[0][0];
    }
}

/// Small-batch matmul on a window format: `out` is `[acts.len()][rows of chunk]` row-major.
/// Tiles of 2 rows × 4 activation vectors; each weight register is unpacked once per tile.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn gemm_win(fmt: WeightFormat, chunk: &[u8], row_bytes: usize, acts: &[&WinAct], out: &mut [f32]) {
    match win_selector(fmt) {
        Some(F_Q4_0) => gemm_win_f::<F_Q4_0>(chunk, row_bytes, acts, out),
        Some(F_Q4_1) => gemm_win_f::<F_Q4_1>(chunk, row_bytes, acts, out),
        Some(F_Q8_0) => gemm_win_f::<F_Q8_0>(chunk, row_bytes, acts, out),
        _ => unreachable!("gemm_win called for a non-window format"),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
fn gemm_win_f<const F: u8>(chunk: &[u8], row_bytes: usize, acts: &[&WinAct], out: &mut [f32]) {
    let rows = chunk.len() / row_bytes;
    assert_eq!(chunk.len(), rows * row_bytes);
    assert_eq!(out.len(), rows * acts.len());
    for a in acts {
        check_win::<F>(a, row_bytes);
    }
    // Token blocks whose prepared activations stay within ~1 MiB (L2).
    let per_token = acts.first().map_or(1, |a| a.lines.len() * 64);
    let tb = ((1usize << 20) / per_token).clamp(4, 256) & !3;
    for (t0, ablk) in acts.chunks(tb).enumerate().map(|(i, b)| (i * tb, b)) {
        let mut r = 0;
        while r < rows {
            let nr = if r + 2 <= rows { 2 } else { 1 };
            let w0 = chunk[r * row_bytes..].as_ptr();
            let mut c = 0;
            while c < ablk.len() {
                let nc = (ablk.len() - c).min(4);
                let a = &ablk[c..c + nc];
                let mut put = |rr: usize, cc: usize, v: f32| out[(t0 + c + cc) * rows + r + rr] = v;
                // SAFETY: rows r (and r + 1 when nr == 2) lie inside `chunk`; every activation
                // buffer matches (checked above); CPU features are this function's.
                unsafe {
                    let w1 = w0.wrapping_add(row_bytes);
                    macro_rules! tile {
                        ($nc:literal) => {{
                            let aa: [&WinAct; $nc] = std::array::from_fn(|i| a[i]);
                            if nr == 2 {
                                let v = win_dot::<F, 2, $nc>([w0, w1], aa);
                                for (rr, vr) in v.iter().enumerate() {
                                    for (cc, &x) in vr.iter().enumerate() {
                                        put(rr, cc, x);
                                    }
                                }
                            } else {
                                let v = win_dot::<F, 1, $nc>([w0], aa);
                                for (cc, &x) in v[0].iter().enumerate() {
                                    put(0, cc, x);
                                }
                            }
                        }};
                    }
                    match nc {
                        4 => tile!(4),
                        3 => tile!(3),
                        2 => tile!(2),
                        _ => tile!(1),
                    }
                }
                c += nc;
            }
            r += nr;
        }
    }
}

/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set. `chunk.len() == row_bytes * out.len()`,
/// `row_bytes == fmt.row_bytes(cols)` and `p` was prepared for `(Isa::Avx512, fmt)` from `cols` values.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn dot_rows(
    fmt: WeightFormat,
    chunk: &[u8],
    row_bytes: usize,
    cols: usize,
    p: &Prepared<'_>,
    out: &mut [f32],
) {
    assert_eq!(chunk.len(), row_bytes * out.len());
    assert_eq!(p.x.len(), cols);
    if let Some(q) = &p.q8 {
        assert_eq!(q.qs.len(), cols);
    }
    let rows = chunk.chunks_exact(row_bytes).zip(out.iter_mut());
    match fmt {
        WeightFormat::F32 => rows.for_each(|(r, o)| *o = row_f32(r, p.x)),
        WeightFormat::Bf16 => {
            // four rows at a time (each activation vector loaded once for all four), the rest
            // one by one; both accumulate every row in the same order, so results are equal
            let mut quads = chunk.chunks_exact(4 * row_bytes).zip(out.chunks_exact_mut(4));
            for (w, o) in &mut quads {
                let r: [&[u8]; 4] = std::array::from_fn(|i| &w[i * row_bytes..(i + 1) * row_bytes]);
                o.copy_from_slice(&rows4_bf16(r, &p.xd));
            }
            let done = out.len() / 4 * 4;
            for (r, o) in chunk[done * row_bytes..].chunks_exact(row_bytes).zip(&mut out[done..]) {
                *o = row_bf16(r, &p.xd);
            }
        }
        WeightFormat::F16 => rows.for_each(|(r, o)| *o = row_f16(r, p.x)),
        WeightFormat::Q8_0 => rows_win::<F_Q8_0>(chunk, row_bytes, p.win(), out),
        WeightFormat::Q4_0 => rows_win::<F_Q4_0>(chunk, row_bytes, p.win(), out),
        WeightFormat::Q4_1 => rows_win::<F_Q4_1>(chunk, row_bytes, p.win(), out),
        WeightFormat::Q4_K => rows_k::<true>(chunk, row_bytes, p.kq(), out),
        WeightFormat::Q6_K => rows_k::<false>(chunk, row_bytes, p.kq(), out),
        WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => {
            unreachable!("interleaved formats are dispatched by `kernels::dot_rows`")
        }
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn xor_reduce(c: &[u64]) -> u64 {
    let n = c.len();
    let p = c.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    // SAFETY: each load reads 8 u64 at indices < i + 32 <= n.
    unsafe {
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_xor_si512(*a, _mm512_loadu_si512(p.add(i + 8 * k) as *const _));
            }
            i += 32;
        }
    }
    let v = _mm512_xor_si512(_mm512_xor_si512(acc[0], acc[1]), _mm512_xor_si512(acc[2], acc[3]));
    let mut lanes = [0u64; 8];
    // SAFETY: `lanes` is 64 writable bytes.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v) };
    lanes.iter().fold(scalar::xor_reduce(&c[i..]), |a, &b| a ^ b)
}

#[target_feature(enable = "avx512f")]
fn row_f32(r: &[u8], x: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = x.len();
    assert_eq!(r.len(), 4 * n);
    let (wp, xp) = (r.as_ptr() as *const f32, x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: loads read 16 f32 at element index < i + 64 <= n (or i + 16 <= n) of `r` and `x`.
    unsafe {
        while i + 64 <= n {
            for l in [0, 64, 128, 192] {
                prefetch((wp as *const u8).wrapping_add(4 * i + l), pf);
            }
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(
                    _mm512_loadu_ps(wp.add(i + 16 * k)),
                    _mm512_loadu_ps(xp.add(i + 16 * k)),
                    *a,
                );
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc[0]);
            i += 16;
        }
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v)
        + r[4 * i..]
            .chunks_exact(4)
            .zip(&x[i..])
            .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
            .sum::<f32>()
}

#[target_feature(enable = "avx512f,f16c")]
fn row_f16(r: &[u8], x: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = x.len();
    assert_eq!(r.len(), 2 * n);
    let (wp, xp) = (r.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: loads read 16 halves (32 bytes) of `r` and 16 floats of `x` at element index < i + 64 <= n.
    unsafe {
        while i + 64 <= n {
            prefetch(wp.wrapping_add(2 * i), pf);
            prefetch(wp.wrapping_add(2 * i + 64), pf);
            for (k, a) in acc.iter_mut().enumerate() {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(2 * (i + 16 * k)) as *const __m256i));
                *a = _mm512_fmadd_ps(w, _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
            }
            i += 64;
        }
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v) + scalar::row_f16(&r[2 * i..], &x[i..])
}

/// `xd` holds x de-interleaved per 32 (even elements then odd elements); tail as is.
#[target_feature(enable = "avx512f")]
fn row_bf16(r: &[u8], xd: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = xd.len();
    assert_eq!(r.len(), 2 * n);
    let (wp, xp) = (r.as_ptr(), xd.as_ptr());
    let hi_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: loads read 32 bf16 (64 bytes) of `r` and 32 floats of `xd` at element index < i + 64 <= n
    // (or i + 32 <= n in the second loop).
    unsafe {
        while i + 64 <= n {
            prefetch(wp.wrapping_add(2 * i), pf);
            prefetch(wp.wrapping_add(2 * i + 64), pf);
            for k in 0..2 {
                let w = _mm512_loadu_si512(wp.add(2 * (i + 32 * k)) as *const _);
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
                let odd = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));
                acc[2 * k] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xp.add(i + 32 * k)), acc[2 * k]);
                acc[2 * k + 1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xp.add(i + 32 * k + 16)), acc[2 * k + 1]);
            }
            i += 64;
        }
        while i + 32 <= n {
            let w = _mm512_loadu_si512(wp.add(2 * i) as *const _);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask));
            acc[0] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xp.add(i)), acc[0]);
            acc[1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xp.add(i + 16)), acc[1]);
            i += 32;
        }
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v) + scalar::row_bf16(&r[2 * i..], &xd[i..])
}

/// [`row_bf16`] for four rows at once: the same accumulators per row in the same order (so the
/// same results), with each de-interleaved activation vector loaded once for the four rows.
#[target_feature(enable = "avx512f")]
fn rows4_bf16(r: [&[u8]; 4], xd: &[f32]) -> [f32; 4] {
    let pf = super::prefetch_distance();
    let n = xd.len();
    for row in &r {
        assert_eq!(row.len(), 2 * n);
    }
    let wp = r.map(<[u8]>::as_ptr);
    let xp = xd.as_ptr();
    let hi_mask = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut i = 0;
    // SAFETY: loads read 32 bf16 (64 bytes) of each row and 32 floats of `xd` at element index
    // < i + 64 <= n (or i + 32 <= n in the second loop); every row holds 2n bytes (asserted).
    unsafe {
        while i + 64 <= n {
            let x: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(xp.add(i + 16 * j)));
            // each row's prefetch stream runs on into the same row of the next four (the caller's
            // rows are contiguous, 4 per pass): past its end a row's own stream would only
            // re-touch the next row, which this pass is already reading, and the next pass would
            // start its rows cold (rows of 4 KiB are a page each, which the hardware prefetcher
            // does not cross)
            let ahead = 2 * i + pf;
            let jump = if pf > 0 && ahead >= 2 * n { 3 * 2 * n } else { 0 };
            for (a, &w) in acc.iter_mut().zip(&wp) {
                prefetch(w.wrapping_add(2 * i + jump), pf);
                prefetch(w.wrapping_add(2 * i + 64 + jump), pf);
                for k in 0..2 {
                    let v = _mm512_loadu_si512(w.add(2 * (i + 32 * k)) as *const _);
                    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    let odd = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
                    a[2 * k] = _mm512_fmadd_ps(even, x[2 * k], a[2 * k]);
                    a[2 * k + 1] = _mm512_fmadd_ps(odd, x[2 * k + 1], a[2 * k + 1]);
                }
            }
            i += 64;
        }
        while i + 32 <= n {
            let (x0, x1) = (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(xp.add(i + 16)));
            for (a, &w) in acc.iter_mut().zip(&wp) {
                let v = _mm512_loadu_si512(w.add(2 * i) as *const _);
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                let odd = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
                a[0] = _mm512_fmadd_ps(even, x0, a[0]);
                a[1] = _mm512_fmadd_ps(odd, x1, a[1]);
            }
            i += 32;
        }
    }
    std::array::from_fn(|j| {
        let a = &acc[j];
        let v = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        _mm512_reduce_add_ps(v) + scalar::row_bf16(&r[j][2 * i..], &xd[i..])
    })
}

/// Activation vectors per lane group of the token-parallel matmul (one per i32 lane).
pub(super) const TOK_GROUP: usize = 16;
/// Lines per (token group, block) of the token-parallel activation pack: 8 × 64 bytes of
/// quants (step `s` holds elements `4s..4s+4` of each of the 16 vectors), the 16 scales and
/// the 16 per-block biases (Q4_0 `−8Σq`, Q8_0 `−128Σq`) or, for Q4_1, `d · Σq` (f32).
const TOK_LINES: usize = 10;
/// Weight rows per token-parallel tile.
const TOK_ROWS: usize = 4;

/// Quantizes activation rows `t0..t0 + 16` of `x` (`cols` wide; rows past `n` are zero) and
/// packs them for the token-parallel matmul into `out` (`cols / 32 · TOK_LINES` lines).
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn pack_tokens(f: u8, x: &[f32], cols: usize, t0: usize, out: &mut [Line]) {
    let nb = cols / 32;
    assert_eq!(out.len(), nb * TOK_LINES);
    let n = (x.len() / cols).saturating_sub(t0).min(TOK_GROUP);
    let mut qs = vec![0i8; TOK_GROUP * cols];
    let mut d = vec![0.0f32; TOK_GROUP * nb];
    for t in 0..n {
        let xr = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
        // SAFETY: AVX2/FMA are enabled for this function.
        unsafe {
            super::avx2::quantize_blocks(xr, 32, &mut qs[t * cols..(t + 1) * cols], &mut d[t * nb..(t + 1) * nb])
        };
    }
    let ones = _mm512_set1_epi8(1);
    // 16 × 32-bit index: lane t takes dword `t · cols / 4` of the 16 token rows.
    for (b, o) in out.chunks_exact_mut(TOK_LINES).enumerate() {
        let mut sum = _mm512_setzero_si512();
        let mut lanes = [0u32; TOK_GROUP];
        for s in 0..8 {
            for (t, v) in lanes.iter_mut().enumerate() {
                let q = &qs[t * cols + 32 * b + 4 * s..][..4];
                *v = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
            }
            // SAFETY: `lanes` is 64 readable bytes; `o[s]` is a 64-byte aligned line.
            unsafe {
                let v = _mm512_loadu_si512(lanes.as_ptr() as *const _);
                sum = _mm512_dpbusd_epi32(sum, ones, v);
                _mm512_store_si512(o[s].0.as_mut_ptr() as *mut _, v);
            }
        }
        let da: [f32; TOK_GROUP] = std::array::from_fn(|t| d[t * nb + b]);
        // SAFETY: `da` is 16 floats; `o[8]`, `o[9]` are 64-byte aligned lines.
        unsafe {
            let da = _mm512_loadu_ps(da.as_ptr());
            _mm512_store_ps(o[8].0.as_mut_ptr() as *mut f32, da);
            let last = o[9].0.as_mut_ptr();
            match f {
                F_Q4_1 => _mm512_store_ps(last as *mut f32, _mm512_mul_ps(da, _mm512_cvtepi32_ps(sum))),
                F_Q4_0 => _mm512_store_si512(
                    last as *mut _,
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<3>(sum)),
                ),
                _ => _mm512_store_si512(
                    last as *mut _,
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sum)),
                ),
            }
        }
    }
}

/// Unpacks one weight row of format `f` into unsigned 8-bit quants (`u`, element order; Q8_0
/// as `q + 128`), block scales `dw` and, for Q4_1, block minimums `mw`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
fn unpack_row(f: u8, row: &[u8], u: &mut [u8], dw: &mut [f32], mw: &mut [f32]) {
    let (wf, _) = win_fmt(f);
    let nb = row.len() / wf.bb;
    assert!(u.len() >= 32 * nb && dw.len() >= nb && mw.len() >= nb);
    let m4 = _mm_set1_epi8(0x0F);
    for (b, blk) in row.chunks_exact(wf.bb).enumerate() {
        dw[b] = super::f16_at(blk, 0);
        if f == F_Q4_1 {
            mw[b] = super::f16_at(blk, 2);
        }
        let q = &blk[wf.qoff..];
        // SAFETY: the block holds 16 (nibbles) or 32 quant bytes at `qoff`; `u` has room for
        // 32 bytes at `32b` (asserted above).
        unsafe {
            let dst = u.as_mut_ptr().add(32 * b);
            if f == F_Q8_0 {
                let v = _mm256_loadu_si256(q.as_ptr() as *const __m256i);
                _mm256_storeu_si256(dst as *mut __m256i, _mm256_xor_si256(v, _mm256_set1_epi8(-128)));
            } else {
                let v = _mm_loadu_si128(q.as_ptr() as *const __m128i);
                _mm_storeu_si128(dst as *mut __m128i, _mm_and_si128(v, m4));
                _mm_storeu_si128(dst.add(16) as *mut __m128i, _mm_and_si128(_mm_srli_epi16::<4>(v), m4));
            }
        }
    }
}

/// `R` unpacked weight rows × `C` token groups (16 vectors each) over `nb` blocks: returns
/// per (row, group) the 16 dot products.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set; `u[r]` must hold `32 · nb`
/// bytes, `dw[r]` (and `mw[r]` for Q4_1) `nb` floats, `p[c]` `nb · TOK_LINES` lines.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn tok_tile<const F: u8, const R: usize, const C: usize>(
    u: [*const u8; R],
    dw: [*const f32; R],
    mw: [*const f32; R],
    p: [*const Line; C],
    nb: usize,
) -> [[__m512; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    // SAFETY: every read is inside the buffers the caller vouches for: block `b < nb`,
    // quant bytes `32b + 4s .. + 4`, line `b · TOK_LINES + i` with `i < TOK_LINES`.
    unsafe {
        for b in 0..nb {
            let pb: [*const u8; C] = p.map(|q| q.add(b * TOK_LINES) as *const u8);
            let mut ia = [[_mm512_setzero_si512(); C]; R];
            if F != F_Q4_1 {
                for c in 0..C {
                    let bias = _mm512_load_si512(pb[c].add(9 * 64) as *const _);
                    for row in ia.iter_mut() {
                        row[c] = bias;
                    }
                }
            }
            for s in 0..8 {
                let xv: [__m512i; C] = std::array::from_fn(|c| _mm512_load_si512(pb[c].add(64 * s) as *const _));
                for r in 0..R {
                    let wv = _mm512_set1_epi32((u[r].add(32 * b + 4 * s) as *const i32).read_unaligned());
                    for c in 0..C {
                        ia[r][c] = _mm512_dpbusd_epi32(ia[r][c], wv, xv[c]);
                    }
                }
            }
            for c in 0..C {
                let da = _mm512_load_ps(pb[c].add(8 * 64) as *const f32);
                for r in 0..R {
                    let s = _mm512_mul_ps(_mm512_set1_ps(*dw[r].add(b)), da);
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][c]), s, acc[r][c]);
                    if F == F_Q4_1 {
                        let sa = _mm512_load_ps(pb[c].add(9 * 64) as *const f32);
                        acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(*mw[r].add(b)), sa, acc[r][c]);
                    }
                }
            }
        }
    }
    acc
}

/// Token-parallel matmul for Q4_0/Q4_1/Q8_0 (batches of ≥ 16 activation rows): packs the
/// activations 16 vectors per i32 lane group, then for tiles of [`TOK_ROWS`] unpacked weight
/// rows × 32 vectors runs `vpdpbusd` with each 4-byte weight group broadcast (one instruction =
/// 64 multiply-adds), scaling once per block. `y` is `n × rows` row-major.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set; `weight` holds `rows` rows of
/// `cols` (a multiple of 32) weights of `fmt` (one of Q4_0/Q4_1/Q8_0), `x` is `n × cols`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn matmul_tok(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    use rayon::prelude::*;
    let f = win_selector(fmt.base()).expect("token-parallel matmul on a 32-block format");
    let (wf, _) = win_fmt(f);
    let nb = cols / 32;
    let rb = nb * wf.bb;
    assert!(
        cols.is_multiple_of(32)
            && weight.len() == fmt.stored_rows(rows) * rb
            && x.len() == n * cols
            && y.len() == n * rows
    );
    let groups = n.div_ceil(TOK_GROUP);
    let gl = nb * TOK_LINES;
    let mut packs = vec![Line([0; 64]); groups * gl];
    packs.par_chunks_mut(gl).enumerate().for_each(|(g, p)| {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { pack_tokens(f, x, cols, g * TOK_GROUP, p) }
    });
    // Token blocks (in groups) whose packs stay within ~768 KiB (L2).
    let gblk = ((768usize << 10) / (gl * 64)).clamp(2, 16) & !1;
    let cr = super::align_rows(fmt, super::chunk_rows(rows));
    let mut scratch = vec![0.0f32; rows * n];
    let run = |(out, w): (&mut [f32], &[u8])| {
        // `w` is whole rows of `rb` bytes; the closure inherits this function's CPU features.
        if fmt.is_interleaved() {
            // whole 16-row groups: back to GGUF rows once per task, amortised over all n tokens
            let rows_major =
                super::interleaved::to_gguf(fmt, w, out.len() / n, cols).expect("tasks hold whole interleaved groups");
            tok_rows(f, &rows_major, rb, nb, &packs, gblk, n, out)
        } else {
            tok_rows(f, w, rb, nb, &packs, gblk, n, out)
        }
    };
    if rayon::current_num_threads() <= 1 || rows <= cr {
        run((&mut scratch, weight));
    } else {
        scratch
            .par_chunks_mut(cr * n)
            .zip(weight.par_chunks(cr * rb))
            .for_each(run);
    }
    for (ci, chunk) in scratch.chunks(cr * n).enumerate() {
        let r0 = ci * cr;
        let r = chunk.len() / n;
        for (j, src) in chunk.chunks(r).enumerate() {
            y[j * rows + r0..j * rows + r0 + r].copy_from_slice(src);
        }
    }
}

/// One task of [`matmul_tok`]: rows `w` (`rb` bytes each) against every token group; `out` is
/// `[n][rows of w]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
fn tok_rows(f: u8, w: &[u8], rb: usize, nb: usize, packs: &[Line], gblk: usize, n: usize, out: &mut [f32]) {
    let rows = w.len() / rb;
    let gl = nb * TOK_LINES;
    let groups = packs.len() / gl;
    assert!(groups * TOK_GROUP >= n && out.len() == rows * n);
    let mut u = vec![0u8; TOK_ROWS * 32 * nb];
    let mut dw = vec![0.0f32; TOK_ROWS * nb];
    let mut mw = vec![0.0f32; TOK_ROWS * nb];
    for g0 in (0..groups).step_by(gblk) {
        let g1 = (g0 + gblk).min(groups);
        for r0 in (0..rows).step_by(TOK_ROWS) {
            let nr = TOK_ROWS.min(rows - r0);
            for i in 0..nr {
                let row = &w[(r0 + i) * rb..(r0 + i + 1) * rb];
                unpack_row(
                    f,
                    row,
                    &mut u[i * 32 * nb..(i + 1) * 32 * nb],
                    &mut dw[i * nb..(i + 1) * nb],
                    &mut mw[i * nb..(i + 1) * nb],
                );
            }
            let mut g = g0;
            while g < g1 {
                let nc = if g + 2 <= g1 { 2 } else { 1 };
                let mut res = [[_mm512_setzero_ps(); 2]; TOK_ROWS];
                macro_rules! tile {
                    ($r:literal, $c:literal) => {{
                        let up: [*const u8; $r] = std::array::from_fn(|i| u[i * 32 * nb..].as_ptr());
                        let dp: [*const f32; $r] = std::array::from_fn(|i| dw[i * nb..].as_ptr());
                        let mp: [*const f32; $r] = std::array::from_fn(|i| mw[i * nb..].as_ptr());
                        let pp: [*const Line; $c] = std::array::from_fn(|c| packs[(g + c) * gl..].as_ptr());
                        // SAFETY: rows i < nr were unpacked into `u`/`dw`/`mw` (32·nb bytes and
                        // nb floats each); groups g..g+$c < groups have gl lines each.
                        let v = unsafe {
                            match f {
                                F_Q4_0 => tok_tile::<F_Q4_0, $r, $c>(up, dp, mp, pp, nb),
                                F_Q4_1 => tok_tile::<F_Q4_1, $r, $c>(up, dp, mp, pp, nb),
                                _ => tok_tile::<F_Q8_0, $r, $c>(up, dp, mp, pp, nb),
                            }
                        };
                        for (dst, src) in res.iter_mut().zip(v) {
                            dst[..$c].copy_from_slice(&src);
                        }
                    }};
                }
                match (nr, nc) {
                    (4, 2) => tile!(4, 2),
                    (4, _) => tile!(4, 1),
                    (3, 2) => tile!(3, 2),
                    (3, _) => tile!(3, 1),
                    (2, 2) => tile!(2, 2),
                    (2, _) => tile!(2, 1),
                    (_, 2) => tile!(1, 2),
                    _ => tile!(1, 1),
                }
                for (i, rr) in res.iter().enumerate().take(nr) {
                    for (c, v) in rr.iter().enumerate().take(nc) {
                        let mut lanes = [0.0f32; TOK_GROUP];
                        // SAFETY: `lanes` is 64 writable bytes.
                        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                        let t0 = (g + c) * TOK_GROUP;
                        for (t, &val) in lanes.iter().enumerate().take(n.saturating_sub(t0)) {
                            out[(t0 + t) * rows + r0 + i] = val;
                        }
                    }
                }
                g += nc;
            }
        }
    }
}

/// 64-byte aligned constant table.
#[repr(C, align(64))]
struct A64<T>(T);

/// Q4_K: byte `4l` of each dword selects the scale of lane `l` (lanes 0–7 / 8–15 belong to the
/// two sub-blocks of a register: `0|2, 1|3, 4|6, 5|7`).
static Q4K_SEL: A64<[[u8; 64]; 4]> = A64([q4k_sel(0, 2), q4k_sel(1, 3), q4k_sel(4, 6), q4k_sel(5, 7)]);

const fn q4k_sel(a: u8, b: u8) -> [u8; 64] {
    let mut v = [0u8; 64];
    let mut l = 0;
    while l < 16 {
        v[4 * l] = if l < 8 { a } else { b };
        l += 1;
    }
    v
}

/// Q6_K: word `2l` selects the scale of lane `l` (a group of 16 elements), from group `base`.
static Q6K_SEL: A64<[[u16; 32]; 4]> = A64([q6k_sel(0), q6k_sel(4), q6k_sel(8), q6k_sel(12)]);

const fn q6k_sel(base: u16) -> [u16; 32] {
    let mut v = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        v[i] = base + (i / 8) as u16;
        i += 1;
    }
    v
}

/// GF(2) affine matrices (one per qword) moving two `qh` bits to bits 4–5 of each byte: for
/// the low-nibble register bits 0–1 (bytes 0–31) and 2–3 (bytes 32–63); for the high-nibble
/// register bits 4–5 and 6–7. Row `7 − i` of a matrix selects the source bit of result bit `i`.
static Q6K_GF: A64<[[u64; 8]; 2]> = A64([gf_pair(0, 2), gf_pair(4, 6)]);

const fn gf_bits_to_45(src: u32) -> u64 {
    // result bit 4 <- src, bit 5 <- src + 1
    ((1u64 << src) << (8 * (7 - 4))) | ((1u64 << (src + 1)) << (8 * (7 - 5)))
}

const fn gf_pair(lo: u32, hi: u32) -> [u64; 8] {
    let (a, b) = (gf_bits_to_45(lo), gf_bits_to_45(hi));
    [a, a, a, a, b, b, b, b]
}

/// Q4_K (`Q4K = true`) / Q6_K matvec rows, two rows per pass.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
fn rows_k<const Q4K: bool>(chunk: &[u8], row_bytes: usize, a: &KAct, out: &mut [f32]) {
    let bb = if Q4K { 144 } else { 210 };
    let nsb = row_bytes / bb;
    assert_eq!(nsb * bb, row_bytes);
    assert_eq!(chunk.len(), row_bytes * out.len());
    assert!(a.qs.len() == 256 * nsb && a.d.len() == nsb && a.sums.len() == (if Q4K { 8 } else { 16 }) * nsb);
    let mut pairs = chunk.chunks_exact(2 * row_bytes);
    let mut outs = out.chunks_exact_mut(2);
    for (c, o) in (&mut pairs).zip(&mut outs) {
        let w = [c.as_ptr(), c[row_bytes..].as_ptr()];
        // SAFETY: both pointers start whole rows of `nsb` super-blocks inside `chunk`; `a` has
        // `nsb` super-blocks of activations (asserted above).
        let v = unsafe {
            if Q4K {
                q4k_dot::<2>(w, a, nsb)
            } else {
                q6k_dot::<2>(w, a, nsb)
            }
        };
        o.copy_from_slice(&v);
    }
    for (r, o) in pairs.remainder().chunks_exact(row_bytes).zip(outs.into_remainder()) {
        // SAFETY: as above, one row.
        *o = unsafe {
            if Q4K {
                q4k_dot::<1>([r.as_ptr()], a, nsb)
            } else {
                q6k_dot::<1>([r.as_ptr()], a, nsb)
            }
        }[0];
    }
}

/// Unpacks the 12-byte Q4_K scales/mins at `s` into (8 scale bytes, 8 min bytes), as u64.
#[inline]
fn q4k_scales_u64(s: &[u8]) -> (u64, u64) {
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let sc_lo = u0 & K1;
    let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
    let mn_lo = u1 & K1;
    let mn_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
    (sc_lo as u64 | (sc_hi as u64) << 32, mn_lo as u64 | (mn_hi as u64) << 32)
}

/// Q4_K dot products of `R` rows with the same activations. Per super-block: two 64-byte
/// loads of nibbles give 4 registers (low/high nibbles = sub-blocks `0|2, 1|3, 4|6, 5|7`), each
/// `vpdpbusd` against the reordered activations; the i32 lanes (|v| < 2^15) are multiplied by
/// their sub-block scale and summed with `vpdpwssd`; the mins use the per-sub-block sums.
///
/// # Safety
/// CPU features of the [`super::Isa::Avx512`] set; each `w[r]` valid for `nsb · 144` bytes;
/// `a` has `nsb` super-blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn q4k_dot<const R: usize>(w: [*const u8; R], a: &KAct, nsb: usize) -> [f32; R] {
    let pf = super::prefetch_distance();
    let m4 = _mm512_set1_epi8(0x0F);
    let gf_hi = _mm512_set1_epi64(0x1020_4080_0000_0000);
    // Byte 4l of each dword: scale index of lane l (lanes 0-7 / 8-15 = two sub-blocks).
    // SAFETY: the table is 4 aligned 64-byte rows.
    let idx: [__m512i; 4] = std::array::from_fn(|k| unsafe { _mm512_load_si512(Q4K_SEL.0[k].as_ptr() as *const _) });
    const LOW_BYTES: u64 = 0x1111_1111_1111_1111;
    let mut facc = [_mm512_setzero_ps(); R];
    let mut macc = [_mm_setzero_ps(); R];
    let (qp, dp, sp) = (a.qs.as_ptr(), a.d.as_ptr(), a.sums.as_ptr());
    for sb in 0..nsb {
        // SAFETY: activations of super-block `sb < nsb` (256 quants, 1 scale, 8 sums) and weight
        // bytes `[144 sb, 144 sb + 144)` of each row are in bounds by the caller's contract.
        unsafe {
            let x: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(qp.add(256 * sb + 64 * k) as *const _));
            let da = *dp.add(sb);
            let bs = _mm_loadu_si128(sp.add(8 * sb) as *const __m128i);
            for r in 0..R {
                let b = w[r].add(144 * sb);
                prefetch(b, pf);
                prefetch(b.wrapping_add(64), pf);
                prefetch(b.wrapping_add(128), pf);
                let s12 = std::slice::from_raw_parts(b.add(4), 12);
                let (sc, mn) = q4k_scales_u64(s12);
                let scv = _mm512_set1_epi64(sc as i64);
                let q0 = _mm512_loadu_si512(b.add(16) as *const _);
                let q1 = _mm512_loadu_si512(b.add(80) as *const _);
                let qv = [
                    _mm512_and_si512(q0, m4),
                    _mm512_gf2p8affine_epi64_epi8::<0>(q0, gf_hi),
                    _mm512_and_si512(q1, m4),
                    _mm512_gf2p8affine_epi64_epi8::<0>(q1, gf_hi),
                ];
                let mut iacc = _mm512_setzero_si512();
                for k in 0..4 {
                    let t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qv[k], x[k]);
                    let s = _mm512_maskz_permutexvar_epi8(LOW_BYTES, idx[k], scv);
                    iacc = _mm512_dpwssd_epi32(iacc, t, s);
                }
                let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((b as *const i32).read_unaligned()));
                let dd = _mm_mul_ps(dd, _mm_set1_ps(da));
                facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc), _mm512_broadcastss_ps(dd), facc[r]);
                let m = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64)), bs);
                let dmin = _mm_shuffle_ps::<0b01_01_01_01>(dd, dd);
                macc[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(m), dmin, macc[r]);
            }
        }
    }
    std::array::from_fn(|r| {
        let m = _mm_add_ps(macc[r], _mm_movehl_ps(macc[r], macc[r]));
        let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm512_reduce_add_ps(facc[r]) - _mm_cvtss_f32(m)
    })
}

/// Q6_K dot products of `R` rows with the same activations. Per half super-block: one 64-byte
/// load of `ql` (low nibbles = elements 0..64, high = 64..128 of the half, in order) and the 32
/// `qh` bytes broadcast to both 256-bit halves, shifted per half into bits 4–5; `vpdpbusd`
/// against the activations, `vpdpwssd` with the 16-element group scales; the `−32` offset via
/// the per-16 activation sums.
///
/// # Safety
/// CPU features of the [`super::Isa::Avx512`] set; each `w[r]` valid for `nsb · 210` bytes;
/// `a` has `nsb` super-blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn q6k_dot<const R: usize>(w: [*const u8; R], a: &KAct, nsb: usize) -> [f32; R] {
    let pf = super::prefetch_distance();
    let m4 = _mm512_set1_epi8(0x0F);
    let gf_hi = _mm512_set1_epi64(0x1020_4080_0000_0000);
    // SAFETY: the tables are aligned 64-byte rows.
    let (gf_q12, gf_q34, idx) = unsafe {
        let ld = |v: &[u64; 8]| _mm512_load_si512(v.as_ptr() as *const _);
        let idx: [__m512i; 4] = std::array::from_fn(|k| _mm512_load_si512(Q6K_SEL.0[k].as_ptr() as *const _));
        (ld(&Q6K_GF.0[0]), ld(&Q6K_GF.0[1]), idx)
    };
    const EVEN_WORDS: u32 = 0x5555_5555;
    let mut facc = [_mm512_setzero_ps(); R];
    let (qp, dp, sp) = (a.qs.as_ptr(), a.d.as_ptr(), a.sums.as_ptr());
    for sb in 0..nsb {
        // SAFETY: activations of super-block `sb < nsb` (256 quants, 1 scale, 16 sums) and
        // weight bytes `[210 sb, 210 sb + 210)` of each row are in bounds by the caller's contract.
        unsafe {
            let x: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(qp.add(256 * sb + 64 * k) as *const _));
            let da = *dp.add(sb);
            let s16 = _mm256_loadu_si256(sp.add(16 * sb) as *const __m256i);
            for r in 0..R {
                let b = w[r].add(210 * sb);
                for l in [0, 64, 128, 192] {
                    prefetch(b.wrapping_add(l), pf);
                }
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
                let sc = _mm512_zextsi256_si512(sc16);
                let mut iacc = _mm512_setzero_si512();
                for h in 0..2 {
                    let l = _mm512_loadu_si512(b.add(64 * h) as *const _);
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i));
                    let hl = _mm512_gf2p8affine_epi64_epi8::<0>(qh, gf_q12);
                    let hh = _mm512_gf2p8affine_epi64_epi8::<0>(qh, gf_q34);
                    // (l & 0x0F) | hl
                    let qlo = _mm512_ternarylogic_epi64::<0xEA>(l, m4, hl);
                    let qhi = _mm512_or_si512(_mm512_gf2p8affine_epi64_epi8::<0>(l, gf_hi), hh);
                    let tlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qlo, x[2 * h]);
                    let thi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qhi, x[2 * h + 1]);
                    let slo = _mm512_maskz_permutexvar_epi16(EVEN_WORDS, idx[2 * h], sc);
                    let shi = _mm512_maskz_permutexvar_epi16(EVEN_WORDS, idx[2 * h + 1], sc);
                    iacc = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(iacc, tlo, slo), thi, shi);
                }
                let bias = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, s16));
                let iacc = _mm512_sub_epi32(iacc, _mm512_zextsi256_si512(bias));
                let d = super::f16_at(std::slice::from_raw_parts(b.add(208), 2), 0) * da;
                facc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc), _mm512_set1_ps(d), facc[r]);
            }
        }
    }
    std::array::from_fn(|r| _mm512_reduce_add_ps(facc[r]))
}

/// Weight rows per tile of [`gemm_float`].
const GF_ROWS: usize = 4;
/// Activation rows per tile of [`gemm_float`].
const GF_TOKENS: usize = 6;

/// Blocked matmul for F32/BF16/F16 weights (prefill): `out` is `[n][rows of chunk]` for the
/// `n × cols` activations `x`. Each tile of 4 weight rows is converted to f32 once (into a
/// zero-padded scratch that stays in L1/L2) and then multiplied against every activation row,
/// 6 at a time: 24 accumulators, 10 loads per 24 FMAs. f32 accumulation; results differ from
/// `matvec` only by summation order.
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set; `chunk` holds whole rows of
/// `fmt.row_bytes(cols)` bytes, `x.len() == n * cols`, `out.len() == n * rows`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn gemm_float(fmt: WeightFormat, chunk: &[u8], cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let rb = fmt.row_bytes(cols).expect("float formats take any row length");
    let rows = chunk.len() / rb;
    assert!(chunk.len() == rows * rb && x.len() == n * cols && out.len() == n * rows && n > 0);
    let kp = cols.next_multiple_of(16);
    let tail = cols % 16;
    let tail_mask: u16 = if tail == 0 { u16::MAX } else { (1u16 << tail) - 1 };
    let full = cols / 16;
    let mut wt = vec![0.0f32; GF_ROWS * kp];
    for r0 in (0..rows).step_by(GF_ROWS) {
        let nr = GF_ROWS.min(rows - r0);
        for i in 0..GF_ROWS {
            let dst = &mut wt[i * kp..(i + 1) * kp];
            if i >= nr {
                dst.fill(0.0);
                continue;
            }
            let row = &chunk[(r0 + i) * rb..(r0 + i + 1) * rb];
            match fmt {
                WeightFormat::F32 => {
                    for (d, b) in dst.iter_mut().zip(row.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                WeightFormat::Bf16 => {
                    for (d, b) in dst.iter_mut().zip(row.chunks_exact(2)) {
                        *d = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                    }
                }
                _ => {
                    for (d, b) in dst.iter_mut().zip(row.chunks_exact(2)) {
                        *d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                    }
                }
            }
        }
        for c0 in (0..n).step_by(GF_TOKENS) {
            let nc = GF_TOKENS.min(n - c0);
            // tokens past `n` repeat the last one (their results are not stored)
            let xp: [*const f32; GF_TOKENS] = std::array::from_fn(|c| x[(c0 + c.min(nc - 1)) * cols..].as_ptr());
            let wp: [*const f32; GF_ROWS] = std::array::from_fn(|r| wt[r * kp..].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); GF_TOKENS]; GF_ROWS];
            // SAFETY: `wt` rows hold `kp` floats; activation rows hold `cols` floats, read whole
            // for the first `full` registers and through `tail_mask` for the last one.
            unsafe {
                for k in 0..full {
                    let w: [__m512; GF_ROWS] = std::array::from_fn(|r| _mm512_loadu_ps(wp[r].add(16 * k)));
                    for c in 0..GF_TOKENS {
                        let xv = _mm512_loadu_ps(xp[c].add(16 * k));
                        for r in 0..GF_ROWS {
                            acc[r][c] = _mm512_fmadd_ps(w[r], xv, acc[r][c]);
                        }
                    }
                }
                if tail > 0 {
                    let w: [__m512; GF_ROWS] = std::array::from_fn(|r| _mm512_loadu_ps(wp[r].add(16 * full)));
                    for c in 0..GF_TOKENS {
                        let xv = _mm512_maskz_loadu_ps(tail_mask, xp[c].add(16 * full));
                        for r in 0..GF_ROWS {
                            acc[r][c] = _mm512_fmadd_ps(w[r], xv, acc[r][c]);
                        }
                    }
                }
            }
            for (r, ar) in acc.iter().enumerate().take(nr) {
                for (c, v) in ar.iter().enumerate().take(nc) {
                    out[(c0 + c) * rows + r0 + r] = _mm512_reduce_add_ps(*v);
                }
            }
        }
    }
}
