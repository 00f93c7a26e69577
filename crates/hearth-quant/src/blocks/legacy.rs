//! The 32-element "legacy" formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Quantizers reproduce gguf-py's arithmetic step by step (f32 throughout, truncation
//! after a +0.5 bias for the 4/5-bit types, round-half-away-from-zero for Q8_0, scales
//! rounded to f16 nearest-even), so their bytes are identical.

use super::{f16_at, put_f16};

const QK: usize = 32;

/// Absolute max and the signed value that attains it (first occurrence wins).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// Truncating cast of a non-negative biased value, clamped to `0..=max`.
fn trunc_clamp(v: f32, max: u8) -> u8 {
    (v.trunc().max(0.0) as u8).min(max)
}

pub(super) fn quant_q4_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    for j in 0..QK / 2 {
        let lo = trunc_clamp(x[j] * id + 8.5, 15);
        let hi = trunc_clamp(x[j + QK / 2] * id + 8.5, 15);
        out[2 + j] = lo | (hi << 4);
    }
}

pub(super) fn dequant_q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..QK / 2 {
        let q = b[2 + j];
        out[j] = ((q & 0xf) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub(super) fn quant_q4_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    for j in 0..QK / 2 {
        let lo = trunc_clamp((x[j] - min) * id + 0.5, 15);
        let hi = trunc_clamp((x[j + QK / 2] - min) * id + 0.5, 15);
        out[4 + j] = lo | (hi << 4);
    }
}

pub(super) fn dequant_q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..QK / 2 {
        let q = b[4 + j];
        out[j] = (q & 0xf) as f32 * d + m;
        out[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

/// Packs 32 five-bit values: low nibbles into `qs` (element j and j+16 share a byte),
/// the fifth bits into the little-endian u32 `qh` (bit j for element j).
fn pack5(q: &[u8; QK], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= ((v as u32 >> 4) & 1) << j;
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
    for j in 0..QK / 2 {
        qs_out[j] = (q[j] & 0xf) | ((q[j + QK / 2] & 0xf) << 4);
    }
}

fn unpack5(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0xf) | ((((qh >> j) & 1) as u8) << 4);
        q[j + QK / 2] = (qs[j] >> 4) | ((((qh >> (j + QK / 2)) & 1) as u8) << 4);
    }
    q
}

pub(super) fn quant_q5_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    let mut q = [0u8; QK];
    for (qj, &xj) in q.iter_mut().zip(x) {
        *qj = trunc_clamp(xj * id + 16.5, 31);
    }
    let (qh, qs) = out[2..].split_at_mut(4);
    pack5(&q, qh, qs);
}

pub(super) fn dequant_q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let q = unpack5(&b[2..6], &b[6..]);
    for (o, &v) in out.iter_mut().zip(&q) {
        *o = (v as i32 - 16) as f32 * d;
    }
}

pub(super) fn quant_q5_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    put_f16(out, 2, min);
    let mut q = [0u8; QK];
    for (qj, &xj) in q.iter_mut().zip(x) {
        *qj = trunc_clamp((xj - min) * id + 0.5, 31);
    }
    let (qh, qs) = out[4..].split_at_mut(4);
    pack5(&q, qh, qs);
}

pub(super) fn dequant_q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let q = unpack5(&b[4..8], &b[8..]);
    for (o, &v) in out.iter_mut().zip(&q) {
        *o = v as f32 * d + m;
    }
}

pub(super) fn quant_q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(out, 0, d);
    for (o, &v) in out[2..].iter_mut().zip(x) {
        // round half away from zero (C roundf / gguf-py np_roundf)
        *o = ((v * id).round() as i8) as u8;
    }
}

pub(super) fn dequant_q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..]) {
        *o = (q as i8) as f32 * d;
    }
}
