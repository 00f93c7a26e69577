//! Vocabulary-wide kernels written so LLVM auto-vectorises them (fixed-width lane arrays,
//! branch-free bodies). No `unsafe`.

use std::cmp::Ordering;

use crate::SampleError;

const LANES: usize = 8;
/// Chunk length for the dense cumulative-sum walk.
pub(crate) const CHUNK: usize = 1024;

/// Ranking order for candidates: larger logit first, ties by lower token id.
#[inline]
pub(crate) fn rank(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// `exp(x)` for `x <= 0`, about 1 ulp accurate, returning exactly 0 below -87.
/// Branch-free (Cody-Waite reduction + degree-7 polynomial) so loops over it vectorise.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: round-to-nearest trick
    let xc = if x > -87.0 { x } else { -87.0 };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    // The low mantissa bits of `t` hold round(x * log2 e) as a two's-complement integer.
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    if x > -87.0 { p * scale } else { 0.0 }
}

/// Maximum of the row; errors on empty rows, NaN or `+inf`. `-inf` max is returned as is.
pub(crate) fn checked_max(x: &[f32]) -> Result<f32, SampleError> {
    if x.is_empty() {
        return Err(SampleError::EmptyLogits);
    }
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for j in 0..LANES {
            let v = c[j];
            mx[j] = if v > mx[j] { v } else { mx[j] };
            bad[j] |= v.is_nan() | (v == f32::INFINITY);
        }
    }
    let mut m = mx.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut any_bad = bad.iter().any(|&b| b);
    for &v in rest {
        m = m.max(v);
        any_bad |= v.is_nan() | (v == f32::INFINITY);
    }
    if any_bad {
        if let Some(index) = x.iter().position(|v| v.is_nan()) {
            return Err(SampleError::NanLogit { index });
        }
        let index = x.iter().position(|&v| v == f32::INFINITY).unwrap_or(0);
        return Err(SampleError::PositiveInfiniteLogit { index });
    }
    Ok(m)
}

/// Maximum of a row known to be NaN-free.
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for j in 0..LANES {
            mx[j] = if c[j] > mx[j] { c[j] } else { mx[j] };
        }
    }
    rest.iter().chain(mx.iter()).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Writes `exp(x - m)` into `out` and returns per-[`CHUNK`] sums (in `chunk_sums`) and the total.
pub(crate) fn exp_shifted(x: &[f32], m: f32, out: &mut Vec<f32>, chunk_sums: &mut Vec<f64>) -> f64 {
    out.clear();
    out.resize(x.len(), 0.0);
    chunk_sums.clear();
    let mut total = 0.0f64;
    for (xc, oc) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        for (o, &a) in oc.iter_mut().zip(xc) {
            *o = fast_exp(a - m);
        }
        let s = sum(oc);
        chunk_sums.push(s);
        total += s;
    }
    total
}

/// Sum with 8 independent f32 lanes (vectorisable), combined in f64.
pub(crate) fn sum(x: &[f32]) -> f64 {
    let mut acc = [0.0f32; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().chain(rest).map(|&v| f64::from(v)).sum()
}

/// Streaming selection of the `k` best `(logit, id)` pairs by [`rank`], skipping `-inf`.
/// Result is sorted by [`rank`]. Never sorts more than ~`2k + 256` elements at a time, and
/// skips whole 64-element blocks whose maximum cannot enter the current top-k.
pub(crate) fn top_k_into(x: &[f32], k: usize, buf: &mut Vec<(f32, u32)>) {
    buf.clear();
    if k == 0 {
        return;
    }
    let cap = 2 * k + 256;
    let mut thresh = f32::NEG_INFINITY;
    const BLOCK: usize = 64;
    for (bi, block) in x.chunks(BLOCK).enumerate() {
        if max(block) <= thresh {
            continue;
        }
        let base = bi * BLOCK;
        for (j, &v) in block.iter().enumerate() {
            if v > thresh {
                // +0.0 normalises -0.0 so ties compare equal.
                buf.push((v + 0.0, (base + j) as u32));
                if buf.len() == cap {
                    buf.select_nth_unstable_by(k - 1, rank);
                    buf.truncate(k);
                    thresh = buf[k - 1].0;
                }
            }
        }
    }
    if buf.len() > k {
        buf.select_nth_unstable_by(k - 1, rank);
        buf.truncate(k);
    }
    buf.sort_unstable_by(rank);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std() {
        let mut x = 0.0f32;
        while x > -90.0 {
            let want = x.exp();
            let got = fast_exp(x);
            if x > -87.0 {
                assert!((got - want).abs() <= 2e-7 * want, "x={x} got={got} want={want}");
            } else {
                assert_eq!(got, 0.0);
            }
            x -= 0.0137;
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn top_k_streaming_matches_full_sort() {
        // Many ties and -inf entries; long enough to trigger several compactions.
        let x: Vec<f32> = (0..5000u32)
            .map(|i| {
                if i % 7 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 97) as f32
                }
            })
            .collect();
        for k in [1, 3, 50, 300, 5000] {
            let mut got = Vec::new();
            top_k_into(&x, k, &mut got);
            let mut all: Vec<(f32, u32)> = x
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| (v, i as u32))
                .collect();
            all.sort_by(rank);
            all.truncate(k);
            assert_eq!(got, all, "k={k}");
        }
    }

    #[test]
    fn checked_max_reports_problems() {
        assert_eq!(checked_max(&[]), Err(SampleError::EmptyLogits));
        assert_eq!(checked_max(&[1.0; 20]), Ok(1.0));
        let mut v = vec![0.0f32; 20];
        v[13] = f32::NAN;
        assert_eq!(checked_max(&v), Err(SampleError::NanLogit { index: 13 }));
        v[13] = f32::INFINITY;
        assert_eq!(checked_max(&v), Err(SampleError::PositiveInfiniteLogit { index: 13 }));
    }
}
