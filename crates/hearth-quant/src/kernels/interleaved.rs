//! Row-interleaved layouts of Q8_0 and Q4_0 ([`WeightFormat::Q8_0x16`],
//! [`WeightFormat::Q4_0x16`]) and their AVX-512 kernels.
//!
//! GGUF stores a matrix row by row, so a SIMD kernel over one row must shuffle each block's
//! scale next to its quants. Here 16 rows are interleaved instead: for every group of 16 rows
//! and every block column `b` there is one *tile* of quant registers (64 bytes each, row `r`'s
//! 4 bytes at `4r`) and one row of 16 f16 scales (row `r` at `2r`). A group stores all its
//! tiles' quant registers first, then all their scales:
//!
//! ```text
//! group g: [tile 0 quants][tile 1 quants] … [tile nb−1 quants] [scales 0][scales 1] … [scales nb−1]
//! ```
//!
//! so that every quant register is 64-byte aligned when the buffer is (see [`repack_into`]) and
//! `nb` is even, and no SIMD load straddles two cache lines.
//!
//! Q8_0 has 8 quant registers per tile (register `k` holds elements `4k..4k+4` of every row,
//! stored as `q + 128` so that they are unsigned bytes), Q4_0 has 4 (register `k` holds the
//! GGUF block bytes `4k..4k+4` of every row: low nibbles are elements `4k..`, high nibbles
//! elements `16 + 4k..`). A tile is exactly 16 GGUF blocks (544 or 288 bytes), so the matrix
//! keeps its size; the row count is padded to a multiple of 16 with zero rows.
//!
//! One `vpdpbusd` then multiplies 16 rows × 4 weights by 4 broadcast activation bytes, lane
//! `r` accumulating row `r`; one `vcvtph2ps` gives the 16 rows' scales as a vector. Per 64
//! bytes of Q8_0 weights that is one load and one `vpdpbusd` (two plus two nibble masks for
//! Q4_0), against ~8 instructions in the row-major window kernels, which is what lets decode
//! run at memory bandwidth on two cores. The activations are the same 8-bit blocks of 32 as
//! llama.cpp's `q8_0` ([`Q8Activations`]); the `+128` (Q8_0) and `−8` (Q4_0) offsets are
//! taken out exactly with each block's quant sum, so results equal
//! [`super::reference::matvec_quantized`] up to f32 rounding of the per-block scale products.

use super::{KernelError, Q8Activations, WeightFormat};

/// Rows per interleaved group.
pub const GROUP: usize = 16;

fn tile_bytes(fmt: WeightFormat) -> usize {
    GROUP * fmt.block_bytes()
}

/// Byte offsets inside one 16-row group (see the module docs).
#[derive(Clone, Copy)]
struct Layout {
    /// Tiles (blocks of 32) per row.
    nb: usize,
    /// Quant bytes per tile (16 rows × the block's quant bytes).
    qb: usize,
}

impl Layout {
    fn new(base: WeightFormat, cols: usize) -> Self {
        Layout {
            nb: cols / 32,
            qb: GROUP * (base.block_bytes() - 2),
        }
    }

    fn group_bytes(self) -> usize {
        self.nb * (self.qb + 2 * GROUP)
    }

    /// Byte `4 · lane` of quant register `k` of tile `b`.
    fn quant(self, b: usize, k: usize, lane: usize) -> usize {
        b * self.qb + 64 * k + 4 * lane
    }

    /// The f16 scale of row `lane` of tile `b`.
    fn scale(self, b: usize, lane: usize) -> usize {
        self.nb * self.qb + 2 * GROUP * b + 2 * lane
    }
}

fn check_fmt(fmt: WeightFormat) -> Result<WeightFormat, KernelError> {
    match fmt {
        WeightFormat::Q8_0 => Ok(WeightFormat::Q8_0x16),
        WeightFormat::Q4_0 => Ok(WeightFormat::Q4_0x16),
        other => Err(KernelError::NotInterleavable(other)),
    }
}

/// Repacks a row-major GGUF `Q8_0`/`Q4_0` matrix (`rows × cols`) into the interleaved layout,
/// returning the new format and bytes (`rows` padded to a multiple of 16 with zero rows).
///
/// ```
/// use hearth_quant::kernels::{interleaved, matvec, WeightFormat};
/// let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let w: Vec<f32> = (0..5 * 64).map(|i| (i as f32 * 0.11).cos()).collect();
/// let q = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q8_0, &w).unwrap();
/// let (fmt, packed) = interleaved::repack(WeightFormat::Q8_0, &q, 5, 64).unwrap();
/// assert_eq!(fmt, WeightFormat::Q8_0x16);
/// assert_eq!(packed.len(), 16 * 2 * 34); // 5 rows padded to 16, 2 blocks each
/// let (mut a, mut b) = ([0.0f32; 5], [0.0f32; 5]);
/// matvec(WeightFormat::Q8_0, &q, 5, 64, &x, &mut a).unwrap();
/// matvec(fmt, &packed, 5, 64, &x, &mut b).unwrap();
/// for (a, b) in a.iter().zip(&b) { assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0)); }
/// ```
pub fn repack(fmt: WeightFormat, src: &[u8], rows: usize, cols: usize) -> Result<(WeightFormat, Vec<u8>), KernelError> {
    let out_fmt = check_fmt(fmt)?;
    let mut out = vec![0u8; out_fmt.row_bytes(cols)? * out_fmt.stored_rows(rows)];
    repack_into(fmt, src, rows, cols, &mut out)?;
    Ok((out_fmt, out))
}

/// [`repack`] into a buffer of the caller's (e.g. one aligned to 64 bytes, so that the kernels'
/// loads never straddle cache lines): `out` must hold exactly
/// `new_fmt.row_bytes(cols) · new_fmt.stored_rows(rows)` bytes. Returns the new format.
///
/// ```
/// use hearth_quant::kernels::{interleaved, WeightFormat};
/// let w: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.2).cos()).collect();
/// let q = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q4_0, &w).unwrap();
/// let mut out = vec![0u8; 16 * 2 * 18];
/// let fmt = interleaved::repack_into(WeightFormat::Q4_0, &q, 3, 64, &mut out).unwrap();
/// assert_eq!((fmt, out), interleaved::repack(WeightFormat::Q4_0, &q, 3, 64).unwrap());
/// ```
pub fn repack_into(
    fmt: WeightFormat,
    src: &[u8],
    rows: usize,
    cols: usize,
    out: &mut [u8],
) -> Result<WeightFormat, KernelError> {
    let out_fmt = check_fmt(fmt)?;
    let rb = fmt.row_bytes(cols)?;
    let expected = rb.checked_mul(rows).ok_or(KernelError::SizeOverflow)?;
    if src.len() != expected {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Weight,
            expected,
            actual: src.len(),
        });
    }
    let total = rb
        .checked_mul(out_fmt.stored_rows(rows))
        .ok_or(KernelError::SizeOverflow)?;
    if out.len() != total {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Output,
            expected: total,
            actual: out.len(),
        });
    }
    let bb = fmt.block_bytes();
    let lay = Layout::new(fmt, cols);
    let nreg = (bb - 2) / 4;
    let flip = if fmt == WeightFormat::Q8_0 { 0x80 } else { 0 };
    if lay.nb == 0 {
        return Ok(out_fmt);
    }
    for (g, gout) in out.chunks_exact_mut(lay.group_bytes()).enumerate() {
        for lane in 0..GROUP {
            let r = g * GROUP + lane;
            if r >= rows {
                // padding rows: zero scale and zero quants
                for b in 0..lay.nb {
                    gout[lay.scale(b, lane)..lay.scale(b, lane) + 2].fill(0);
                    for k in 0..nreg {
                        gout[lay.quant(b, k, lane)..lay.quant(b, k, lane) + 4].fill(0);
                    }
                }
                continue;
            }
            for b in 0..lay.nb {
                let blk = &src[r * rb + b * bb..r * rb + (b + 1) * bb];
                gout[lay.scale(b, lane)..lay.scale(b, lane) + 2].copy_from_slice(&blk[..2]);
                for k in 0..nreg {
                    let dst = lay.quant(b, k, lane);
                    for i in 0..4 {
                        gout[dst + i] = blk[2 + 4 * k + i] ^ flip;
                    }
                }
            }
        }
    }
    Ok(out_fmt)
}

/// The GGUF bytes of row `row` of an interleaved matrix (`out.len()` = the base format's row
/// bytes), e.g. for an embedding lookup or a reference computation.
///
/// ```
/// use hearth_quant::kernels::{interleaved, WeightFormat};
/// let w: Vec<f32> = (0..3 * 32).map(|i| i as f32 / 50.0 - 1.0).collect();
/// let q = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q4_0, &w).unwrap();
/// let (fmt, packed) = interleaved::repack(WeightFormat::Q4_0, &q, 3, 32).unwrap();
/// let mut row = [0u8; 18];
/// interleaved::gguf_row(fmt, &packed, 32, 2, &mut row).unwrap();
/// assert_eq!(&row[..], &q[36..54]);
/// ```
pub fn gguf_row(fmt: WeightFormat, packed: &[u8], cols: usize, row: usize, out: &mut [u8]) -> Result<(), KernelError> {
    let base = fmt.base();
    if !fmt.is_interleaved() {
        return Err(KernelError::NotInterleavable(fmt));
    }
    let (rb, bb, nb) = (base.row_bytes(cols)?, base.block_bytes(), cols / 32);
    let tb = tile_bytes(base);
    let lay = Layout::new(base, cols);
    let (g, lane) = (row / GROUP, row % GROUP);
    if out.len() != rb {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Output,
            expected: rb,
            actual: out.len(),
        });
    }
    let need = (g + 1) * nb * tb;
    if packed.len() < need {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Weight,
            expected: need,
            actual: packed.len(),
        });
    }
    let group = &packed[g * nb * tb..(g + 1) * nb * tb];
    for b in 0..nb {
        let blk = &mut out[b * bb..(b + 1) * bb];
        blk[..2].copy_from_slice(&group[lay.scale(b, lane)..lay.scale(b, lane) + 2]);
        let nreg = (bb - 2) / 4;
        for k in 0..nreg {
            let src = lay.quant(b, k, lane);
            for i in 0..4 {
                let q = group[src + i];
                blk[2 + 4 * k + i] = if base == WeightFormat::Q8_0 { q ^ 0x80 } else { q };
            }
        }
    }
    Ok(())
}

/// Row `row` of an interleaved matrix dequantized to f32 (an embedding lookup), without
/// allocating.
///
/// ```
/// use hearth_quant::kernels::{interleaved, reference, WeightFormat};
/// let w: Vec<f32> = (0..20 * 64).map(|i| ((i * 5) % 17) as f32 / 8.0 - 1.0).collect();
/// let q = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q4_0, &w).unwrap();
/// let (fmt, packed) = interleaved::repack(WeightFormat::Q4_0, &q, 20, 64).unwrap();
/// let (mut a, mut b) = ([0.0f32; 64], [0.0f32; 64]);
/// interleaved::dequantize_row(fmt, &packed, 64, 18, &mut a).unwrap();
/// reference::dequantize_row(WeightFormat::Q4_0, &q[18 * 36..19 * 36], 64, &mut b);
/// assert_eq!(a, b);
/// ```
pub fn dequantize_row(
    fmt: WeightFormat,
    packed: &[u8],
    cols: usize,
    row: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !fmt.is_interleaved() {
        return Err(KernelError::NotInterleavable(fmt));
    }
    let base = fmt.base();
    base.row_bytes(cols)?;
    let (nb, tb) = (cols / 32, tile_bytes(base));
    let (g, lane) = (row / GROUP, row % GROUP);
    if out.len() != cols {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Output,
            expected: cols,
            actual: out.len(),
        });
    }
    if packed.len() < (g + 1) * nb * tb {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Weight,
            expected: (g + 1) * nb * tb,
            actual: packed.len(),
        });
    }
    let lay = Layout::new(base, cols);
    let group = &packed[g * nb * tb..(g + 1) * nb * tb];
    for (b, o) in out.chunks_exact_mut(32).enumerate() {
        let d = super::f16_at(group, lay.scale(b, lane));
        if base == WeightFormat::Q8_0 {
            for (e, v) in o.iter_mut().enumerate() {
                let q = (group[lay.quant(b, e / 4, lane) + e % 4] ^ 0x80) as i8;
                *v = d * q as f32;
            }
        } else {
            for j in 0..16 {
                let q = group[lay.quant(b, j / 4, lane) + j % 4];
                o[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                o[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
    }
    Ok(())
}

/// The whole matrix back in GGUF row-major layout (`rows × base row bytes`), the inverse of
/// [`repack`].
///
/// ```
/// use hearth_quant::kernels::{interleaved, WeightFormat};
/// let w: Vec<f32> = (0..17 * 64).map(|i| ((i * 7) % 23) as f32 - 11.0).collect();
/// let q = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q8_0, &w).unwrap();
/// let (fmt, packed) = interleaved::repack(WeightFormat::Q8_0, &q, 17, 64).unwrap();
/// assert_eq!(interleaved::to_gguf(fmt, &packed, 17, 64).unwrap(), q);
/// ```
pub fn to_gguf(fmt: WeightFormat, packed: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>, KernelError> {
    let rb = fmt.base().row_bytes(cols)?;
    let expected = rb.checked_mul(fmt.stored_rows(rows)).ok_or(KernelError::SizeOverflow)?;
    if packed.len() != expected {
        return Err(KernelError::LengthMismatch {
            buffer: super::Buffer::Weight,
            expected,
            actual: packed.len(),
        });
    }
    let base = fmt.base();
    let (nb, bb, tb) = (cols / 32, base.block_bytes(), tile_bytes(base));
    let nreg = (bb - 2) / 4;
    let flip = if base == WeightFormat::Q8_0 { 0x8080_8080u32 } else { 0 };
    let mut out = vec![0u8; rows * rb];
    // tile by tile, four bytes at a time (this runs once per prefill task over its weights)
    let lay = Layout::new(base, cols);
    if nb == 0 {
        return Ok(out);
    }
    for (g, group) in packed.chunks_exact(nb * tb).enumerate() {
        for b in 0..nb {
            for lane in 0..GROUP.min(rows.saturating_sub(g * GROUP)) {
                let r = g * GROUP + lane;
                let blk = &mut out[r * rb + b * bb..r * rb + (b + 1) * bb];
                blk[..2].copy_from_slice(&group[lay.scale(b, lane)..lay.scale(b, lane) + 2]);
                for k in 0..nreg {
                    let src = lay.quant(b, k, lane);
                    let v = u32::from_le_bytes([group[src], group[src + 1], group[src + 2], group[src + 3]]) ^ flip;
                    blk[2 + 4 * k..6 + 4 * k].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

/// Portable path: each row rebuilt in GGUF layout and dotted by the scalar kernel of the base
/// format (used when AVX-512 is not available or another path is forced).
pub(super) fn dot_groups_portable(
    fmt: WeightFormat,
    chunk: &[u8],
    cols: usize,
    p: &super::Prepared<'_>,
    out: &mut [f32],
) {
    let base = fmt.base();
    let rb = base.row_bytes(cols).expect("validated by the caller");
    let mut row = vec![0u8; rb];
    for (r, o) in out.iter_mut().enumerate() {
        gguf_row(fmt, chunk, cols, r, &mut row).expect("chunk holds whole groups");
        super::scalar::dot_rows(base, &row, rb, cols, p, std::slice::from_mut(o));
    }
}

/// `out[c][r] = row r of chunk · acts[c]` for `out` laid out `[acts.len()][rows]`, with
/// `rows = out.len() / acts.len()` (the chunk holds `rows.div_ceil(16)` whole groups).
///
/// # Safety
/// The CPU must support the [`super::Isa::Avx512`] feature set; every `acts[c]` must hold
/// `cols` values quantized in blocks of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
pub(super) unsafe fn gemm_groups(
    fmt: WeightFormat,
    chunk: &[u8],
    cols: usize,
    acts: &[&Q8Activations],
    out: &mut [f32],
) {
    let n = acts.len();
    let rows = out.len() / n;
    let nb = cols / 32;
    let group_bytes = nb * tile_bytes(fmt.base());
    assert!(chunk.len() >= rows.div_ceil(GROUP) * group_bytes);
    for a in acts {
        assert!(a.qs.len() == cols && a.d.len() == nb && a.sum16.len() == 2 * nb);
    }
    let q4 = fmt == WeightFormat::Q4_0x16;
    let groups = rows.div_ceil(GROUP);
    let store = |acc: &[f32; GROUP], g: usize, c: usize, out: &mut [f32]| {
        let r0 = g * GROUP;
        let m = GROUP.min(rows - r0);
        out[c * rows + r0..c * rows + r0 + m].copy_from_slice(&acc[..m]);
    };
    let mut g = 0;
    if n == 1 {
        // matvec: four groups at a time (four independent accumulation chains)
        while g + 4 <= groups {
            // SAFETY: groups g..g+4 lie inside `chunk` (asserted above); CPU features as above.
            let r = unsafe {
                if q4 {
                    tile_dot::<true, 4, 1>(chunk.as_ptr().add(g * group_bytes), group_bytes, nb, [acts[0]])
                } else {
                    tile_dot::<false, 4, 1>(chunk.as_ptr().add(g * group_bytes), group_bytes, nb, [acts[0]])
                }
            };
            for (i, acc) in r.iter().enumerate() {
                store(&acc[0], g + i, 0, out);
            }
            g += 4;
        }
        while g < groups {
            // SAFETY: as above, one group.
            let r = unsafe {
                if q4 {
                    tile_dot::<true, 1, 1>(chunk.as_ptr().add(g * group_bytes), group_bytes, nb, [acts[0]])
                } else {
                    tile_dot::<false, 1, 1>(chunk.as_ptr().add(g * group_bytes), group_bytes, nb, [acts[0]])
                }
            };
            store(&r[0][0], g, 0, out);
            g += 1;
        }
        return;
    }
    // small batches: one group × four activation vectors per pass (weights unpacked once)
    for g in 0..groups {
        let w = chunk[g * group_bytes..].as_ptr();
        let mut c = 0;
        while c + 4 <= n {
            let a = [acts[c], acts[c + 1], acts[c + 2], acts[c + 3]];
            // SAFETY: group g lies inside `chunk`; CPU features as above.
            let r = unsafe {
                if q4 {
                    tile_dot::<true, 1, 4>(w, group_bytes, nb, a)
                } else {
                    tile_dot::<false, 1, 4>(w, group_bytes, nb, a)
                }
            };
            for (j, acc) in r[0].iter().enumerate() {
                store(acc, g, c + j, out);
            }
            c += 4;
        }
        while c < n {
            // SAFETY: as above.
            let r = unsafe {
                if q4 {
                    tile_dot::<true, 1, 1>(w, group_bytes, nb, [acts[c]])
                } else {
                    tile_dot::<false, 1, 1>(w, group_bytes, nb, [acts[c]])
                }
            };
            store(&r[0][0], g, c, out);
            c += 1;
        }
    }
}

/// Dot products of `NG` consecutive 16-row groups (starting at `w`, `group_bytes` apart)
/// with `C` activation vectors: `out[g][c][lane]` = row `16g + lane` · activations `c`.
///
/// # Safety
/// The CPU must support the AVX-512 feature set; `w` must be valid for reading `NG` groups of
/// `nb` tiles; every activation vector must have `nb` blocks of 32.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
#[allow(clippy::needless_range_loop)] // lanes of several arrays advance together
unsafe fn tile_dot<const Q4: bool, const NG: usize, const C: usize>(
    w: *const u8,
    group_bytes: usize,
    nb: usize,
    acts: [&Q8Activations; C],
) -> [[[f32; GROUP]; C]; NG] {
    // SAFETY: the caller guarantees the CPU features and that `w` covers `NG` groups of `nb`
    // tiles; every pointer below stays inside one tile or one activation block.
    unsafe {
        use std::arch::x86_64::*;
        // quant bytes per tile; a group's scales follow its `nb` tiles of quants
        let qb = if Q4 { GROUP * 16 } else { GROUP * 32 };
        let offset: i32 = if Q4 { -8 } else { -128 };
        let pf = super::prefetch_distance();
        let m4 = _mm512_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); C]; NG];
        for b in 0..nb {
            let mut dx = [_mm512_setzero_ps(); C];
            let mut bias = [_mm512_setzero_si512(); C];
            let mut xq = [std::ptr::null::<u8>(); C];
            for c in 0..C {
                let a = acts[c];
                // (Q4_0: the tile sums come out ×16, see below; ×1/16 is exact)
                dx[c] = _mm512_set1_ps(if Q4 { a.d[b] * 0.0625 } else { a.d[b] });
                bias[c] = _mm512_set1_epi32(offset * (a.sum16[2 * b] + a.sum16[2 * b + 1]));
                xq[c] = a.qs.as_ptr().add(32 * b) as *const u8;
            }
            for g in 0..NG {
                // SAFETY (whole block): tile `b` of group `g` (`qb` quant bytes) and its 32
                // scale bytes lie inside the caller's buffer; activation reads stay inside
                // block `b` of `cols` quants; prefetches may point anywhere (they never fault).
                let t = w.add(g * group_bytes + b * qb);
                let sc = w.add(g * group_bytes + nb * qb + 2 * GROUP * b);
                if pf > 0 {
                    // Each of the `NG` groups' quant and scale streams is prefetched `pf` bytes
                    // ahead; past the end of its stream it runs on into the same stream of group
                    // `g + NG`, the one it is read next (the caller walks consecutive groups `NG`
                    // at a time), instead of into the next group, which this pass already reads.
                    let (qend, send) = (nb * qb, nb * 2 * GROUP);
                    let (tq, ts) = (b * qb + pf, 2 * GROUP * b + pf * 2 * GROUP / qb);
                    let next = w.wrapping_add((g + NG) * group_bytes);
                    let pq = if tq < qend {
                        t.wrapping_add(pf)
                    } else {
                        next.wrapping_add(tq - qend)
                    };
                    super::avx2::prefetch_line(pq);
                    super::avx2::prefetch_line(pq.wrapping_add(64));
                    super::avx2::prefetch_line(pq.wrapping_add(128));
                    super::avx2::prefetch_line(pq.wrapping_add(192));
                    if b % 2 == 0 {
                        // the scales' stream, as far ahead in tiles as the quants'
                        let ps = if ts < send {
                            sc.wrapping_add(pf * 2 * GROUP / qb)
                        } else {
                            next.wrapping_add(qend + ts - send)
                        };
                        super::avx2::prefetch_line(ps);
                    }
                    if !Q4 {
                        super::avx2::prefetch_line(pq.wrapping_add(256));
                        super::avx2::prefetch_line(pq.wrapping_add(320));
                        super::avx2::prefetch_line(pq.wrapping_add(384));
                        super::avx2::prefetch_line(pq.wrapping_add(448));
                    }
                }
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc as *const __m256i));
                let mut isum = bias;
                // two independent `vpdpbusd` chains per tile, joined at its end
                let mut isum2 = [_mm512_setzero_si512(); C];
                if Q4 {
                    // high nibbles stay in place (`raw & 0xF0` = 16 · nibble), so one mask each
                    // and no shift per register: the tile's sum is 16 · lo + hi16, and `dx`
                    // carries the exact factor 1/16
                    for k in 0..4 {
                        let raw = _mm512_loadu_si512(t.add(64 * k) as *const _);
                        let lo = _mm512_and_si512(raw, m4);
                        let hi16 = _mm512_andnot_si512(m4, raw);
                        for c in 0..C {
                            let xl = _mm512_set1_epi32((xq[c].add(4 * k) as *const i32).read_unaligned());
                            let xh = _mm512_set1_epi32((xq[c].add(16 + 4 * k) as *const i32).read_unaligned());
                            isum[c] = _mm512_dpbusd_epi32(isum[c], lo, xl);
                            isum2[c] = _mm512_dpbusd_epi32(isum2[c], hi16, xh);
                        }
                    }
                    for c in 0..C {
                        isum[c] = _mm512_add_epi32(_mm512_slli_epi32::<4>(isum[c]), isum2[c]);
                    }
                } else {
                    for k in 0..8 {
                        let raw = _mm512_loadu_si512(t.add(64 * k) as *const _);
                        for c in 0..C {
                            let xk = _mm512_set1_epi32((xq[c].add(4 * k) as *const i32).read_unaligned());
                            if k % 2 == 0 {
                                isum[c] = _mm512_dpbusd_epi32(isum[c], raw, xk);
                            } else {
                                isum2[c] = _mm512_dpbusd_epi32(isum2[c], raw, xk);
                            }
                        }
                    }
                    for c in 0..C {
                        isum[c] = _mm512_add_epi32(isum[c], isum2[c]);
                    }
                }
                for c in 0..C {
                    acc[g][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[c]), _mm512_mul_ps(dw, dx[c]), acc[g][c]);
                }
            }
        }
        let mut out = [[[0.0f32; GROUP]; C]; NG];
        for g in 0..NG {
            for c in 0..C {
                _mm512_storeu_ps(out[g][c].as_mut_ptr(), acc[g][c]);
            }
        }
        out
    }
}
