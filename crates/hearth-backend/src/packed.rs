//! Packed (block-quantized) weight matrices for device backends.
//!
//! A [`PackedMatrix`] holds a `[rows = out, cols = in]` weight in one of the [`PackedFormat`]s.
//! It is created from GGUF-layout bytes with [`crate::HearthBackend::upload_packed`] and
//! multiplied with [`crate::HearthBackend::packed_matmul`]. Backends without a packed kernel
//! (the fallback) dequantize on the host at upload and keep a dense f32 tensor; the cubecl
//! backends keep the blocks on the device in a 4-byte-aligned layout (see
//! [`PackedFormat::to_words`]) and dequantize while loading inside the kernel.

use crate::BackendError;
use burn::tensor::{Int, Tensor, backend::Backend};
use half::f16;

/// Values per block of the 32-value formats (F32, Q8_0, Q4_0), and the unit the device kernels
/// work in: every format's block ([`PackedFormat::block_len`]) is a whole number of these
/// 32-value chunks (one for the 32-value formats, eight for the 256-value K-quants).
pub const BLOCK: usize = 32;

/// Values per K-quant super-block (Q4_K, Q6_K).
pub const K_BLOCK: usize = 256;

/// A weight layout the device kernels read directly.
///
/// GGUF byte layouts (what [`crate::HearthBackend::upload_packed`] accepts), per row of
/// `cols` values, `cols / block_len` blocks:
/// - `F32`: 32 little-endian `f32` per block (128 bytes).
/// - `Q8_0`: `f16 d` + 32 × `i8 q`; value = `q · d` (34 bytes).
/// - `Q4_0`: `f16 d` + 16 bytes of nibbles; byte `j`'s low nibble is element `j`, its high
///   nibble element `j + 16`; value = `(nibble − 8) · d` (18 bytes).
/// - `Q4_K`: super-blocks of 256 (144 bytes): `f16 d`, `f16 dmin`, 12 bytes of packed 6-bit
///   scales and mins of the eight 32-value sub-blocks, 128 bytes of nibbles (sub-blocks `2i`
///   and `2i + 1` share 32 bytes: low and high nibbles); value = `d·sc·q − dmin·m`.
/// - `Q6_K`: super-blocks of 256 (210 bytes): `ql[128]` (low 4 bits), `qh[64]` (high 2 bits),
///   `i8 scales[16]` (one per 16 values), `f16 d`; value = `d·scale·(q − 32)`.
///
/// ```
/// use hearth_backend::PackedFormat;
/// assert_eq!(PackedFormat::Q8_0.block_bytes(), 34);
/// assert_eq!(PackedFormat::Q4_0.row_bytes(64).unwrap(), 36);
/// assert!(PackedFormat::Q4_0.row_bytes(48).is_err());
/// assert_eq!(PackedFormat::Q4_K.row_bytes(512).unwrap(), 288);
/// assert!(PackedFormat::Q6_K.row_bytes(96).is_err());
/// assert_eq!("q8_0".parse::<PackedFormat>().unwrap(), PackedFormat::Q8_0);
/// assert_eq!("Q6_K".parse::<PackedFormat>().unwrap(), PackedFormat::Q6_K);
/// ```
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackedFormat {
    /// Plain f32 rows.
    F32,
    /// GGUF Q8_0.
    Q8_0,
    /// GGUF Q4_0.
    Q4_0,
    /// GGUF Q4_K (256-value super-blocks).
    Q4_K,
    /// GGUF Q6_K (256-value super-blocks).
    Q6_K,
}

impl std::str::FromStr for PackedFormat {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(PackedFormat::F32),
            "q8_0" => Ok(PackedFormat::Q8_0),
            "q4_0" => Ok(PackedFormat::Q4_0),
            "q4_k" => Ok(PackedFormat::Q4_K),
            "q6_k" => Ok(PackedFormat::Q6_K),
            other => Err(BackendError::UnknownPackedFormat(other.to_string())),
        }
    }
}

/// Little-endian `f16` at `b[i..i + 2]`, as f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block's 12 packed scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl PackedFormat {
    /// Every format, in declaration order.
    pub const ALL: [PackedFormat; 5] = [
        PackedFormat::F32,
        PackedFormat::Q8_0,
        PackedFormat::Q4_0,
        PackedFormat::Q4_K,
        PackedFormat::Q6_K,
    ];

    /// Values per block: [`BLOCK`] (32) for F32, Q8_0 and Q4_0, [`K_BLOCK`] (256) for the
    /// K-quants. Rows must be a whole number of blocks.
    ///
    /// ```
    /// use hearth_backend::PackedFormat;
    /// assert_eq!((PackedFormat::Q4_0.block_len(), PackedFormat::Q4_K.block_len()), (32, 256));
    /// ```
    pub fn block_len(self) -> usize {
        match self {
            PackedFormat::F32 | PackedFormat::Q8_0 | PackedFormat::Q4_0 => BLOCK,
            PackedFormat::Q4_K | PackedFormat::Q6_K => K_BLOCK,
        }
    }

    /// Bytes of one block ([`Self::block_len`] values) in the GGUF layout.
    pub fn block_bytes(self) -> usize {
        match self {
            PackedFormat::F32 => 4 * BLOCK,
            PackedFormat::Q8_0 => 2 + BLOCK,
            PackedFormat::Q4_0 => 2 + BLOCK / 2,
            PackedFormat::Q4_K => 4 + 12 + K_BLOCK / 2,
            PackedFormat::Q6_K => K_BLOCK / 2 + K_BLOCK / 4 + K_BLOCK / 16 + 2,
        }
    }

    /// `u32` words of one block in the device layout of [`Self::to_words`].
    pub fn words_per_block(self) -> usize {
        match self {
            PackedFormat::F32 => BLOCK,
            PackedFormat::Q8_0 => 1 + BLOCK / 4,
            PackedFormat::Q4_0 => 1 + BLOCK / 8,
            // d, dmin, 3 words of scales, 32 words of nibbles
            PackedFormat::Q4_K => 2 + 3 + K_BLOCK / 8,
            // d, 32 words of ql, 16 of qh, 4 of scales
            PackedFormat::Q6_K => 1 + K_BLOCK / 8 + K_BLOCK / 16 + K_BLOCK / 64,
        }
    }

    /// Bytes of one GGUF row of `cols` values; `cols` must be a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize, BackendError> {
        let block = self.block_len();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(BackendError::PackedShape {
                format: self,
                reason: format!("row length {cols} is not a positive multiple of {block}"),
            });
        }
        Ok(cols / block * self.block_bytes())
    }

    /// `u32` words of a `[rows, cols]` matrix in the device layout (`cols` a whole number of
    /// blocks).
    pub fn matrix_words(self, rows: usize, cols: usize) -> usize {
        rows * (cols / self.block_len()) * self.words_per_block()
    }

    fn check(self, bytes: &[u8], rows: usize, cols: usize) -> Result<(), BackendError> {
        let expected = self.row_bytes(cols)?.checked_mul(rows).filter(|_| rows > 0);
        if expected != Some(bytes.len()) {
            return Err(BackendError::PackedShape {
                format: self,
                reason: format!(
                    "{} bytes for a [{rows}, {cols}] matrix (expected {})",
                    bytes.len(),
                    expected.map_or_else(|| "a non-empty matrix".to_string(), |e| e.to_string())
                ),
            });
        }
        Ok(())
    }

    /// Repacks GGUF-layout bytes into the 4-byte-aligned device layout (f16 scales become f32
    /// bits, byte arrays are read as little-endian words). Q8_0 and Q4_0 are *split*: first
    /// every block's quants, in block order, then every block's scale, so that a kernel reads a
    /// row's quants as aligned 16-byte vectors; the other formats go block after block:
    /// - `F32`: the 32 values' bits.
    /// - `Q8_0`: 8 words per block holding its 32 `i8` little-endian; then one `d` per block.
    /// - `Q4_0`: 4 words per block holding its 16 nibble bytes as in GGUF; then one `d` per
    ///   block.
    /// - `Q4_K`: `d`, `dmin`, 3 words of the 12 scale bytes, 32 words of the 128 nibble bytes.
    /// - `Q6_K`: `d`, 32 words of `ql`, 16 words of `qh`, 4 words of the 16 `i8` scales.
    ///
    /// ```
    /// use hearth_backend::PackedFormat;
    /// let mut block = vec![0u8; 34];
    /// block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    /// block[2] = 3; // q[0] = 3
    /// let w = PackedFormat::Q8_0.to_words(&block, 1, 32).unwrap();
    /// assert_eq!((w.len(), w[0], f32::from_bits(w[8])), (9, 3, 0.5));
    /// ```
    pub fn to_words(self, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<u32>, BackendError> {
        self.check(bytes, rows, cols)?;
        let blocks = bytes.len() / self.block_bytes();
        let mut out = Vec::with_capacity(blocks * self.words_per_block());
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if matches!(self, PackedFormat::Q8_0 | PackedFormat::Q4_0) {
            // split layout: every block's quants in order, then every block's scale
            let blks = bytes.chunks_exact(self.block_bytes());
            out.extend(blks.clone().flat_map(|blk| blk[2..].chunks_exact(4).map(word)));
            out.extend(blks.map(|blk| f16_at(blk, 0).to_bits()));
            debug_assert_eq!(out.len(), blocks * self.words_per_block());
            return Ok(out);
        }
        for blk in bytes.chunks_exact(self.block_bytes()) {
            match self {
                PackedFormat::F32 => out.extend(blk.chunks_exact(4).map(word)),
                PackedFormat::Q8_0 | PackedFormat::Q4_0 => unreachable!("split layout above"),
                PackedFormat::Q4_K => {
                    out.push(f16_at(blk, 0).to_bits());
                    out.push(f16_at(blk, 2).to_bits());
                    out.extend(blk[4..].chunks_exact(4).map(word));
                }
                PackedFormat::Q6_K => {
                    out.push(f16_at(blk, 208).to_bits());
                    out.extend(blk[..208].chunks_exact(4).map(word));
                }
            }
        }
        debug_assert_eq!(out.len(), blocks * self.words_per_block());
        Ok(out)
    }

    /// Dequantizes GGUF-layout bytes of a `[rows, cols]` matrix to f32, row-major (with the
    /// same arithmetic as GGUF's reference dequantizers, so the results are bit-identical).
    ///
    /// ```
    /// use hearth_backend::PackedFormat;
    /// let mut block = vec![0x88u8; 18]; // every nibble 8 → value 0
    /// block[..2].copy_from_slice(&half::f16::from_f32(2.0).to_le_bytes());
    /// block[2] = 0xF0; // element 0: nibble 0 → -16; element 16: nibble 15 → 14
    /// let v = PackedFormat::Q4_0.dequantize(&block, 1, 32).unwrap();
    /// assert_eq!((v[0], v[1], v[16]), (-16.0, 0.0, 14.0));
    /// ```
    pub fn dequantize(self, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>, BackendError> {
        self.check(bytes, rows, cols)?;
        let mut out = Vec::with_capacity(rows * cols);
        for blk in bytes.chunks_exact(self.block_bytes()) {
            match self {
                PackedFormat::F32 => out.extend(
                    blk.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                PackedFormat::Q8_0 => {
                    let d = f16_at(blk, 0);
                    out.extend(blk[2..].iter().map(|&q| f32::from(q as i8) * d));
                }
                PackedFormat::Q4_0 => {
                    let d = f16_at(blk, 0);
                    let qs = &blk[2..];
                    out.extend(qs.iter().map(|&q| (f32::from(q & 15) - 8.0) * d));
                    out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
                }
                PackedFormat::Q4_K => {
                    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                    let (scales, qs) = (&blk[4..16], &blk[16..144]);
                    for j in 0..8 {
                        let (sc, m) = scale_min_k4(j, scales);
                        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                        let shift = 4 * (j % 2);
                        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
                        out.extend(q.iter().map(|&q| dl * f32::from((q >> shift) & 0xf) - ml));
                    }
                }
                PackedFormat::Q6_K => {
                    let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
                    let d = f16_at(blk, 208);
                    out.extend((0..K_BLOCK).map(|i| {
                        let (g, r) = (i / 128, i % 128);
                        let (s, l) = (r / 32, r % 32);
                        let lo = (ql[g * 64 + (s % 2) * 32 + l] >> (4 * (s / 2))) & 0xf;
                        let hi = (qh[g * 32 + l] >> (2 * s)) & 3;
                        let q = i32::from(lo | (hi << 4)) - 32;
                        d * f32::from(scales[i / 16] as i8) * q as f32
                    }));
                }
            }
        }
        Ok(out)
    }
}

/// How a [`PackedMatrix`] is stored on its backend.
#[derive(Clone, Debug)]
pub enum PackedStorage<B: Backend> {
    /// Dequantized f32, transposed to `[cols, rows]` (the fallback: `x · W` is a plain matmul).
    Dense(Tensor<B, 2>),
    /// The blocks in the device layout of [`PackedFormat::to_words`], one `u32` per element of
    /// this 1-D int tensor (only the cubecl backends create and read it).
    Words(Tensor<B, 1, Int>),
}

/// A `[rows = out, cols = in]` weight matrix stored in a [`PackedFormat`] on a device.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use hearth_backend::{Cpu, HearthBackend, PackedFormat};
/// use burn::tensor::Tensor;
/// let dev = Default::default();
/// let bytes: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
/// let w = Cpu::upload_packed(PackedFormat::F32, &bytes, 2, 32, &dev).unwrap();
/// assert_eq!((w.rows(), w.cols(), w.format()), (2, 32, PackedFormat::F32));
/// let x = Tensor::<Cpu, 2>::ones([1, 32], &dev);
/// let y = Cpu::packed_matmul(x, &w).unwrap().into_data().to_vec::<f32>().unwrap();
/// assert_eq!(y, vec![496.0, 1520.0]);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PackedMatrix<B: Backend> {
    format: PackedFormat,
    rows: usize,
    cols: usize,
    storage: PackedStorage<B>,
}

impl<B: Backend> PackedMatrix<B> {
    /// Wraps storage made by a backend. `storage` must hold a `[rows, cols]` matrix in `format`
    /// as described by [`PackedStorage`]; [`crate::HearthBackend::packed_matmul`] checks the sizes.
    pub fn from_storage(format: PackedFormat, rows: usize, cols: usize, storage: PackedStorage<B>) -> Self {
        Self {
            format,
            rows,
            cols,
            storage,
        }
    }

    /// The fallback representation: dequantize on the host, upload `[cols, rows]` f32.
    pub fn dense_from_bytes(
        format: PackedFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        device: &B::Device,
    ) -> Result<Self, BackendError> {
        let w = format.dequantize(bytes, rows, cols)?;
        let t = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(w, [rows, cols]), device);
        Ok(Self::from_storage(
            format,
            rows,
            cols,
            PackedStorage::Dense(t.transpose()),
        ))
    }

    /// Storage format.
    pub fn format(&self) -> PackedFormat {
        self.format
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored representation.
    pub fn storage(&self) -> &PackedStorage<B> {
        &self.storage
    }

    /// Bytes of weight one product reads from device memory.
    pub fn device_bytes(&self) -> usize {
        match &self.storage {
            PackedStorage::Dense(_) => self.rows * self.cols * 4,
            PackedStorage::Words(_) => self.format.matrix_words(self.rows, self.cols) * 4,
        }
    }

    pub(crate) fn check_input(&self, x_dims: [usize; 2]) -> Result<(), BackendError> {
        if x_dims[1] != self.cols {
            return Err(BackendError::ShapeMismatch {
                op: "packed_matmul",
                reason: format!("x is {x_dims:?} but the weight is [{}, {}]", self.rows, self.cols),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_errors_are_typed() {
        assert!(matches!(
            PackedFormat::Q8_0.to_words(&[0; 33], 1, 32),
            Err(BackendError::PackedShape { .. })
        ));
        assert!(PackedFormat::Q8_0.to_words(&[], 0, 32).is_err());
        assert!(PackedFormat::F32.dequantize(&[0; 4], 1, 1).is_err());
        assert!("q5_0".parse::<PackedFormat>().is_err());
        assert!(PackedFormat::Q4_K.to_words(&[0; 144], 1, 32).is_err());
        assert!(PackedFormat::Q6_K.to_words(&[0; 210], 2, 256).is_err());
    }

    /// Host dequantization of every format against hearth_quant's reference dequantizers, and
    /// the device words against the GGUF bytes they repack.
    #[test]
    fn host_dequantization_matches_hearth_quant() {
        use hearth_quant::GgmlType;
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let (rows, cols) = (3, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1.0 + (i / 16 % 7) as f32)
            })
            .collect();
        for (format, ty) in [
            (PackedFormat::Q8_0, GgmlType::Q8_0),
            (PackedFormat::Q4_0, GgmlType::Q4_0),
            (PackedFormat::Q4_K, GgmlType::Q4_K),
            (PackedFormat::Q6_K, GgmlType::Q6_K),
        ] {
            let bytes = hearth_quant::quantize_to_vec(ty, &w).unwrap();
            assert_eq!(bytes.len(), rows * format.row_bytes(cols).unwrap(), "{format:?}");
            let want = hearth_quant::dequantize_to_vec(ty, &bytes).unwrap();
            assert_eq!(format.dequantize(&bytes, rows, cols).unwrap(), want, "{format:?}");
            let words = format.to_words(&bytes, rows, cols).unwrap();
            assert_eq!(words.len(), format.matrix_words(rows, cols), "{format:?}");
            let blk = &bytes[..format.block_bytes()];
            let last_blk = &bytes[bytes.len() - format.block_bytes()..];
            let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if matches!(format, PackedFormat::Q8_0 | PackedFormat::Q4_0) {
                // split: the first block's first quant word first, the last block's scale last
                assert_eq!(words[0], word(&blk[2..]), "{format:?} first quants");
                let scales = rows * cols / format.block_len();
                assert_eq!(
                    words[words.len() - scales],
                    f16_at(blk, 0).to_bits(),
                    "{format:?} first d"
                );
                assert_eq!(
                    *words.last().unwrap(),
                    f16_at(last_blk, 0).to_bits(),
                    "{format:?} last d"
                );
                let quant_words = words.len() - scales;
                assert_eq!(
                    words[quant_words - 1],
                    word(&last_blk[last_blk.len() - 4..]),
                    "{format:?} last quants"
                );
                continue;
            }
            let d_at = if format == PackedFormat::Q6_K { 208 } else { 0 };
            assert_eq!(words[0], f16_at(blk, d_at).to_bits(), "{format:?} d");
            let last = *words.last().unwrap();
            let tail = &bytes[bytes.len() - if format == PackedFormat::Q6_K { 6 } else { 4 }..];
            assert_eq!(
                last,
                u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]),
                "{format:?} tail"
            );
        }
    }
}
