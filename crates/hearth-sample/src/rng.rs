//! Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers:
//! as easy as 1, 2, 3", SC'11).
//!
//! A counter-based RNG is a keyed bijection of a counter: there is no hidden state, so the
//! random number used for a request's step `s` is `philox(key = seed, counter = s)`. The draw
//! therefore cannot depend on batch composition, scheduling order or thread count.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: maps a 128-bit counter and a 64-bit key to 128 random bits.
///
/// ```
/// use hearth_sample::philox4x32_10;
/// // Known-answer vector from the Random123 distribution.
/// assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
/// ```
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Uniform `f64` in `[0, 1)` for `(seed, step)`, with 53 random bits.
///
/// Key = the seed's two 32-bit halves; counter = `[step_lo, step_hi, 0, 0]`.
///
/// ```
/// use hearth_sample::uniform;
/// let u = uniform(42, 3);
/// assert!((0.0..1.0).contains(&u));
/// assert_eq!(u, uniform(42, 3));
/// assert_ne!(u, uniform(42, 4));
/// ```
pub fn uniform(seed: u64, step: u64) -> f64 {
    let out = philox4x32_10(
        [step as u32, (step >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    let bits = ((u64::from(out[0]) << 32) | u64::from(out[1])) >> 11;
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_is_roughly_uniform() {
        let n = 20_000;
        let mut buckets = [0usize; 10];
        for s in 0..n {
            let u = uniform(1234, s);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((1800..2200).contains(&b), "bucket count {b}");
        }
    }
}
