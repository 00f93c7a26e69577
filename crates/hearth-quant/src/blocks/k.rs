//! K-quants: 256-element super-blocks with quantized sub-block scales (and mins).
//!
//! Byte layouts (offsets within one block):
//! - Q2_K (84):  scales[16] @0 (low nibble scale, high nibble min), qs[64] @16, d @80, dmin @82
//! - Q3_K (110): hmask[32] @0, qs[64] @32, scales[12] @96 (6-bit, packed), d @108
//! - Q4_K (144): d @0, dmin @2, scales[12] @4 (6-bit scales+mins, packed), qs[128] @16
//! - Q5_K (176): d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48
//! - Q6_K (210): ql[128] @0, qh[64] @128, scales[16] (i8) @192, d @208
//! - Q8_K (292): d (f32) @0, qs[256] (i8) @4, bsums[16] (i16) @260

use super::{f16_at, nearest_int, put_f16};

/// Elements per K-quant super-block.
///
/// ```
/// assert_eq!(hearth_quant::blocks::QK_K, 256);
/// ```
pub const QK_K: usize = 256;

/// Smallest group maximum treated as non-zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

// ---------------------------------------------------------------------------------------
// Scale searches (after ggml's make_qx_quants / make_q3_quants / make_qkx2_quants).
// ---------------------------------------------------------------------------------------

/// Symmetric quantization of `x` to levels `-nmax..nmax-1`, stored in `l` offset by `nmax`.
/// Weights are `x²`; the scale is refined by trying 18 perturbed inverse scales and keeping
/// the one with the best weighted least-squares fit. Returns the scale.
fn make_qx_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(slx, sl2), &v| {
            let q = quant(iscale, v) as f32;
            let w = v * v;
            (slx + w * v * q, sl2 + w * q * q)
        })
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (quant(iscale, v) + nmax) as i8;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quantization to `-nmax..nmax-1` with iterative per-element refinement
/// (ggml's make_q3_quants with rmse): each level is re-chosen against the current
/// least-squares scale while that improves the fit. Levels are stored offset by `nmax`.
fn make_q3_quants(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * (q * q) as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = *li as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * (new_l * new_l) as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Parameters of the asymmetric (scale + min) search.
struct Qkx2 {
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// Asymmetric quantization `x ≈ scale * l - min_out` with `l` in `0..=nmax`, minimising
/// the weighted squared (or absolute) error over `nstep + 1` candidate inverse scales,
/// each followed by a closed-form weighted least-squares fit of scale and min.
/// Returns `(scale, min_out)` where `min_out >= 0`.
fn make_qkx2_quants(x: &[f32], w: &[f32], l: &mut [u8], p: &Qkx2) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32, wi: f32| wi * if p.use_mad { d.abs() } else { d * d };
    let nmax = p.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
        l[i] = q as u8;
        best_error += err(scale * q as f32 + min - x[i], w[i]);
    }
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, p.nmax);
            laux[i] = q as u8;
            let qf = q as f32;
            sum_l += w[i] * qf;
            sum_l2 += w[i] * qf * qf;
            sum_xl += w[i] * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error: f32 = (0..n)
                .map(|i| err(this_scale * laux[i] as f32 + this_min - x[i], w[i]))
                .sum();
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

// ---------------------------------------------------------------------------------------
// Shared packing helpers.
// ---------------------------------------------------------------------------------------

/// Packs 2-bit values: byte `l` of each 32-byte group `g` holds elements
/// `g*128 + l + 32*s` at bit `2*s`.
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for g in 0..2 {
        for l in 0..32 {
            let b = g * 128 + l;
            qs[g * 32 + l] = levels[b] | (levels[b + 32] << 2) | (levels[b + 64] << 4) | (levels[b + 96] << 6);
        }
    }
}

/// Element `i` of a 2-bit-packed super-block.
#[inline]
fn unpack_2bit(qs: &[u8], i: usize) -> u8 {
    let (g, r) = (i / 128, i % 128);
    (qs[g * 32 + r % 32] >> (2 * (r / 32))) & 3
}

/// 6-bit scale `j` and min `j` of the Q4_K/Q5_K packed 12-byte scale array.
#[inline]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], s: &mut [u8]) {
    s[..12].fill(0);
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// 6-bit scale `j` (0..16) of the Q3_K packed 12-byte scale array, minus 32.
#[inline]
fn scale_q3_k(j: usize, s: &[u8]) -> i32 {
    let lo = (s[j % 8] >> (4 * (j / 8))) & 0xf;
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

// ---------------------------------------------------------------------------------------
// Q2_K
// ---------------------------------------------------------------------------------------

pub(super) fn dequant_q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (j, chunk) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * (scales[j] & 0xf) as f32;
        let ml = dmin * (scales[j] >> 4) as f32;
        for (ii, o) in chunk.iter_mut().enumerate() {
            *o = dl * unpack_2bit(qs, j * 16 + ii) as f32 - ml;
        }
    }
}

pub(super) fn quant_q2_k(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let params = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for j in 0..16 {
        let xs = &x[16 * j..16 * (j + 1)];
        let mut w = [0f32; 16];
        for (wi, v) in w.iter_mut().zip(xs) {
            *wi = v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(xs, &w, &mut levels[16 * j..16 * (j + 1)], &params);
    }
    let max_scale = scales.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    out[..16].fill(0);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            out[j] = nearest_int(iscale * scales[j]) as u8;
        }
    }
    put_f16(out, 80, max_scale / 15.0);
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            out[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
        }
    }
    put_f16(out, 82, max_min / 15.0);
    let (d_all, m_all) = (f16_at(out, 80), f16_at(out, 82));
    for j in 0..16 {
        let d = d_all * (out[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (out[j] >> 4) as f32;
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, &mut out[16..80]);
}

// ---------------------------------------------------------------------------------------
// Q3_K
// ---------------------------------------------------------------------------------------

pub(super) fn dequant_q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (j, chunk) in out.chunks_exact_mut(16).enumerate() {
        let dl = d * scale_q3_k(j, scales) as f32;
        for (ii, o) in chunk.iter_mut().enumerate() {
            let i = j * 16 + ii;
            let high = (hmask[i % 32] >> (i / 32)) & 1;
            let q = unpack_2bit(qs, i) as i32 - if high == 1 { 0 } else { 4 };
            *o = dl * q as f32;
        }
    }
}

pub(super) fn quant_q3_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut amax, mut max_scale) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * (j + 1)], 4, &mut l[16 * j..16 * (j + 1)]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    out.fill(0);
    let sc = &mut out[96..108];
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            let q = (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                sc[j] = q & 0xf;
            } else {
                sc[j - 8] |= (q & 0xf) << 4;
            }
            sc[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
        }
        put_f16(out, 108, 1.0 / iscale);
    } else {
        put_f16(out, 108, 0.0);
    }
    let d_all = f16_at(out, 108);
    let mut levels = [0u8; QK_K];
    for j in 0..16 {
        let d = d_all * scale_q3_k(j, &out[96..108]) as f32;
        for ii in 0..16 {
            let i = 16 * j + ii;
            levels[i] = if d == 0.0 {
                l[i] as u8
            } else {
                (nearest_int(x[i] / d).clamp(-4, 3) + 4) as u8
            };
        }
    }
    // high bit of element i goes to bit i/32 of hmask[i % 32]
    for (i, lv) in levels.iter_mut().enumerate() {
        if *lv > 3 {
            out[i % 32] |= 1 << (i / 32);
            *lv -= 4;
        }
    }
    pack_2bit(&levels, &mut out[32..96]);
}

// ---------------------------------------------------------------------------------------
// Q4_K / Q5_K
// ---------------------------------------------------------------------------------------

pub(super) fn dequant_q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, chunk) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let shift = 4 * (j % 2);
        for (l, o) in chunk.iter_mut().enumerate() {
            *o = dl * ((qs[(j / 2) * 32 + l] >> shift) & 0xf) as f32 - ml;
        }
    }
}

pub(super) fn dequant_q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, chunk) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let shift = 4 * (j % 2);
        for (l, o) in chunk.iter_mut().enumerate() {
            let q = ((qs[(j / 2) * 32 + l] >> shift) & 0xf) | (((qh[l] >> j) & 1) << 4);
            *o = dl * q as f32 - ml;
        }
    }
}

/// Shared Q4_K/Q5_K quantizer: returns the 0..=nmax levels after writing d, dmin and the
/// packed scales into `out[..16]`.
fn quant_k4_common(x: &[f32], out: &mut [u8], nmax: i32, params: &Qkx2) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (wi, v) in w.iter_mut().zip(xs) {
            *wi = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(xs, &w, &mut levels[32 * j..32 * (j + 1)], params);
    }
    let max_scale = scales.iter().fold(0f32, |a, &s| if s > a { s } else { a });
    let max_min = mins.iter().fold(0f32, |a, &m| if m > a { m } else { a });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).clamp(0, 63) as u8;
    }
    pack_scale_min_k4(&ls, &lm, &mut out[4..16]);
    put_f16(out, 0, max_scale / 63.0);
    put_f16(out, 2, max_min / 63.0);
    let (d_all, m_all) = (f16_at(out, 0), f16_at(out, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &out[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

pub(super) fn quant_q4_k(x: &[f32], out: &mut [u8]) {
    let params = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let levels = quant_k4_common(x, out, 15, &params);
    let qs = &mut out[16..144];
    for g in 0..4 {
        for l in 0..32 {
            qs[g * 32 + l] = levels[g * 64 + l] | (levels[g * 64 + 32 + l] << 4);
        }
    }
}

pub(super) fn quant_q5_k(x: &[f32], out: &mut [u8]) {
    let params = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let levels = quant_k4_common(x, out, 31, &params);
    let (qh, qs) = out[16..176].split_at_mut(32);
    qh.fill(0);
    for g in 0..4 {
        for l in 0..32 {
            let (a, b) = (levels[g * 64 + l], levels[g * 64 + 32 + l]);
            qs[g * 32 + l] = (a & 0xf) | ((b & 0xf) << 4);
            qh[l] |= ((a >> 4) << (2 * g)) | ((b >> 4) << (2 * g + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Q6_K
// ---------------------------------------------------------------------------------------

pub(super) fn dequant_q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, o) in out.iter_mut().enumerate() {
        let (g, r) = (i / 128, i % 128);
        let (s, l) = (r / 32, r % 32);
        let lo = (ql[g * 64 + (s % 2) * 32 + l] >> (4 * (s / 2))) & 0xf;
        let hi = (qh[g * 32 + l] >> (2 * s)) & 3;
        let q = (lo | (hi << 4)) as i32 - 32;
        *o = d * (scales[i / 16] as i8) as f32 * q as f32;
    }
}

pub(super) fn quant_q6_k(x: &[f32], out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_abs, mut max_scale) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_qx_quants(&x[16 * j..16 * (j + 1)], 32, &mut l[16 * j..16 * (j + 1)]);
        if scales[j].abs() > max_abs {
            max_abs = scales[j].abs();
            max_scale = scales[j];
        }
    }
    out.fill(0);
    if max_abs < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(out, 208, 1.0 / iscale);
    for (j, &s) in scales.iter().enumerate() {
        out[192 + j] = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    let d_all = f16_at(out, 208);
    let mut levels = [0u8; QK_K];
    for j in 0..16 {
        let d = d_all * (out[192 + j] as i8) as f32;
        for ii in 0..16 {
            let i = 16 * j + ii;
            levels[i] = if d == 0.0 {
                l[i] as u8
            } else {
                (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8
            };
        }
    }
    let (ql, qh) = out[..192].split_at_mut(128);
    for g in 0..2 {
        for l in 0..32 {
            let q = |s: usize| levels[g * 128 + 32 * s + l];
            ql[g * 64 + l] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
            ql[g * 64 + 32 + l] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
            qh[g * 32 + l] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Q8_K
// ---------------------------------------------------------------------------------------

pub(super) fn dequant_q8_k(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in out.iter_mut().zip(&b[4..260]) {
        *o = d * (q as i8) as f32;
    }
}

pub(super) fn quant_q8_k(x: &[f32], out: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    out.fill(0);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    for (o, &v) in out[4..260].iter_mut().zip(x) {
        *o = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let sum: i32 = out[4 + 16 * j..4 + 16 * (j + 1)]
            .iter()
            .map(|&q| (q as i8) as i32)
            .sum();
        out[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    out[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
