//! On-the-fly 8-bit activation quantization (llama.cpp `q8_0` / `q8_K` style).

/// Activations quantized to signed 8-bit blocks: for each block of `block_size` values,
/// `d = max|x| / 127` and `q = round_half_even(x / d)` (all zero when the block is zero).
///
/// Block size 32 pairs with Q8_0/Q4_0/Q4_1 weights, 256 with Q4_K/Q6_K. Besides the
/// quants and scales it keeps per-16 sums of the quants (for the K-quant mins/offsets)
/// and, for 32-blocks, per-4-element "lane" helpers used by the SIMD kernels.
///
/// ```
/// use hearth_quant::kernels::Q8Activations;
/// let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
/// let q = Q8Activations::quantize(&x, 32);
/// assert_eq!(q.scales()[0], 16.0 / 127.0);
/// assert_eq!(q.qs()[0], -127);
/// assert_eq!(q.qs()[16], 0);
/// ```
#[derive(Clone, Debug)]
pub struct Q8Activations {
    block: usize,
    pub(crate) qs: Vec<i8>,
    pub(crate) d: Vec<f32>,
    pub(crate) sum16: Vec<i32>,
    /// Per 4 elements: `d` of the containing block (block 32 only).
    pub(crate) lane_d: Vec<f32>,
    /// Per 4 elements: `-8 × Σ q` (Q4_0 offset correction; block 32 only).
    pub(crate) lane_bias: Vec<i32>,
    /// Per 4 elements: `d × Σ q` (Q4_1 min term; block 32 only).
    pub(crate) lane_s: Vec<f32>,
}

#[inline]
fn round_half_even(v: f32) -> f32 {
    // Exact for |v| < 2^22 under round-to-nearest-even FP mode; avoids a libm call.
    const MAGIC: f32 = 12_582_912.0; // 1.5 × 2^23
    (v + MAGIC) - MAGIC
}

/// Portable block quantization (the definition the SIMD version must match bit for bit).
pub(crate) fn quantize_portable(x: &[f32], block_size: usize, qs: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(block_size)
        .zip(qs.chunks_exact_mut(block_size))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = round_half_even(v * inv).clamp(-127.0, 127.0) as i8;
        }
        *db = scale;
    }
}

impl Q8Activations {
    /// Quantizes `x` in blocks of `block_size` (a multiple of 16).
    ///
    /// # Panics
    /// If `block_size` is not a positive multiple of 16 or `x.len()` is not a multiple of it.
    ///
    /// ```
    /// use hearth_quant::kernels::Q8Activations;
    /// let q = Q8Activations::quantize(&[0.5; 256], 256);
    /// assert!(q.qs().iter().all(|&v| v == 127));
    /// assert_eq!(q.sums16()[0], 16 * 127);
    /// ```
    pub fn quantize(x: &[f32], block_size: usize) -> Self {
        assert!(
            block_size > 0 && block_size.is_multiple_of(16),
            "activation block size must be a positive multiple of 16"
        );
        assert!(
            x.len().is_multiple_of(block_size),
            "activation length must be a multiple of the block size"
        );
        let nb = x.len() / block_size;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0.0f32; nb];
        #[cfg(target_arch = "x86_64")]
        let simd = super::Isa::Avx2.is_available();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        if simd && block_size.is_multiple_of(32) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2/FMA support was checked just above.
            unsafe {
                super::avx2::quantize_blocks(x, block_size, &mut qs, &mut d)
            };
        } else {
            quantize_portable(x, block_size, &mut qs, &mut d);
        }
        let sum16: Vec<i32> = qs.chunks_exact(16).map(|c| c.iter().map(|&v| v as i32).sum()).collect();
        let (mut lane_d, mut lane_bias, mut lane_s) = (Vec::new(), Vec::new(), Vec::new());
        if block_size == 32 {
            let lanes = x.len() / 4;
            lane_d.reserve_exact(lanes);
            lane_bias.reserve_exact(lanes);
            lane_s.reserve_exact(lanes);
            for (i, c) in qs.chunks_exact(4).enumerate() {
                let s: i32 = c.iter().map(|&v| v as i32).sum();
                let db = d[i / 8];
                lane_d.push(db);
                lane_bias.push(-8 * s);
                lane_s.push(db * s as f32);
            }
        }
        Q8Activations {
            block: block_size,
            qs,
            d,
            sum16,
            lane_d,
            lane_bias,
            lane_s,
        }
    }

    /// Elements per block.
    ///
    /// ```
    /// # use hearth_quant::kernels::Q8Activations;
    /// assert_eq!(Q8Activations::quantize(&[1.0; 64], 32).block_size(), 32);
    /// ```
    pub fn block_size(&self) -> usize {
        self.block
    }

    /// The 8-bit quants, one per input element.
    ///
    /// ```
    /// # use hearth_quant::kernels::Q8Activations;
    /// assert_eq!(Q8Activations::quantize(&[-2.0; 32], 32).qs()[5], -127);
    /// ```
    pub fn qs(&self) -> &[i8] {
        &self.qs
    }

    /// Per-block scales `d` (value ≈ `q · d`).
    ///
    /// ```
    /// # use hearth_quant::kernels::Q8Activations;
    /// assert_eq!(Q8Activations::quantize(&[0.0; 32], 32).scales(), &[0.0]);
    /// ```
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// Sums of the quants over each group of 16 consecutive elements.
    ///
    /// ```
    /// # use hearth_quant::kernels::Q8Activations;
    /// assert_eq!(Q8Activations::quantize(&[1.0; 32], 32).sums16(), &[16 * 127, 16 * 127]);
    /// ```
    pub fn sums16(&self) -> &[i32] {
        &self.sum16
    }

    /// Dequantized activations (`q · d`).
    ///
    /// ```
    /// # use hearth_quant::kernels::Q8Activations;
    /// let q = Q8Activations::quantize(&[1.0; 32], 32);
    /// assert!(q.dequantize().iter().all(|&v| (v - 1.0).abs() < 1e-6));
    /// ```
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.d[i / self.block])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_quantization_is_bit_identical_to_portable() {
        let x: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0 * if i % 512 < 32 { 0.0 } else { 1.0 })
            .collect();
        for b in [32, 256] {
            let q = Q8Activations::quantize(&x, b);
            let mut qs = vec![0i8; x.len()];
            let mut d = vec![0.0f32; x.len() / b];
            quantize_portable(&x, b, &mut qs, &mut d);
            assert_eq!(q.qs, qs, "block {b}");
            assert_eq!(q.d, d, "block {b}");
        }
    }
}
