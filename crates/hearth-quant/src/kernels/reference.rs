//! Straightforward scalar reference implementations (for tests, including other crates').

use super::{Buffer, KernelError, Q8Activations, WeightFormat, f16_at, q4k_scales_mins};

/// Dequantizes one row of `cols` weights from its raw bytes into `out`.
///
/// # Panics
/// If `row.len() != fmt.row_bytes(cols)` or `out.len() != cols`.
///
/// ```
/// use hearth_quant::kernels::{reference, WeightFormat};
/// // One Q8_0 block: d = 0.5 (f16 0x3800), quants 0..32.
/// let mut blk = vec![0x00u8, 0x38];
/// blk.extend((0..32).map(|i| i as u8));
/// let mut out = [0.0f32; 32];
/// reference::dequantize_row(WeightFormat::Q8_0, &blk, 32, &mut out);
/// assert_eq!(out[3], 1.5);
/// ```
pub fn dequantize_row(fmt: WeightFormat, row: &[u8], cols: usize, out: &mut [f32]) {
    // an interleaved format's row, once gathered (`interleaved::gguf_row`), is a GGUF row
    let fmt = fmt.base();
    let rb = fmt.row_bytes(cols).expect("cols must be a multiple of the block size");
    assert_eq!(row.len(), rb, "row byte length");
    assert_eq!(out.len(), cols, "output length");
    let bs = fmt.block_size();
    let bb = fmt.block_bytes();
    for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        match fmt {
            WeightFormat::F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            WeightFormat::Bf16 => o[0] = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
            WeightFormat::F16 => o[0] = f16_at(b, 0),
            WeightFormat::Q8_0 => {
                let d = f16_at(b, 0);
                for i in 0..32 {
                    o[i] = d * (b[2 + i] as i8) as f32;
                }
            }
            WeightFormat::Q4_0 => {
                let d = f16_at(b, 0);
                for i in 0..16 {
                    o[i] = d * ((b[2 + i] & 0x0F) as i32 - 8) as f32;
                    o[i + 16] = d * ((b[2 + i] >> 4) as i32 - 8) as f32;
                }
            }
            WeightFormat::Q4_1 => {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for i in 0..16 {
                    o[i] = d * (b[4 + i] & 0x0F) as f32 + m;
                    o[i + 16] = d * (b[4 + i] >> 4) as f32 + m;
                }
            }
            WeightFormat::Q4_K => {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = q4k_scales_mins(&b[4..16]);
                for (e, v) in o.iter_mut().enumerate() {
                    *v = d * sc[e / 32] as f32 * q4k_quant(b, e) as f32 - dmin * mn[e / 32] as f32;
                }
            }
            WeightFormat::Q6_K => {
                let d = f16_at(b, 208);
                for (e, v) in o.iter_mut().enumerate() {
                    *v = d * (b[192 + e / 16] as i8) as f32 * (q6k_quant(b, e) - 32) as f32;
                }
            }
            WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => unreachable!("mapped to the base format above"),
        }
    }
}

/// Raw 4-bit quant of element `e` (0..256) of a Q4_K super-block.
fn q4k_quant(b: &[u8], e: usize) -> u8 {
    let byte = b[16 + 32 * (e / 64) + e % 32];
    if (e / 32).is_multiple_of(2) {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// Raw 6-bit quant (0..64) of element `e` (0..256) of a Q6_K super-block.
fn q6k_quant(b: &[u8], e: usize) -> i32 {
    let (h, r) = (e / 128, e % 128);
    let (k, l) = (r / 32, r % 32);
    let ql = b[64 * h + l + 32 * (k % 2)];
    let low = if k < 2 { ql & 0x0F } else { ql >> 4 };
    let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
    (low | (high << 4)) as i32
}

fn check(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &[f32],
) -> Result<usize, KernelError> {
    let rb = fmt.row_bytes(cols)?;
    let want = rb.checked_mul(rows).ok_or(KernelError::SizeOverflow)?;
    for (buffer, expected, actual) in [
        (Buffer::Weight, want, weight.len()),
        (Buffer::Input, cols, x.len()),
        (Buffer::Output, rows, y.len()),
    ] {
        if expected != actual {
            return Err(KernelError::LengthMismatch {
                buffer,
                expected,
                actual,
            });
        }
    }
    Ok(rb)
}

/// `y = W · x` by dequantizing each row to f32 and accumulating in f64 (no activation quantization).
///
/// ```
/// use hearth_quant::kernels::{reference, WeightFormat};
/// let w: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mut y = [0.0f32];
/// reference::matvec(WeightFormat::F32, &w, 1, 2, &[3.0, 4.0], &mut y).unwrap();
/// assert_eq!(y, [11.0]);
/// ```
pub fn matvec(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    if fmt.is_interleaved() {
        let rows_major = super::interleaved::to_gguf(fmt, weight, rows, cols)?;
        return matvec(fmt.base(), &rows_major, rows, cols, x, y);
    }
    let rb = check(fmt, weight, rows, cols, x, y)?;
    let mut tmp = vec![0.0f32; cols];
    for (r, yr) in y.iter_mut().enumerate() {
        dequantize_row(fmt, &weight[r * rb..(r + 1) * rb], cols, &mut tmp);
        *yr = tmp.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum::<f64>() as f32;
    }
    Ok(())
}

/// The exact computation the fast kernels perform: for the integer-dot formats the
/// activations are quantized with [`Q8Activations::quantize`] (block
/// [`WeightFormat::activation_block`]), block dot products are summed exactly in
/// integers and combined with the scales in f64. For float formats this is [`matvec`].
///
/// ```
/// use hearth_quant::kernels::{reference, WeightFormat};
/// // Q4_0 block with d = 1.0 (0x3C00) and all nibbles 9 -> every weight is 1.0.
/// let mut blk = vec![0x00u8, 0x3C];
/// blk.extend([0x99u8; 16]);
/// let mut y = [0.0f32];
/// reference::matvec_quantized(WeightFormat::Q4_0, &blk, 1, 32, &[1.0; 32], &mut y).unwrap();
/// assert_eq!(y, [32.0]);
/// ```
pub fn matvec_quantized(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    if fmt.is_interleaved() {
        let rows_major = super::interleaved::to_gguf(fmt, weight, rows, cols)?;
        return matvec_quantized(fmt.base(), &rows_major, rows, cols, x, y);
    }
    let Some(ab) = fmt.activation_block() else {
        return matvec(fmt, weight, rows, cols, x, y);
    };
    let rb = check(fmt, weight, rows, cols, x, y)?;
    let q = Q8Activations::quantize(x, ab);
    let (qs, da, s16) = (q.qs(), q.scales(), q.sums16());
    let bb = fmt.block_bytes();
    for (r, yr) in y.iter_mut().enumerate() {
        let row = &weight[r * rb..(r + 1) * rb];
        let mut acc = 0.0f64;
        for (j, b) in row.chunks_exact(bb).enumerate() {
            let a = &qs[j * ab..(j + 1) * ab];
            let da = da[j] as f64;
            acc += match fmt {
                WeightFormat::Q8_0 => {
                    let dot: i32 = (0..32).map(|i| (b[2 + i] as i8) as i32 * a[i] as i32).sum();
                    f16_at(b, 0) as f64 * da * dot as f64
                }
                WeightFormat::Q4_0 => {
                    let dot: i32 = (0..16)
                        .map(|i| {
                            ((b[2 + i] & 0x0F) as i32 - 8) * a[i] as i32
                                + ((b[2 + i] >> 4) as i32 - 8) * a[i + 16] as i32
                        })
                        .sum();
                    f16_at(b, 0) as f64 * da * dot as f64
                }
                WeightFormat::Q4_1 => {
                    let dot: i32 = (0..16)
                        .map(|i| (b[4 + i] & 0x0F) as i32 * a[i] as i32 + (b[4 + i] >> 4) as i32 * a[i + 16] as i32)
                        .sum();
                    let asum: i32 = a.iter().map(|&v| v as i32).sum();
                    f16_at(b, 0) as f64 * da * dot as f64 + f16_at(b, 2) as f64 * da * asum as f64
                }
                WeightFormat::Q4_K => {
                    let (sc, mn) = q4k_scales_mins(&b[4..16]);
                    let mut dot = 0i64;
                    let mut mins = 0i64;
                    for sub in 0..8 {
                        let d: i32 = (0..32)
                            .map(|l| q4k_quant(b, 32 * sub + l) as i32 * a[32 * sub + l] as i32)
                            .sum();
                        dot += sc[sub] as i64 * d as i64;
                        let asum = s16[j * 16 + 2 * sub] + s16[j * 16 + 2 * sub + 1];
                        mins += mn[sub] as i64 * asum as i64;
                    }
                    f16_at(b, 0) as f64 * da * dot as f64 - f16_at(b, 2) as f64 * da * mins as f64
                }
                WeightFormat::Q6_K => {
                    let mut dot = 0i64;
                    for g in 0..16 {
                        let d: i32 = (0..16)
                            .map(|l| (q6k_quant(b, 16 * g + l) - 32) * a[16 * g + l] as i32)
                            .sum();
                        dot += (b[192 + g] as i8) as i64 * d as i64;
                    }
                    f16_at(b, 208) as f64 * da * dot as f64
                }
                _ => unreachable!("float formats handled above"),
            };
        }
        *yr = acc as f32;
    }
    Ok(())
}
