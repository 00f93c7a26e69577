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

impl WeightBytes {
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
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "WeightBytes({kind}, {} bytes)", self.len())
    }
}

impl Clone for WeightBytes {
    fn clone(&self) -> Self {
        match self {
            Self::Owned(v) => Self::Owned(v.clone()),
            Self::Mapped { map, start, len } => Self::Mapped {
                map: map.clone(),
                start: *start,
                len: *len,
            },
        }
    }
}
