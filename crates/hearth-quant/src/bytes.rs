//! Packed weight bytes that are either owned or borrowed from a memory-mapped checkpoint, so
//! a model can compute on GGUF/safetensors data in place (no second copy of the weights).

use std::sync::Arc;

/// The bytes of one packed weight: an owned buffer, or a range of a shared memory map.
///
/// ```
/// use hearth_quant::WeightBytes;
/// let b = WeightBytes::from(vec![1u8, 2, 3]);
/// assert_eq!(&b[..], &[1, 2, 3]);
/// assert!(!b.is_mapped());
/// ```
pub enum WeightBytes {
    /// A heap buffer.
    Owned(Vec<u8>),
    /// A heap buffer whose first byte is aligned to [`ALIGN`] bytes.
    Aligned(AlignedBytes),
    /// `len` bytes at `start` of a memory-mapped file, kept alive by the `Arc`.
    Mapped {
        /// The map.
        map: Arc<memmap2::Mmap>,
        /// Offset of the first byte.
        start: usize,
        /// Length in bytes.
        len: usize,
    },
}

/// Alignment of [`AlignedBytes`]: one cache line, so that no 64-byte SIMD load of a row that
/// starts on a multiple of 64 bytes straddles two lines.
pub const ALIGN: usize = 64;

/// A zero-initialised heap buffer whose first byte is [`ALIGN`]-byte aligned.
///
/// ```
/// let mut b = hearth_quant::AlignedBytes::zeroed(100);
/// b.as_mut_slice()[99] = 7;
/// assert_eq!(b.as_slice().len(), 100);
/// assert_eq!(b.as_slice().as_ptr() as usize % hearth_quant::bytes::ALIGN, 0);
/// ```
pub struct AlignedBytes {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes, aligned.
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN - 1];
        // the heap block never moves while `buf` lives (it is never grown)
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN - 1);
        AlignedBytes { buf, start, len }
    }

    /// An aligned copy of `src`.
    pub fn copy_of(src: &[u8]) -> Self {
        let mut a = Self::zeroed(src.len());
        a.as_mut_slice().copy_from_slice(src);
        a
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl WeightBytes {
    /// Whether the first byte is aligned to [`ALIGN`] bytes.
    ///
    /// ```
    /// use hearth_quant::{AlignedBytes, WeightBytes};
    /// assert!(WeightBytes::Aligned(AlignedBytes::zeroed(10)).is_aligned());
    /// ```
    pub fn is_aligned(&self) -> bool {
        (self.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    /// A range of `map`; `None` when it is out of bounds.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// let f = std::fs::File::open("model.gguf").unwrap();
    /// // SAFETY: the file is not modified while mapped.
    /// let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
    /// let b = hearth_quant::WeightBytes::mapped(map, 0, 4).unwrap();
    /// assert_eq!(b.len(), 4);
    /// ```
    pub fn mapped(map: Arc<memmap2::Mmap>, start: usize, len: usize) -> Option<Self> {
        (start.checked_add(len)? <= map.len()).then_some(Self::Mapped { map, start, len })
    }

    /// Tells the OS this process no longer needs the pages of a mapped range (after the bytes
    /// were copied into another layout), so they stop counting toward its resident memory.
    /// The data stays readable: a file-backed page is read back from the file if touched
    /// again. Does nothing for owned bytes.
    pub fn release_pages(&self) {
        if let Self::Mapped { map, start, len } = self {
            // SAFETY: the map is a read-only file mapping (`memmap2::Mmap`), so MADV_DONTNEED
            // discards no data: a page touched again is read back from the file, unchanged.
            // No reference into the range is invalidated (its contents stay the same). The
            // result is ignored: the advice is an optimisation only.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, *start, *len) };
        }
    }

    /// Whether the bytes live in a memory map (not counted as heap).
    pub fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped { .. })
    }
}

impl std::ops::Deref for WeightBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Aligned(a) => a.as_slice(),
            Self::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

impl From<Vec<u8>> for WeightBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::Owned(v)
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::Owned(_) => "owned",
            Self::Aligned(_) => "owned, aligned",
            Self::Mapped { .. } => "mapped",
        };
        write!(f, "WeightBytes({kind}, {} bytes)", self.len())
    }
}

impl Clone for WeightBytes {
    fn clone(&self) -> Self {
        match self {
            Self::Owned(v) => Self::Owned(v.clone()),
            Self::Aligned(a) => Self::Aligned(AlignedBytes::copy_of(a.as_slice())),
            Self::Mapped { map, start, len } => Self::Mapped {
                map: map.clone(),
                start: *start,
                len: *len,
            },
        }
    }
}
