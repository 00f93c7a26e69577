//! AVX-512 kernels (F/BW/VL/VNNI/VBMI). K-quants reuse the AVX2 kernels.

use std::arch::x86_64::*;

use super::avx2::{bcast_f16, hsum, prefetch, row_q4_k, row_q6_k};
use super::{Prepared, Q8Activations, WeightFormat, scalar};

/// # Safety
/// The CPU must support AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI/VBMI. `chunk.len() == row_bytes * out.len()`,
/// `row_bytes == fmt.row_bytes(cols)` and `p` was prepared for `(Isa::Avx512, fmt)` from `cols` values.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
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
        WeightFormat::Bf16 => rows.for_each(|(r, o)| *o = row_bf16(r, &p.xd)),
        WeightFormat::F16 => rows.for_each(|(r, o)| *o = row_f16(r, p.x)),
        WeightFormat::Q8_0 => rows.for_each(|(r, o)| *o = row_q8_0(r, p.q8())),
        WeightFormat::Q4_0 => rows_q4_x::<false>(chunk, row_bytes, p.q8(), out),
        WeightFormat::Q4_1 => rows_q4_x::<true>(chunk, row_bytes, p.q8(), out),
        WeightFormat::Q4_K => rows.for_each(|(r, o)| *o = row_q4_k(r, p.q8())),
        WeightFormat::Q6_K => rows.for_each(|(r, o)| *o = row_q6_k(r, p.q8())),
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

/// One Q8_0 block with VNNI: `acc + dot · d_w · d_a`.
///
/// # Safety
/// `blk` must point to a whole 34-byte block, `x` to 32 readable i8, `ld` to 8 readable f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn q8_0_block(blk: *const u8, x: *const i8, ld: *const f32, acc: __m256) -> __m256 {
    // SAFETY: pointer validity is the caller's contract.
    unsafe {
        let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let x = _mm256_loadu_si256(x as *const __m256i);
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        let s = _mm256_mul_ps(bcast_f16(blk), _mm256_loadu_ps(ld));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc)
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn row_q8_0(r: &[u8], a: &Q8Activations) -> f32 {
    let pf = super::prefetch_distance();
    let nb = r.len() / 34;
    assert!(a.qs.len() >= 32 * nb && a.lane_d.len() >= 8 * nb);
    let (wp, qp, dp) = (r.as_ptr(), a.qs.as_ptr(), a.lane_d.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut b = 0;
    // SAFETY: blocks b..b+4 <= nb occupy bytes [34b, 34(b+4)) of `r`; activations [32b, 32(b+4))
    // and lanes [8b, 8(b+4)) are in bounds by the assertion above.
    unsafe {
        while b + 4 <= nb {
            for l in [0, 64, 128] {
                prefetch(wp.wrapping_add(34 * b + l), pf);
            }
            acc[0] = q8_0_block(wp.add(34 * b), qp.add(32 * b), dp.add(8 * b), acc[0]);
            acc[1] = q8_0_block(wp.add(34 * b + 34), qp.add(32 * b + 32), dp.add(8 * b + 8), acc[1]);
            acc[2] = q8_0_block(wp.add(34 * b + 68), qp.add(32 * b + 64), dp.add(8 * b + 16), acc[2]);
            acc[3] = q8_0_block(wp.add(34 * b + 102), qp.add(32 * b + 96), dp.add(8 * b + 24), acc[3]);
            b += 4;
        }
        while b < nb {
            acc[0] = q8_0_block(wp.add(34 * b), qp.add(32 * b), dp.add(8 * b), acc[0]);
            b += 1;
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// Q4_0 (`MIN = false`) / Q4_1 (`MIN = true`) for `rows`, dispatching pairs of rows to the
/// two-row kernel (shared activation loads, two independent weight streams).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
fn rows_q4_x<const MIN: bool>(chunk: &[u8], row_bytes: usize, a: &Q8Activations, out: &mut [f32]) {
    let mut pairs = chunk.chunks_exact(2 * row_bytes);
    let mut outs = out.chunks_exact_mut(2);
    for (c, o) in (&mut pairs).zip(&mut outs) {
        let (r0, r1) = c.split_at(row_bytes);
        let [y0, y1] = row_q4_x::<MIN, 2>([r0, r1], a);
        o[0] = y0;
        o[1] = y1;
    }
    for (r, o) in pairs.remainder().chunks_exact(row_bytes).zip(outs.into_remainder()) {
        *o = row_q4_x::<MIN, 1>([r], a)[0];
    }
}

/// Q4_0 (`MIN = false`) / Q4_1 (`MIN = true`) dot products of `R` rows (equal length) with the
/// same activations: two blocks per 512-bit step. One masked load covers both blocks; `vpermb`
/// places block A's quants in 128-bit lanes 0–1 and block B's in lanes 2–3, a per-lane variable
/// shift selects low/high nibbles, so the register lines up with 64 consecutive activations for
/// `vpdpbusd`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
fn row_q4_x<const MIN: bool, const R: usize>(rs: [&[u8]; R], a: &Q8Activations) -> [f32; R] {
    let pf = super::prefetch_distance();
    let (bb, qoff): (usize, usize) = if MIN { (20, 4) } else { (18, 2) };
    let nb = rs[0].len() / bb;
    assert!(rs.iter().all(|r| r.len() == nb * bb));
    assert!(a.qs.len() >= 32 * nb && a.lane_d.len() >= 8 * nb);
    assert!(MIN || a.lane_bias.len() >= 8 * nb);
    assert!(!MIN || a.lane_s.len() >= 8 * nb);
    let wp: [*const u8; R] = rs.map(|r| r.as_ptr());
    let qp = a.qs.as_ptr();
    let (dp, bp, sp) = (a.lane_d.as_ptr(), a.lane_bias.as_ptr(), a.lane_s.as_ptr());

    let mut idx_q = [0u8; 64];
    for (i, v) in idx_q.iter_mut().enumerate() {
        let lane = i / 16;
        *v = ((if lane < 2 { 0 } else { bb }) + qoff + i % 16) as u8;
    }
    let mut idx_d = [0u16; 16];
    let mut idx_m = [0u16; 16];
    for i in 0..16 {
        let base = if i < 8 { 0 } else { bb / 2 };
        idx_d[i] = base as u16;
        idx_m[i] = (base + 1) as u16;
    }
    let mut shifts = [0u16; 32];
    for (i, v) in shifts.iter_mut().enumerate() {
        *v = if (i / 8) % 2 == 1 { 4 } else { 0 };
    }
    // SAFETY: the index/shift tables are local arrays of exactly 64 / 32 / 32 / 64 bytes.
    let (idx_q, idx_d, idx_m, shifts) = unsafe {
        (
            _mm512_loadu_si512(idx_q.as_ptr() as *const _),
            _mm256_loadu_si256(idx_d.as_ptr() as *const __m256i),
            _mm256_loadu_si256(idx_m.as_ptr() as *const __m256i),
            _mm512_loadu_si512(shifts.as_ptr() as *const _),
        )
    };
    let m4 = _mm512_set1_epi8(0x0F);
    let pair_mask: __mmask64 = (1u64 << (2 * bb)) - 1;
    // One step = blocks 2p and 2p+1 of every row.
    let step = |p: usize, mut acc: [__m512; R]| -> [__m512; R] {
        // SAFETY: the masked loads touch only bytes [2p·bb, 2p·bb + 2bb) of each row (blocks 2p,
        // 2p+1); activations [64p, 64p+64) and lanes [16p, 16p+16) are in bounds since 2p+2 <= nb.
        unsafe {
            let x = _mm512_loadu_si512(qp.add(64 * p) as *const _);
            let ld = _mm512_loadu_ps(dp.add(16 * p));
            let init = if MIN {
                _mm512_setzero_si512()
            } else {
                _mm512_loadu_si512(bp.add(16 * p) as *const _)
            };
            for k in 0..R {
                let blk = wp[k].add(2 * bb * p);
                prefetch(blk, pf);
                let raw = _mm512_maskz_loadu_epi8(pair_mask, blk as *const i8);
                let q = _mm512_permutexvar_epi8(idx_q, raw);
                let q = _mm512_and_si512(_mm512_srlv_epi16(q, shifts), m4);
                let dot = _mm512_dpbusd_epi32(init, q, x);
                let raw256 = _mm512_castsi512_si256(raw);
                let dw = _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx_d, raw256));
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, ld), acc[k]);
                if MIN {
                    let mw = _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx_m, raw256));
                    acc[k] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(sp.add(16 * p)), acc[k]);
                }
            }
            acc
        }
    };
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    let pairs = nb / 2;
    let mut p = 0;
    while p + 2 <= pairs {
        acc0 = step(p, acc0);
        acc1 = step(p + 1, acc1);
        p += 2;
    }
    if p < pairs {
        acc0 = step(p, acc0);
    }
    let mut total = [0.0f32; R];
    for k in 0..R {
        total[k] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
    }
    if nb % 2 == 1 {
        let b = nb - 1;
        for k in 0..R {
            // SAFETY: last block b occupies bytes [bb·b, bb·b+bb) of row k; activations
            // [32b, 32b+32) and lanes [8b, 8b+8) are in bounds.
            unsafe {
                let blk = wp[k].add(bb * b);
                let q = _mm_loadu_si128(blk.add(qoff) as *const __m128i);
                let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), _mm256_set1_epi8(0x0F));
                let x = _mm256_loadu_si256(qp.add(32 * b) as *const __m256i);
                let init = if MIN {
                    _mm256_setzero_si256()
                } else {
                    _mm256_loadu_si256(bp.add(8 * b) as *const __m256i)
                };
                let dot = _mm256_dpbusd_epi32(init, q, x);
                let s = _mm256_mul_ps(bcast_f16(blk), _mm256_loadu_ps(dp.add(8 * b)));
                let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), s);
                if MIN {
                    v = _mm256_fmadd_ps(bcast_f16(blk.add(2)), _mm256_loadu_ps(sp.add(8 * b)), v);
                }
                total[k] += hsum(v);
            }
        }
    }
    total
}
