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
    buf: Buf,
    start: usize,
    len: usize,
}

enum Buf {
    Heap(Vec<u8>),
    /// An anonymous mapping whose whole 2 MiB extents are advised to be transparent huge pages.
    #[cfg(target_os = "linux")]
    Anon(memmap2::MmapMut),
}

/// Transparent huge page size (x86-64 and the usual aarch64 kernels).
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// From this size on, [`AlignedBytes::zeroed`] asks Linux for transparent huge pages.
pub const HUGE_PAGE_MIN: usize = 4 << 20;

impl AlignedBytes {
    /// `len` zero bytes, aligned.
    ///
    /// On Linux, buffers of [`HUGE_PAGE_MIN`] bytes or more are anonymous mappings that start on
    /// a 2 MiB boundary, their whole 2 MiB extents advised `MADV_HUGEPAGE` (the tail stays on
    /// normal pages, so no more memory is touched than `len`). Decode streams every weight
    /// once per token: on 4 KiB pages that is a TLB miss (and a page walk) per 64 cache lines,
    /// and the software prefetches of the kernels stall on them; on huge pages, one per 32768.
    /// Hosts with `transparent_hugepage=never` (or `HEARTH_NO_HUGEPAGES` set) get normal pages.
    pub fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if Self::huge_pages_for(len)
            && let Ok(m) = memmap2::MmapMut::map_anon(len + HUGE_PAGE)
        {
            // (anonymous mappings are zero-filled; the unused head and tail are never touched)
            let start = (m.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - m.as_ptr() as usize;
            // an optimisation only: a kernel without THP just keeps normal pages
            let _ = m.advise_range(memmap2::Advice::HugePage, start, len / HUGE_PAGE * HUGE_PAGE);
            return AlignedBytes {
                buf: Buf::Anon(m),
                start,
                len,
            };
        }
        let buf = vec![0u8; len + ALIGN - 1];
        // the heap block never moves while `buf` lives (it is never grown)
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN - 1);
        AlignedBytes {
            buf: Buf::Heap(buf),
            start,
            len,
        }
    }

    /// Whether [`Self::zeroed`] of `len` bytes asks for transparent huge pages: on Linux, for
    /// at least [`HUGE_PAGE_MIN`] bytes, unless `HEARTH_NO_HUGEPAGES` is set or the kernel has
    /// transparent huge pages disabled (`never`).
    ///
    /// ```
    /// use hearth_quant::AlignedBytes;
    /// assert!(!AlignedBytes::huge_pages_for(4096));
    /// ```
    pub fn huge_pages_for(len: usize) -> bool {
        #[cfg(target_os = "linux")]
        {
            static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            len >= HUGE_PAGE_MIN
                && *ON.get_or_init(|| {
                    std::env::var_os("HEARTH_NO_HUGEPAGES").is_none()
                        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                            .is_ok_and(|s| !s.contains("[never]"))
                })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = len;
            false
        }
    }

    /// An aligned copy of `src`.
    pub fn copy_of(src: &[u8]) -> Self {
        let mut a = Self::zeroed(src.len());
        a.as_mut_slice().copy_from_slice(src);
        a
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        let b: &[u8] = match &self.buf {
            Buf::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Buf::Anon(m) => m,
        };
        &b[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let b: &mut [u8] = match &mut self.buf {
            Buf::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Buf::Anon(m) => m,
        };
        &mut b[self.start..self.start + self.len]
    }

    /// Whether the buffer is a huge-page-advised mapping (see [`Self::zeroed`]).
    ///
    /// ```
    /// let b = hearth_quant::AlignedBytes::zeroed(100);
    /// assert!(!b.is_huge_page_mapped());
    /// ```
    pub fn is_huge_page_mapped(&self) -> bool {
        match &self.buf {
            Buf::Heap(_) => false,
            #[cfg(target_os = "linux")]
            Buf::Anon(_) => true,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_of_every_size_are_zeroed_aligned_writable_and_cloneable() {
        // around the huge-page threshold and off the 2 MiB multiples: the mapped path and the
        // heap path give the same contents
        for len in [
            0,
            1,
            63,
            4097,
            HUGE_PAGE_MIN - 1,
            HUGE_PAGE_MIN,
            HUGE_PAGE_MIN + 12_345,
            3 * HUGE_PAGE_MIN + 7,
        ] {
            let mut b = AlignedBytes::zeroed(len);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&v| v == 0), "len {len}: not zeroed");
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0, "len {len}: not aligned");
            #[cfg(target_os = "linux")]
            assert_eq!(b.is_huge_page_mapped(), AlignedBytes::huge_pages_for(len));
            for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
                *v = (i * 31 % 251) as u8;
            }
            let w = WeightBytes::Aligned(b);
            let c = w.clone();
            assert!(c.is_aligned());
            assert!(
                c.iter().enumerate().all(|(i, &v)| v == (i * 31 % 251) as u8),
                "len {len}"
            );
            assert_eq!(&c[..], &w[..]);
        }
    }
}
