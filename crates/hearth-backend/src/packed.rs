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

/// Values per block of every packed format.
pub const BLOCK: usize = 32;

/// A weight layout the device kernels read directly.
///
/// GGUF byte layouts (what [`crate::HearthBackend::upload_packed`] accepts), per row of
/// `cols` values, `cols / 32` blocks:
/// - `F32`: 32 little-endian `f32` per block (128 bytes).
/// - `Q8_0`: `f16 d` + 32 × `i8 q`; value = `q · d` (34 bytes).
/// - `Q4_0`: `f16 d` + 16 bytes of nibbles; byte `j`'s low nibble is element `j`, its high
///   nibble element `j + 16`; value = `(nibble − 8) · d` (18 bytes).
///
/// ```
/// use hearth_backend::PackedFormat;
/// assert_eq!(PackedFormat::Q8_0.block_bytes(), 34);
/// assert_eq!(PackedFormat::Q4_0.row_bytes(64).unwrap(), 36);
/// assert!(PackedFormat::Q4_0.row_bytes(48).is_err());
/// assert_eq!("q8_0".parse::<PackedFormat>().unwrap(), PackedFormat::Q8_0);
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
}

impl std::str::FromStr for PackedFormat {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(PackedFormat::F32),
            "q8_0" => Ok(PackedFormat::Q8_0),
            "q4_0" => Ok(PackedFormat::Q4_0),
            other => Err(BackendError::UnknownPackedFormat(other.to_string())),
        }
    }
}

impl PackedFormat {
    /// Bytes of one 32-value block in the GGUF layout.
    pub fn block_bytes(self) -> usize {
        match self {
            PackedFormat::F32 => 4 * BLOCK,
            PackedFormat::Q8_0 => 2 + BLOCK,
            PackedFormat::Q4_0 => 2 + BLOCK / 2,
        }
    }

    /// `u32` words of one block in the device layout of [`Self::to_words`].
    pub fn words_per_block(self) -> usize {
        match self {
            PackedFormat::F32 => BLOCK,
            PackedFormat::Q8_0 => 1 + BLOCK / 4,
            PackedFormat::Q4_0 => 1 + BLOCK / 8,
        }
    }

    /// Bytes of one GGUF row of `cols` values; `cols` must be a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize, BackendError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(BackendError::PackedShape {
                format: self,
                reason: format!("row length {cols} is not a positive multiple of {BLOCK}"),
            });
        }
        Ok(cols / BLOCK * self.block_bytes())
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

    /// Repacks GGUF-layout bytes into the 4-byte-aligned device layout, block after block:
    /// - `F32`: the 32 values' bits.
    /// - `Q8_0`: `d` as f32 bits, then 8 words holding the 32 `i8` little-endian.
    /// - `Q4_0`: `d` as f32 bits, then 4 words holding the 16 nibble bytes as in GGUF.
    ///
    /// ```
    /// use hearth_backend::PackedFormat;
    /// let mut block = vec![0u8; 34];
    /// block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    /// block[2] = 3; // q[0] = 3
    /// let w = PackedFormat::Q8_0.to_words(&block, 1, 32).unwrap();
    /// assert_eq!((w.len(), f32::from_bits(w[0]), w[1]), (9, 0.5, 3));
    /// ```
    pub fn to_words(self, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<u32>, BackendError> {
        self.check(bytes, rows, cols)?;
        let blocks = bytes.len() / self.block_bytes();
        let mut out = Vec::with_capacity(blocks * self.words_per_block());
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for blk in bytes.chunks_exact(self.block_bytes()) {
            match self {
                PackedFormat::F32 => out.extend(blk.chunks_exact(4).map(word)),
                PackedFormat::Q8_0 | PackedFormat::Q4_0 => {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    out.push(d.to_bits());
                    out.extend(blk[2..].chunks_exact(4).map(word));
                }
            }
        }
        Ok(out)
    }

    /// Dequantizes GGUF-layout bytes of a `[rows, cols]` matrix to f32, row-major.
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
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    out.extend(blk[2..].iter().map(|&q| f32::from(q as i8) * d));
                }
                PackedFormat::Q4_0 => {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let qs = &blk[2..];
                    out.extend(qs.iter().map(|&q| (f32::from(q & 15) - 8.0) * d));
                    out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
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
            PackedStorage::Words(_) => self.rows * self.cols / BLOCK * self.format.words_per_block() * 4,
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
    }
}
