//! AVX2 + FMA + F16C kernels (256-bit).

use std::arch::x86_64::*;

use super::{Prepared, Q8Activations, WeightFormat, f16_at, q4k_scales_mins, scalar};

/// # Safety
/// The CPU must support AVX2, FMA and F16C. `chunk.len() == row_bytes * out.len()`,
/// `row_bytes == fmt.row_bytes(cols)` and `p` was prepared for `(Isa::Avx2, fmt)` from `cols` values.
#[target_feature(enable = "avx2,fma,f16c")]
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
        WeightFormat::Q4_0 => rows.for_each(|(r, o)| *o = row_q4_x::<false>(r, p.q8())),
        WeightFormat::Q4_1 => rows.for_each(|(r, o)| *o = row_q4_x::<true>(r, p.q8())),
        WeightFormat::Q4_K => rows.for_each(|(r, o)| *o = row_q4_k(r, p.q8())),
        WeightFormat::Q6_K => rows.for_each(|(r, o)| *o = row_q6_k(r, p.q8())),
        WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => {
            unreachable!("interleaved formats are dispatched by `kernels::dot_rows`")
        }
    }
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn xor_reduce(c: &[u64]) -> u64 {
    // Written so LLVM emits 256-bit loads/xors under this function's target features.
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for i in 0..8 {
            acc[i] ^= ch[i];
        }
    }
    acc.iter().fold(scalar::xor_reduce(it.remainder()), |a, &b| a ^ b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
    _mm_cvtsi128_si32(s)
}

/// Broadcast of the f16 at `p` converted to f32.
///
/// # Safety
/// `p` must be valid for reading 2 bytes.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn bcast_f16(p: *const u8) -> __m256 {
    // SAFETY: caller guarantees 2 readable bytes; unaligned read.
    let h = unsafe { (p as *const i16).read_unaligned() };
    _mm256_cvtph_ps(_mm_set1_epi16(h))
}

/// Software prefetch (into L1) of the line `dist` bytes past `p`; the address is never
/// dereferenced.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn prefetch(p: *const u8, dist: usize) {
    prefetch_line(p.wrapping_add(dist));
}

/// Software prefetch of the line at `p` (see [`prefetch`]).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn prefetch_line(p: *const u8) {
    // A prefetch is only a hint: it never faults, so a wrapping (possibly out-of-bounds) address is fine.
    // (One instruction, no run-time choice: a switchable hint cost a load, a test and two
    // jumps per prefetch in every hot loop, and `prefetcht1` never measured better here.)
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
}

#[target_feature(enable = "avx2,fma")]
fn row_f32(r: &[u8], x: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = x.len();
    assert_eq!(r.len(), 4 * n);
    let (wp, xp) = (r.as_ptr() as *const f32, x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 f32 at index < i + 32 <= n (or i + 8 <= n) of `r` (4n bytes) and `x` (n floats).
    unsafe {
        while i + 32 <= n {
            prefetch(r.as_ptr().wrapping_add(4 * i), pf);
            prefetch(r.as_ptr().wrapping_add(4 * i + 64), pf);
            for (k, a) in acc.iter_mut().enumerate() {
                let w = _mm256_loadu_ps(wp.add(i + 8 * k));
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(v)
        + r[4 * i..]
            .chunks_exact(4)
            .zip(&x[i..])
            .map(|(b, &v)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * v)
            .sum::<f32>()
}

#[target_feature(enable = "avx2,fma,f16c")]
fn row_f16(r: &[u8], x: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = x.len();
    assert_eq!(r.len(), 2 * n);
    let (wp, xp) = (r.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: loads read 8 halves (16 bytes) of `r` and 8 floats of `x` at element index < i + 32 <= n.
    unsafe {
        while i + 32 <= n {
            prefetch(wp.wrapping_add(2 * i), pf);
            for (k, a) in acc.iter_mut().enumerate() {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(2 * (i + 8 * k)) as *const __m128i));
                *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(v) + scalar::row_f16(&r[2 * i..], &x[i..])
}

/// `xd` holds x de-interleaved per 16 (even elements then odd elements); tail as is.
#[target_feature(enable = "avx2,fma")]
fn row_bf16(r: &[u8], xd: &[f32]) -> f32 {
    let pf = super::prefetch_distance();
    let n = xd.len();
    assert_eq!(r.len(), 2 * n);
    let (wp, xp) = (r.as_ptr(), xd.as_ptr());
    let hi_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: loads read 16 bf16 (32 bytes) of `r` and 16 floats of `xd` at element index < i + 32 <= n.
    unsafe {
        while i + 32 <= n {
            prefetch(wp.wrapping_add(2 * i), pf);
            for k in 0..2 {
                let w = _mm256_loadu_si256(wp.add(2 * (i + 16 * k)) as *const __m256i);
                let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
                let x0 = _mm256_loadu_ps(xp.add(i + 16 * k));
                let x1 = _mm256_loadu_ps(xp.add(i + 16 * k + 8));
                acc[2 * k] = _mm256_fmadd_ps(even, x0, acc[2 * k]);
                acc[2 * k + 1] = _mm256_fmadd_ps(odd, x1, acc[2 * k + 1]);
            }
            i += 32;
        }
        while i + 16 <= n {
            let w = _mm256_loadu_si256(wp.add(2 * i) as *const __m256i);
            let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w));
            let odd = _mm256_castsi256_ps(_mm256_and_si256(w, hi_mask));
            acc[0] = _mm256_fmadd_ps(even, _mm256_loadu_ps(xp.add(i)), acc[0]);
            acc[1] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(xp.add(i + 8)), acc[1]);
            i += 16;
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(v) + scalar::row_bf16(&r[2 * i..], &xd[i..])
}

/// Signed i8 × i8 dot of 32 bytes, as 8 i32 lanes (each the sum of 4 consecutive products).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_i8(w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// One Q8_0 block: returns (integer dot as f32 lanes, per-lane scale `d_w · d_a`).
///
/// # Safety
/// `blk` must point to a whole 34-byte block, `x` to 32 readable i8, `ld` to 8 readable f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_block(blk: *const u8, x: *const i8, ld: *const f32) -> (__m256, __m256) {
    // SAFETY: pointer validity is the caller's contract.
    unsafe {
        let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let x = _mm256_loadu_si256(x as *const __m256i);
        let s = _mm256_mul_ps(bcast_f16(blk), _mm256_loadu_ps(ld));
        (_mm256_cvtepi32_ps(dot_i8(w, x)), s)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn row_q8_0(r: &[u8], a: &Q8Activations) -> f32 {
    let pf = super::prefetch_distance();
    let nb = r.len() / 34;
    assert!(a.qs.len() >= 32 * nb && a.lane_d.len() >= 8 * nb);
    let (wp, qp, dp) = (r.as_ptr(), a.qs.as_ptr(), a.lane_d.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    // SAFETY: blocks b, b+1 < nb occupy bytes [34b, 34b+68) of `r`; activations [32b, 32b+64)
    // and lanes [8b, 8b+16) are in bounds by the assertion above.
    unsafe {
        while b + 2 <= nb {
            prefetch(wp.wrapping_add(34 * b), pf);
            prefetch(wp.wrapping_add(34 * b + 64), pf);
            let (v0, s0) = q8_0_block(wp.add(34 * b), qp.add(32 * b), dp.add(8 * b));
            let (v1, s1) = q8_0_block(wp.add(34 * b + 34), qp.add(32 * b + 32), dp.add(8 * b + 8));
            acc0 = _mm256_fmadd_ps(v0, s0, acc0);
            acc1 = _mm256_fmadd_ps(v1, s1, acc1);
            b += 2;
        }
        if b < nb {
            let (v0, s0) = q8_0_block(wp.add(34 * b), qp.add(32 * b), dp.add(8 * b));
            acc0 = _mm256_fmadd_ps(v0, s0, acc0);
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// One Q4_0 / Q4_1 block: `acc + dot · d_w · d_a (+ m · d_a · Σq_a for Q4_1)`.
///
/// # Safety
/// `blk` must point to a whole block (18 or 20 bytes), `x` to 32 readable i8 and `l` to the
/// block's 8 lanes of the activation lane arrays.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_block<const MIN: bool>(blk: *const u8, x: *const i8, a: &Q8Activations, l: usize, acc: __m256) -> __m256 {
    let qoff = if MIN { 4 } else { 2 };
    // SAFETY: pointer/lane validity is the caller's contract.
    unsafe {
        let q = _mm_loadu_si128(blk.add(qoff) as *const __m128i);
        let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), _mm256_set1_epi8(0x0F));
        let x = _mm256_loadu_si256(x as *const __m256i);
        let mut dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
        if !MIN {
            dot = _mm256_add_epi32(dot, _mm256_loadu_si256(a.lane_bias.as_ptr().add(l) as *const __m256i));
        }
        let s = _mm256_mul_ps(bcast_f16(blk), _mm256_loadu_ps(a.lane_d.as_ptr().add(l)));
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        if MIN {
            _mm256_fmadd_ps(bcast_f16(blk.add(2)), _mm256_loadu_ps(a.lane_s.as_ptr().add(l)), acc)
        } else {
            acc
        }
    }
}

/// Q4_0 (`MIN = false`) and Q4_1 (`MIN = true`).
#[target_feature(enable = "avx2,fma,f16c")]
fn row_q4_x<const MIN: bool>(r: &[u8], a: &Q8Activations) -> f32 {
    let pf = super::prefetch_distance();
    let bb = if MIN { 20 } else { 18 };
    let nb = r.len() / bb;
    assert!(a.qs.len() >= 32 * nb && a.lane_d.len() >= 8 * nb);
    assert!(MIN || a.lane_bias.len() >= 8 * nb);
    assert!(!MIN || a.lane_s.len() >= 8 * nb);
    let (wp, qp) = (r.as_ptr(), a.qs.as_ptr());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    // SAFETY: blocks b, b+1 < nb are inside `r`; activations [32b, 32b+64) and lanes
    // [8b, 8b+16) are in bounds by the assertions above.
    unsafe {
        while b + 2 <= nb {
            prefetch(wp.wrapping_add(bb * b), pf);
            acc0 = q4_block::<MIN>(wp.add(bb * b), qp.add(32 * b), a, 8 * b, acc0);
            acc1 = q4_block::<MIN>(wp.add(bb * b + bb), qp.add(32 * b + 32), a, 8 * b + 8, acc1);
            b += 2;
        }
        if b < nb {
            acc0 = q4_block::<MIN>(wp.add(bb * b), qp.add(32 * b), a, 8 * b, acc0);
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn row_q4_k(r: &[u8], a: &Q8Activations) -> f32 {
    let pf = super::prefetch_distance();
    let nb = r.len() / 144;
    assert!(a.qs.len() >= 256 * nb && a.sum16.len() >= 16 * nb);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut facc = _mm256_setzero_ps();
    let mut mins_total = 0.0f32;
    for (j, b) in r.chunks_exact(144).enumerate() {
        for l in [0, 64, 128] {
            prefetch(b.as_ptr().wrapping_add(l), pf);
        }
        let (sc, mn) = q4k_scales_mins(&b[4..16]);
        let qa = &a.qs[256 * j..256 * j + 256];
        let mut iacc = _mm256_setzero_si256();
        for g in 0..4 {
            // SAFETY: reads bytes [16+32g, 48+32g) of the 144-byte block and activations
            // [64g, 64g+64) of the 256-long `qa`.
            let (q, x0, x1) = unsafe {
                (
                    _mm256_loadu_si256(b.as_ptr().add(16 + 32 * g) as *const __m256i),
                    _mm256_loadu_si256(qa.as_ptr().add(64 * g) as *const __m256i),
                    _mm256_loadu_si256(qa.as_ptr().add(64 * g + 32) as *const __m256i),
                )
            };
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_set1_epi16(sc[2 * g] as i16));
            let phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), _mm256_set1_epi16(sc[2 * g + 1] as i16));
            iacc = _mm256_add_epi32(iacc, _mm256_add_epi32(plo, phi));
        }
        let da = a.d[j];
        facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc), _mm256_set1_ps(f16_at(b, 0) * da), facc);
        let s16 = &a.sum16[16 * j..16 * j + 16];
        let mins: i32 = (0..8).map(|k| mn[k] as i32 * (s16[2 * k] + s16[2 * k + 1])).sum();
        mins_total += f16_at(b, 2) * da * mins as f32;
    }
    hsum(facc) - mins_total
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn row_q6_k(r: &[u8], a: &Q8Activations) -> f32 {
    let pf = super::prefetch_distance();
    let nb = r.len() / 210;
    assert!(a.qs.len() >= 256 * nb && a.sum16.len() >= 16 * nb);
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let mut total = 0.0f32;
    for (j, b) in r.chunks_exact(210).enumerate() {
        for l in [0, 64, 128, 192] {
            prefetch(b.as_ptr().wrapping_add(l), pf);
        }
        let sc = &b[192..208];
        let qa = &a.qs[256 * j..256 * j + 256];
        let mut iacc = _mm256_setzero_si256();
        for h in 0..2 {
            // SAFETY: reads ql[64h..64h+64), qh[32h..32h+32) (bytes < 192 of the 210-byte block).
            let (l0, l1, hb) = unsafe {
                let p = b.as_ptr();
                (
                    _mm256_loadu_si256(p.add(64 * h) as *const __m256i),
                    _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i),
                    _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i),
                )
            };
            let qv = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(hb, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                ),
            ];
            for (k, q) in qv.into_iter().enumerate() {
                // SAFETY: activations [128h+32k, +32) of the 256-long `qa`.
                let x = unsafe { _mm256_loadu_si256(qa.as_ptr().add(128 * h + 32 * k) as *const __m256i) };
                let s0 = sc[8 * h + 2 * k] as i8 as i16;
                let s1 = sc[8 * h + 2 * k + 1] as i8 as i16;
                let sv = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), sv));
            }
        }
        let s16 = &a.sum16[16 * j..16 * j + 16];
        let bias: i32 = (0..16).map(|g| (sc[g] as i8) as i32 * s16[g]).sum();
        total += a.d[j] * f16_at(b, 208) * (hsum_i32(iacc) - 32 * bias) as f32;
    }
    total
}

/// Block-wise 8-bit quantization of `x` (see `Q8Activations`); bit-identical to the portable loop.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_blocks(x: &[f32], block: usize, qs: &mut [i8], d: &mut [f32]) {
    assert!(block.is_multiple_of(32) && x.len().is_multiple_of(block));
    assert!(qs.len() == x.len() && d.len() == x.len() / block);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for ((xb, qb), db) in x.chunks_exact(block).zip(qs.chunks_exact_mut(block)).zip(d.iter_mut()) {
        let xp = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        // SAFETY: i + 8 <= block == xb.len().
        for i in (0..block).step_by(8) {
            m = _mm256_max_ps(m, _mm256_and_ps(unsafe { _mm256_loadu_ps(xp.add(i)) }, abs_mask));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
        *db = amax / 127.0;
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        for i in (0..block).step_by(32) {
            // SAFETY: reads xb[i..i+32] and writes qb[i..i+32], both within the block (i + 32 <= block).
            unsafe {
                let q = |k: usize| {
                    let v = _mm256_mul_ps(_mm256_loadu_ps(xp.add(i + 8 * k)), inv);
                    _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
                };
                let ab = _mm256_packs_epi32(q(0), q(1));
                let ce = _mm256_packs_epi32(q(2), q(3));
                let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, ce), perm);
                _mm256_storeu_si256(qb.as_mut_ptr().add(i) as *mut __m256i, packed);
            }
        }
    }
}
