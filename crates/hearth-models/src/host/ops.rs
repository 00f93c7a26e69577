//! The fused element-wise operations of the host forward: RMSNorm (with the residual add folded
//! in), RoPE in place, SwiGLU, and single-query attention with an online softmax.
//!
//! Plain safe Rust over `f32` slices, written so that the compiler vectorises the inner loops
//! (eight independent accumulators). They move a few KB per token, next to the MBs of weights
//! the packed matrix kernels read, so they are kept simple rather than hand-tuned.

use hearth_attention::RopeLayout;

/// Accumulator lanes of the reductions (a multiple of every SIMD width in use).
const LANES: usize = 16;

/// `Σ a[i] · b[i]` with `LANES` independent partial sums.
///
/// ```
/// use hearth_models::host::ops::dot;
/// assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
/// ```
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // lanes summed pairwise (halves added), which vectorises, not one after another
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0] + tail
}

/// Reduces `x` with `f`, [`LANES`] running values side by side and then pairwise, so that
/// the loop vectorises (a single running value is one long dependency chain).
#[inline(always)]
fn lanes_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = f(acc[l], c[l]);
        }
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] = f(acc[l], acc[l + w]);
        }
    }
    chunks.remainder().iter().fold(acc[0], |a, &b| f(a, b))
}

/// Largest value of `x` (−∞ when empty).
#[inline(always)]
fn lanes_max(x: &[f32]) -> f32 {
    lanes_fold(x, f32::NEG_INFINITY, f32::max)
}

/// `Σ x[i]`, summed as [`lanes_fold`] does.
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    lanes_fold(x, 0.0, |a, b| a + b)
}

/// `Σ x[i]²`.
#[inline]
fn sum_sq(x: &[f32]) -> f32 {
    dot(x, x)
}

/// `y += a · x`.
///
/// ```
/// let mut y = [1.0, 1.0];
/// hearth_models::host::ops::axpy(&mut y, 2.0, &[3.0, 4.0]);
/// assert_eq!(y, [7.0, 9.0]);
/// ```
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    debug_assert_eq!(y.len(), x.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// RMSNorm of one row into `out`: `x / sqrt(mean(x²) + eps) · w` (as `hearth_backend::ops::rms_norm`).
///
/// ```
/// let mut out = [0.0; 2];
/// hearth_models::host::ops::rms_norm(&[1.0, -1.0], &[2.0, 2.0], 0.0, &mut out);
/// assert_eq!(out, [2.0, -2.0]);
/// ```
#[inline]
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let inv = 1.0 / (sum_sq(x) / x.len() as f32 + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        *o = x * inv * w;
    }
}

/// RMSNorm of one row in place.
///
/// ```
/// let mut x = [3.0, 4.0];
/// hearth_models::host::ops::rms_norm_in_place(&mut x, &[1.0, 1.0], 0.0);
/// assert!((x[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// ```
#[inline]
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert_eq!(x.len(), w.len());
    let inv = 1.0 / (sum_sq(x) / x.len() as f32 + eps).sqrt();
    for (x, w) in x.iter_mut().zip(w) {
        *x = *x * inv * w;
    }
}

/// The residual add fused with the next RMSNorm: `x += delta; out = RMSNorm(x) · w`.
///
/// ```
/// let (mut x, mut out) = ([1.0, -2.0], [0.0; 2]);
/// hearth_models::host::ops::add_rms_norm(&mut x, &[0.0, 1.0], &[2.0, 2.0], 0.0, &mut out);
/// assert_eq!((x, out), ([1.0, -1.0], [2.0, -2.0]));
/// ```
#[inline]
pub fn add_rms_norm(x: &mut [f32], delta: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), delta.len());
    for (x, d) in x.iter_mut().zip(delta) {
        *x += d;
    }
    rms_norm(x, w, eps, out);
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) · up[i]`, `silu(x) = x · σ(x)`.
///
/// ```
/// let mut g = [0.0, 1.0];
/// hearth_models::host::ops::silu_mul(&mut g, &[5.0, 2.0]);
/// assert_eq!(g[0], 0.0);
/// assert!((g[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
/// ```
#[inline]
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    for (g, u) in gate.iter_mut().zip(up) {
        // σ(x) from e = e^(−|x|) ∈ (0, 1]: 1/(1+e) for x ≥ 0, e/(1+e) for x < 0 (no overflow,
        // no libm call: the loop vectorises)
        let x = *g;
        let e = exp_neg(-x.abs());
        let num = if x >= 0.0 { 1.0 } else { e };
        *g = x * (num / (1.0 + e)) * u;
    }
}

/// Rotates the first `2 · cos.len()` elements of one head in place by the angles whose cosines
/// and sines (already multiplied by the attention scaling) are `cos`, `sin`.
///
/// [`RopeLayout::Half`] pairs element `i` with `i + half`; [`RopeLayout::Interleaved`] pairs
/// `(2i, 2i+1)` in place. (The burn path permutes interleaved heads into rotate-half order
/// first; both queries and keys get the same permutation, so attention scores are identical.)
///
/// ```
/// use hearth_attention::RopeLayout;
/// let (c, s) = (0.5f32.cos(), 0.5f32.sin());
/// let mut x = [1.0, 0.0];
/// hearth_models::host::ops::rope(&mut x, &[c], &[s], RopeLayout::Half);
/// assert!((x[0] - c).abs() < 1e-7 && (x[1] - s).abs() < 1e-7);
/// ```
#[inline]
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = cos.len();
    debug_assert!(sin.len() == half && x.len() >= 2 * half);
    match layout {
        RopeLayout::Half => {
            let (a, b) = x[..2 * half].split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
        RopeLayout::Interleaved => {
            for (i, p) in x[..2 * half].chunks_exact_mut(2).enumerate() {
                let (x1, x2) = (p[0], p[1]);
                p[0] = x1 * cos[i] - x2 * sin[i];
                p[1] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// Softmax-weighted sum over keys `lo..hi` in one pass (online softmax): `out = Σ_s p_s · value(s)`
/// with `p = softmax(score(s))`. `out` is overwritten. Scores must not be NaN.
///
/// ```
/// let vals = [[1.0f32], [3.0]];
/// let mut out = [0.0];
/// hearth_models::host::ops::online_softmax(0, 2, &mut out, |_| 0.0, |s| &vals[s][..]);
/// assert_eq!(out, [2.0]);
/// ```
#[inline]
pub fn online_softmax<'v>(
    lo: usize,
    hi: usize,
    out: &mut [f32],
    mut score: impl FnMut(usize) -> f32,
    mut value: impl FnMut(usize) -> &'v [f32],
) {
    out.fill(0.0);
    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
    for s in lo..hi {
        let x = score(s);
        let v = value(s);
        if x > m {
            let c = (m - x).exp();
            l = l * c + 1.0;
            for (o, v) in out.iter_mut().zip(v) {
                *o = *o * c + v;
            }
            m = x;
        } else {
            let p = (x - m).exp();
            l += p;
            axpy(out, p, v);
        }
    }
    if l > 0.0 {
        let inv = 1.0 / l;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

/// `eˣ` for `x ≤ 0` (arguments below −87 give 0), relative error ≲ 2e-7, in plain arithmetic
/// the compiler vectorises (`f32::exp` is a libm call per element).
///
/// ```
/// let y = hearth_models::host::ops::exp_neg(-1.5);
/// assert!((y - (-1.5f32).exp()).abs() < 1e-7);
/// ```
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // round to nearest by the 1.5·2²³ trick (|x·log2 e| < 2²²; `f32::round` is a libm call)
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2]: Taylor to degree 6
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n ∈ [-126, 0], so n + 127 is a valid biased exponent: 2ⁿ exactly
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Keys per block of [`attend_group`].
const KEY_BLOCK: usize = 32;
/// Largest query group [`attend_group`] handles in one pass.
pub const MAX_GROUP: usize = 16;

/// Attention of the `g = qs.len() / d` query heads that share one KV head (grouped-query
/// attention), over keys `lo..hi` of `keys`/`vals` (row `s` at `s·d` / `s·dv`):
/// `out[j] = softmax_s(qs[j] · keys[s] · scale) · vals`. Keys are read once for the whole group,
/// in blocks with one running max per head (online softmax). `g` must be at most [`MAX_GROUP`].
///
/// ```
/// use hearth_models::host::ops::attend_group;
/// // two heads, one key dimension; keys 0 and 1 with values 10 and 20
/// let mut out = [0.0; 2];
/// attend_group(&[0.0, 100.0], &[1.0, 1.0], &[10.0, 20.0], 1, 1, 0, 2, 1.0, &mut out);
/// assert_eq!(out, [15.0, 15.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attend_group(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    d: usize,
    dv: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if wide_simd() {
        // SAFETY: `wide_simd` checked that this CPU has every feature `attend_group_wide` is
        // compiled for; the arguments are passed through unchanged.
        return unsafe { attend_group_wide(qs, keys, vals, d, dv, lo, hi, scale, out) };
    }
    attend_group_body(qs, keys, vals, d, dv, lo, hi, scale, out)
}

/// Whether this CPU runs the AVX-512 builds of the host ops (checked once).
#[cfg(target_arch = "x86_64")]
fn wide_simd() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2"))
}

/// [`attend_group`] compiled for AVX-512: the same operations in the same order (no
/// contraction into FMAs, so results are bit-identical), on 16-wide vectors.
///
/// # Safety
/// The CPU must support AVX-512F and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_wide(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    d: usize,
    dv: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_group_body(qs, keys, vals, d, dv, lo, hi, scale, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_body(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    d: usize,
    dv: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    out: &mut [f32],
) {
    let g = qs.len() / d.max(1);
    assert!(g <= MAX_GROUP, "attend_group: {g} heads per group (max {MAX_GROUP})");
    debug_assert_eq!(out.len(), g * dv);
    out.fill(0.0);
    let mut m = [f32::NEG_INFINITY; MAX_GROUP];
    let mut l = [0.0f32; MAX_GROUP];
    let mut p = [[0.0f32; KEY_BLOCK]; MAX_GROUP];
    let mut start = lo;
    while start < hi {
        let nb = (hi - start).min(KEY_BLOCK);
        for b in 0..nb {
            let k = &keys[(start + b) * d..(start + b + 1) * d];
            for j in 0..g {
                p[j][b] = dot(&qs[j * d..(j + 1) * d], k) * scale;
            }
        }
        for j in 0..g {
            let pj = &mut p[j][..nb];
            let mn = m[j].max(lanes_max(pj));
            if mn > m[j] {
                let c = exp_neg(m[j] - mn);
                l[j] *= c;
                out[j * dv..(j + 1) * dv].iter_mut().for_each(|o| *o *= c);
                m[j] = mn;
            }
            // the exponentials on their own (vectorised), then their sum lane by lane
            for x in pj.iter_mut() {
                *x = exp_neg(*x - mn);
            }
            l[j] += lanes_sum(pj);
        }
        for b in 0..nb {
            let v = &vals[(start + b) * dv..(start + b + 1) * dv];
            for j in 0..g {
                axpy(&mut out[j * dv..(j + 1) * dv], p[j][b], v);
            }
        }
        start += nb;
    }
    for j in 0..g {
        if l[j] > 0.0 {
            let inv = 1.0 / l[j];
            out[j * dv..(j + 1) * dv].iter_mut().for_each(|o| *o *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn close(a: &[f32], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() <= tol * scale, "{x} vs {y}");
        }
    }

    #[test]
    fn reductions_and_norms_match_f64_on_ragged_lengths() {
        let mut r = Rng(1);
        for n in [1, 3, 15, 16, 17, 33, 100, 257] {
            let (x, y, w) = (r.vec(n), r.vec(n), r.vec(n));
            let d: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            close(&[dot(&x, &y)], &[d], 1e-5 * n as f64);
            let ms: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            let want: Vec<f64> = x
                .iter()
                .zip(&w)
                .map(|(a, b)| *a as f64 / (ms + 1e-6).sqrt() * *b as f64)
                .collect();
            let mut out = vec![0.0; n];
            rms_norm(&x, &w, 1e-6, &mut out);
            close(&out, &want, 1e-5);
            let mut xi = x.clone();
            rms_norm_in_place(&mut xi, &w, 1e-6);
            assert_eq!(xi, out);
            // add + norm
            let mut xa = r.vec(n);
            let delta: Vec<f32> = x.iter().zip(&xa).map(|(a, b)| a - b).collect();
            let mut o2 = vec![0.0; n];
            add_rms_norm(&mut xa, &delta, &w, 1e-6, &mut o2);
            close(&o2, &want, 1e-5);
        }
    }

    #[test]
    fn lane_reductions_match_f64_on_ragged_lengths() {
        let mut r = Rng(9);
        for n in [0, 1, 5, 15, 16, 17, 31, 32, 33, 100] {
            let x = r.vec(n);
            let sum: f64 = x.iter().map(|v| *v as f64).sum();
            close(&[lanes_sum(&x)], &[sum], 1e-6 * (n.max(1) as f64));
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(lanes_max(&x), max, "max of {n}");
        }
    }

    #[test]
    fn silu_mul_matches_scalar() {
        let mut r = Rng(2);
        for n in [1, 7, 64, 65] {
            let (g, u) = (r.vec(n), r.vec(n));
            let want: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| {
                    let g = *g as f64 * 4.0;
                    g / (1.0 + (-g).exp()) * *u as f64
                })
                .collect();
            let mut got: Vec<f32> = g.iter().map(|v| v * 4.0).collect();
            silu_mul(&mut got, &u);
            close(&got, &want, 1e-6);
        }
    }

    #[test]
    fn rope_layouts_rotate_the_right_pairs() {
        let mut r = Rng(3);
        for half in [1, 2, 5, 32] {
            let x = r.vec(2 * half + 3); // partial rotary: the tail passes through
            let ang: Vec<f64> = (0..half).map(|i| 0.3 + i as f64).collect();
            let cos: Vec<f32> = ang.iter().map(|a| a.cos() as f32).collect();
            let sin: Vec<f32> = ang.iter().map(|a| a.sin() as f32).collect();
            let mut h = x.clone();
            rope(&mut h, &cos, &sin, RopeLayout::Half);
            let mut il = x.clone();
            rope(&mut il, &cos, &sin, RopeLayout::Interleaved);
            for i in 0..half {
                let (c, s) = (ang[i].cos(), ang[i].sin());
                let (a, b) = (x[i] as f64, x[i + half] as f64);
                close(&[h[i], h[i + half]], &[a * c - b * s, b * c + a * s], 1e-6);
                let (a, b) = (x[2 * i] as f64, x[2 * i + 1] as f64);
                close(&[il[2 * i], il[2 * i + 1]], &[a * c - b * s, b * c + a * s], 1e-6);
            }
            assert_eq!(&h[2 * half..], &x[2 * half..]);
            assert_eq!(&il[2 * half..], &x[2 * half..]);
        }
    }

    #[test]
    fn silu_mul_matches_f64() {
        let xs: Vec<f32> = (0..40_001)
            .map(|i| (i as f32 - 20_000.0) * 0.005)
            .chain([-1e4, 1e4, -90.0, 90.0, 0.0, -0.0])
            .collect();
        let up: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut g = xs.clone();
        silu_mul(&mut g, &up);
        for ((&x, &u), &y) in xs.iter().zip(&up).zip(&g) {
            let (x, u) = (x as f64, u as f64);
            let want = x / (1.0 + (-x).exp()) * u;
            assert!(
                (y as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "silu({x}) * {u} = {y} vs {want}"
            );
        }
    }

    #[test]
    fn exp_neg_matches_f64() {
        for i in 0..17400 {
            let x = -(i as f32) * 0.005;
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            assert!((got - want).abs() <= 3e-7 * want + 1e-38, "exp({x}) = {got} vs {want}");
        }
        // below −87 the result is clamped to e⁻⁸⁷ ≈ 1.6e-38: zero for every softmax weight
        assert!(exp_neg(-1000.0) < 2e-38 && exp_neg(f32::NEG_INFINITY) < 2e-38);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn attend_group_matches_two_pass_f64_on_ragged_shapes() {
        let mut r = Rng(5);
        for (g, d, dv, s) in [
            (1, 1, 1, 1),
            (3, 16, 16, 33),
            (4, 64, 64, 100),
            (8, 8, 5, 70),
            (16, 4, 4, 3),
        ] {
            let qs = r.vec(g * d);
            let keys: Vec<f32> = (0..s * d).map(|_| r.next() * 3.0).collect();
            let vals = r.vec(s * dv);
            for (lo, hi) in [(0, s), (s / 3, s), (s - 1, s)] {
                let mut out = vec![9.0; g * dv];
                attend_group(&qs, &keys, &vals, d, dv, lo, hi, 0.7, &mut out);
                for j in 0..g {
                    let sc: Vec<f64> = (lo..hi)
                        .map(|k| {
                            (0..d)
                                .map(|c| qs[j * d + c] as f64 * keys[k * d + c] as f64)
                                .sum::<f64>()
                                * 0.7f32 as f64
                        })
                        .collect();
                    let m = sc.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    let want: Vec<f64> = (0..dv)
                        .map(|c| {
                            (lo..hi)
                                .zip(&sc)
                                .map(|(k, x)| (x - m).exp() / z * vals[k * dv + c] as f64)
                                .sum()
                        })
                        .collect();
                    close(&out[j * dv..(j + 1) * dv], &want, 1e-5);
                }
            }
        }
    }

    #[test]
    fn online_softmax_matches_two_pass_f64() {
        let mut r = Rng(4);
        for (s, dv) in [(1, 1), (2, 3), (17, 8), (100, 64)] {
            let scores: Vec<f32> = (0..s).map(|_| r.next() * 10.0).collect();
            let vals: Vec<Vec<f32>> = (0..s).map(|_| r.vec(dv)).collect();
            for lo in [0, s / 2] {
                let m = scores[lo..].iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
                let z: f64 = scores[lo..].iter().map(|v| (*v as f64 - m).exp()).sum();
                let want: Vec<f64> = (0..dv)
                    .map(|j| {
                        (lo..s)
                            .map(|k| (scores[k] as f64 - m).exp() / z * vals[k][j] as f64)
                            .sum()
                    })
                    .collect();
                let mut out = vec![7.0; dv];
                online_softmax(lo, s, &mut out, |k| scores[k], |k| &vals[k][..]);
                close(&out, &want, 1e-5);
            }
        }
    }
}
