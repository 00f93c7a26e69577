//! Portable kernels: integer block dot products, f32 accumulation, no intrinsics.

use super::{Prepared, Q8Activations, WeightFormat, f16_at, q4k_scales_mins};

pub(super) fn dot_rows(
    fmt: WeightFormat,
    chunk: &[u8],
    row_bytes: usize,
    cols: usize,
    p: &Prepared<'_>,
    out: &mut [f32],
) {
    let rows = chunk.chunks_exact(row_bytes).zip(out.iter_mut());
    match fmt {
        WeightFormat::F32 => rows.for_each(|(r, o)| *o = row_f32(r, p.x)),
        WeightFormat::Bf16 => rows.for_each(|(r, o)| *o = row_bf16(r, p.x)),
        WeightFormat::F16 => rows.for_each(|(r, o)| *o = row_f16(r, p.x)),
        WeightFormat::Q8_0 => rows.for_each(|(r, o)| *o = row_q8_0(r, p.q8())),
        WeightFormat::Q4_0 => rows.for_each(|(r, o)| *o = row_q4_0(r, p.q8())),
        WeightFormat::Q4_1 => rows.for_each(|(r, o)| *o = row_q4_1(r, p.q8())),
        WeightFormat::Q4_K => rows.for_each(|(r, o)| *o = row_q4_k(r, p.q8())),
        WeightFormat::Q6_K => rows.for_each(|(r, o)| *o = row_q6_k(r, p.q8())),
        WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => {
            unreachable!("interleaved formats are dispatched by `kernels::dot_rows`")
        }
    }
    let _ = cols;
}

pub(super) fn xor_reduce(c: &[u64]) -> u64 {
    c.iter().fold(0, |a, &b| a ^ b)
}

fn row_f32(r: &[u8], x: &[f32]) -> f32 {
    r.chunks_exact(4)
        .zip(x)
        .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
        .sum()
}

pub(super) fn row_bf16(r: &[u8], x: &[f32]) -> f32 {
    r.chunks_exact(2)
        .zip(x)
        .map(|(b, &v)| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * v)
        .sum()
}

pub(super) fn row_f16(r: &[u8], x: &[f32]) -> f32 {
    r.chunks_exact(2).zip(x).map(|(b, &v)| f16_at(b, 0) * v).sum()
}

fn row_q8_0(r: &[u8], a: &Q8Activations) -> f32 {
    let mut acc = 0.0f32;
    for (j, b) in r.chunks_exact(34).enumerate() {
        let q = &a.qs[32 * j..32 * j + 32];
        let dot: i32 = b[2..34].iter().zip(q).map(|(&w, &v)| (w as i8) as i32 * v as i32).sum();
        acc += f16_at(b, 0) * a.d[j] * dot as f32;
    }
    acc
}

fn row_q4_0(r: &[u8], a: &Q8Activations) -> f32 {
    let mut acc = 0.0f32;
    for (j, b) in r.chunks_exact(18).enumerate() {
        let q = &a.qs[32 * j..32 * j + 32];
        let mut dot = 0i32;
        for i in 0..16 {
            dot += (b[2 + i] & 0x0F) as i32 * q[i] as i32 + (b[2 + i] >> 4) as i32 * q[16 + i] as i32;
        }
        dot -= 8 * (a.sum16[2 * j] + a.sum16[2 * j + 1]);
        acc += f16_at(b, 0) * a.d[j] * dot as f32;
    }
    acc
}

fn row_q4_1(r: &[u8], a: &Q8Activations) -> f32 {
    let mut acc = 0.0f32;
    for (j, b) in r.chunks_exact(20).enumerate() {
        let q = &a.qs[32 * j..32 * j + 32];
        let mut dot = 0i32;
        for i in 0..16 {
            dot += (b[4 + i] & 0x0F) as i32 * q[i] as i32 + (b[4 + i] >> 4) as i32 * q[16 + i] as i32;
        }
        let asum = a.sum16[2 * j] + a.sum16[2 * j + 1];
        acc += a.d[j] * (f16_at(b, 0) * dot as f32 + f16_at(b, 2) * asum as f32);
    }
    acc
}

fn row_q4_k(r: &[u8], a: &Q8Activations) -> f32 {
    let mut acc = 0.0f32;
    for (j, b) in r.chunks_exact(144).enumerate() {
        let q = &a.qs[256 * j..256 * j + 256];
        let s16 = &a.sum16[16 * j..16 * j + 16];
        let (sc, mn) = q4k_scales_mins(&b[4..16]);
        let mut dot = 0i32;
        let mut mins = 0i32;
        for g in 0..4 {
            let qs = &b[16 + 32 * g..48 + 32 * g];
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += (qs[l] & 0x0F) as i32 * q[64 * g + l] as i32;
                hi += (qs[l] >> 4) as i32 * q[64 * g + 32 + l] as i32;
            }
            dot += sc[2 * g] as i32 * lo + sc[2 * g + 1] as i32 * hi;
        }
        for k in 0..8 {
            mins += mn[k] as i32 * (s16[2 * k] + s16[2 * k + 1]);
        }
        acc += a.d[j] * (f16_at(b, 0) * dot as f32 - f16_at(b, 2) * mins as f32);
    }
    acc
}

fn row_q6_k(r: &[u8], a: &Q8Activations) -> f32 {
    let mut acc = 0.0f32;
    for (j, b) in r.chunks_exact(210).enumerate() {
        let q = &a.qs[256 * j..256 * j + 256];
        let s16 = &a.sum16[16 * j..16 * j + 16];
        let sc = &b[192..208];
        let mut dot = 0i32;
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..160 + 32 * h];
            let qa = &q[128 * h..128 * h + 128];
            let mut part = [0i32; 8];
            for l in 0..32 {
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32;
                let s = l / 16;
                part[s] += q1 * qa[l] as i32;
                part[2 + s] += q2 * qa[32 + l] as i32;
                part[4 + s] += q3 * qa[64 + l] as i32;
                part[6 + s] += q4 * qa[96 + l] as i32;
            }
            for (k, &pk) in part.iter().enumerate() {
                dot += (sc[8 * h + k] as i8) as i32 * pk;
            }
        }
        let bias: i32 = (0..16).map(|g| (sc[g] as i8) as i32 * s16[g]).sum();
        acc += a.d[j] * f16_at(b, 208) * (dot - 32 * bias) as f32;
    }
    acc
}
