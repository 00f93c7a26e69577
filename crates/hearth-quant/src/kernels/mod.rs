//! CPU weight × activation kernels (matrix–vector and small-batch matrix–matrix).
//!
//! Weights are raw little-endian bytes in GGUF / llama.cpp block layouts, row-major,
//! each row being `cols / block_size` blocks (see [`WeightFormat`]).
//!
//! # Numerics
//!
//! * `F32`, `F16`, `BF16` weights are multiplied against the `f32` activations directly
//!   (f32 accumulation); results match [`reference::matvec`] up to f32 rounding.
//! * `Q8_0`, `Q4_0`, `Q4_1` weights use activations quantized on the fly to 8-bit
//!   blocks of 32 (`d = max|x| / 127`, `q = round(x / d)`), and `Q4_K`, `Q6_K` use
//!   8-bit blocks of 256, exactly as llama.cpp's `q8_0` / `q8_K` dot products do
//!   (see [`Q8Activations`]). Block dot products are computed exactly in integers,
//!   so each kernel matches [`reference::matvec_quantized`] up to f32 rounding of the
//!   per-block scale products (relative error ≲ 1e-5 of `Σ|w·x|`). Against the f32
//!   dequantized product ([`reference::matvec`]) the error is bounded by
//!   `Σ_i |w_i| · d_blk(i) / 2` (half a quantization step of the activation block), i.e.
//!   roughly `0.4%` of `Σ|w|·max|x|`.
//!
//! # Dispatch
//!
//! [`Isa::detect`] picks, once per process, AVX-512 (F/BW/VL/VNNI/VBMI + GFNI) → AVX2+FMA+F16C →
//! portable scalar code. [`matvec_with_isa`] / [`matmul_with_isa`] force a path (used by
//! tests and benchmarks). Work is split over output rows on the global rayon pool, a few
//! contiguous spans per thread; matrices under ~64 KiB run on the calling thread.
//!
//! On AVX-512, `matmul` with Q4_0/Q4_1/Q8_0 weights runs blocked kernels: for fewer than 16
//! activation rows, tiles of 2 weight rows × 4 activation rows through the matvec kernel (each
//! weight register unpacked once per tile; results bit-identical to `matvec`); from 16 rows on,
//! a token-parallel kernel (16 activation rows per `vpdpbusd`, each unpacked 4-byte weight
//! group broadcast), whose results differ from `matvec` only by f32 summation order.
//! F32/BF16/F16 weights run a blocked GEMM for more than one activation row (tiles of 4
//! weight rows converted to f32 once × 6 activation rows, 24 FMA accumulators; f32
//! summation order differs from `matvec`). Q8_0/Q4_0 matrices repacked into the
//! [`interleaved`] layouts run 16 rows per instruction for matvec and small batches.

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod interleaved;
pub mod reference;
mod scalar;

pub use act::Q8Activations;

use rayon::prelude::*;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// On-disk / in-memory layout of a weight matrix row.
///
/// ```
/// use hearth_quant::kernels::WeightFormat;
/// assert_eq!(WeightFormat::Q4_0.block_size(), 32);
/// assert_eq!(WeightFormat::Q4_0.block_bytes(), 18);
/// assert_eq!(WeightFormat::Q4_0.row_bytes(2048).unwrap(), 64 * 18);
/// ```
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit IEEE floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// Blocks of 32: `f16 d` + 32 × `i8`; value = `q · d`.
    Q8_0,
    /// Blocks of 32: `f16 d` + 16 bytes of nibbles; value = `(q − 8) · d`.
    Q4_0,
    /// Blocks of 32: `f16 d`, `f16 m` + 16 bytes of nibbles; value = `q · d + m`.
    Q4_1,
    /// Super-blocks of 256 (144 bytes): `f16 d`, `f16 dmin`, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4_K,
    /// Super-blocks of 256 (210 bytes): `ql[128]`, `qh[64]`, `i8 scales[16]`, `f16 d`.
    Q6_K,
    /// Q8_0 blocks with 16 rows interleaved per block column (see [`interleaved`]): the
    /// layout the AVX-512 kernels stream at memory bandwidth. Rows are padded to 16.
    Q8_0x16,
    /// Q4_0 blocks with 16 rows interleaved per block column (see [`interleaved`]).
    Q4_0x16,
}

impl WeightFormat {
    /// The kernel format of a GGUF tensor type, if the kernels compute on it directly.
    ///
    /// ```
    /// use hearth_quant::{GgmlType, kernels::WeightFormat};
    /// assert_eq!(WeightFormat::from_ggml(GgmlType::Q4_K), Some(WeightFormat::Q4_K));
    /// assert_eq!(WeightFormat::from_ggml(GgmlType::Q5_0), None);
    /// ```
    pub fn from_ggml(ty: crate::GgmlType) -> Option<Self> {
        use crate::GgmlType as G;
        Some(match ty {
            G::F32 => WeightFormat::F32,
            G::BF16 => WeightFormat::Bf16,
            G::F16 => WeightFormat::F16,
            G::Q8_0 => WeightFormat::Q8_0,
            G::Q4_0 => WeightFormat::Q4_0,
            G::Q4_1 => WeightFormat::Q4_1,
            G::Q4_K => WeightFormat::Q4_K,
            G::Q6_K => WeightFormat::Q6_K,
            _ => return None,
        })
    }

    /// The GGUF tensor type with this layout.
    ///
    /// ```
    /// use hearth_quant::{GgmlType, kernels::WeightFormat};
    /// assert_eq!(WeightFormat::Q8_0.ggml(), GgmlType::Q8_0);
    /// ```
    pub fn ggml(self) -> crate::GgmlType {
        use crate::GgmlType as G;
        match self {
            WeightFormat::F32 => G::F32,
            WeightFormat::Bf16 => G::BF16,
            WeightFormat::F16 => G::F16,
            WeightFormat::Q8_0 => G::Q8_0,
            WeightFormat::Q4_0 => G::Q4_0,
            WeightFormat::Q4_1 => G::Q4_1,
            WeightFormat::Q4_K => G::Q4_K,
            WeightFormat::Q6_K => G::Q6_K,
            WeightFormat::Q8_0x16 => G::Q8_0,
            WeightFormat::Q4_0x16 => G::Q4_0,
        }
    }

    /// The GGUF row-major format with the same blocks (`Q8_0` for `Q8_0x16`; itself otherwise).
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::Q4_0x16.base(), WeightFormat::Q4_0);
    /// assert_eq!(WeightFormat::Q6_K.base(), WeightFormat::Q6_K);
    /// ```
    pub fn base(self) -> Self {
        match self {
            WeightFormat::Q8_0x16 => WeightFormat::Q8_0,
            WeightFormat::Q4_0x16 => WeightFormat::Q4_0,
            f => f,
        }
    }

    /// Whether rows are interleaved in groups of [`interleaved::GROUP`] (not row-major).
    pub fn is_interleaved(self) -> bool {
        self != self.base()
    }

    /// Rows the weight buffer holds for a `rows`-row matrix (padded to 16 when interleaved).
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::Q8_0x16.stored_rows(17), 32);
    /// assert_eq!(WeightFormat::Q8_0.stored_rows(17), 17);
    /// ```
    pub fn stored_rows(self, rows: usize) -> usize {
        if self.is_interleaved() {
            rows.next_multiple_of(interleaved::GROUP)
        } else {
            rows
        }
    }

    /// The layout hearth's kernels run fastest on for weights of this format on this CPU:
    /// `Q8_0x16` / `Q4_0x16` where AVX-512 (with VNNI) is available, else the format itself.
    /// See [`interleaved::repack`].
    pub fn preferred_layout(self) -> Self {
        match (self, Isa::detect()) {
            (WeightFormat::Q8_0, Isa::Avx512) => WeightFormat::Q8_0x16,
            (WeightFormat::Q4_0, Isa::Avx512) => WeightFormat::Q4_0x16,
            (f, _) => f,
        }
    }
}

impl WeightFormat {
    /// Every supported format.
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::ALL.len(), 8);
    /// ```
    pub const ALL: [WeightFormat; 8] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q4_K,
        WeightFormat::Q6_K,
    ];

    /// Number of weights per block (1 for the float formats).
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::Q6_K.block_size(), 256);
    /// ```
    pub fn block_size(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16 => 1,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 => 32,
            WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => 32,
            WeightFormat::Q4_K | WeightFormat::Q6_K => 256,
        }
    }

    /// Bytes per block.
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::Q4_K.block_bytes(), 144);
    /// ```
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
            WeightFormat::Q8_0 | WeightFormat::Q8_0x16 => 34,
            WeightFormat::Q4_0 | WeightFormat::Q4_0x16 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q4_K => 144,
            WeightFormat::Q6_K => 210,
        }
    }

    /// Bytes of one row of `cols` weights; errors if `cols` is not a multiple of the block size.
    ///
    /// ```
    /// use hearth_quant::kernels::{KernelError, WeightFormat};
    /// assert_eq!(WeightFormat::Q6_K.row_bytes(512), Ok(420));
    /// assert!(matches!(WeightFormat::Q6_K.row_bytes(100), Err(KernelError::ColsNotMultipleOfBlock { .. })));
    /// ```
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        let bs = self.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(KernelError::ColsNotMultipleOfBlock {
                format: self,
                cols,
                block_size: bs,
            });
        }
        (cols / bs)
            .checked_mul(self.block_bytes())
            .ok_or(KernelError::SizeOverflow)
    }

    /// Block size of the 8-bit activation quantization the fast kernels use for this
    /// format (`Some(32)` for Q8_0/Q4_0/Q4_1, `Some(256)` for the K-quants, `None` for floats).
    ///
    /// ```
    /// use hearth_quant::kernels::WeightFormat;
    /// assert_eq!(WeightFormat::Q4_K.activation_block(), Some(256));
    /// assert_eq!(WeightFormat::Bf16.activation_block(), None);
    /// ```
    pub fn activation_block(self) -> Option<usize> {
        match self {
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 => Some(32),
            WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => Some(32),
            WeightFormat::Q4_K | WeightFormat::Q6_K => Some(256),
            _ => None,
        }
    }
}

/// Which caller-supplied buffer a [`KernelError::LengthMismatch`] refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// The weight bytes.
    Weight,
    /// The activation input `x`.
    Input,
    /// The output `y`.
    Output,
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Buffer::Weight => "weight",
            Buffer::Input => "input (x)",
            Buffer::Output => "output (y)",
        })
    }
}

/// Errors from the kernels' argument validation.
///
/// ```
/// use hearth_quant::kernels::{matvec, Buffer, KernelError, WeightFormat};
/// let w = vec![0u8; 4 * 8 * 4]; // 4 rows × 8 f32
/// let mut y = vec![0.0f32; 4];
/// let err = matvec(WeightFormat::F32, &w, 4, 8, &[0.0; 7], &mut y).unwrap_err();
/// assert_eq!(err, KernelError::LengthMismatch { buffer: Buffer::Input, expected: 8, actual: 7 });
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer has the wrong length.
    #[error("{buffer} buffer has length {actual}, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        buffer: Buffer,
        /// Required length (bytes for weights, elements otherwise).
        expected: usize,
        /// Supplied length.
        actual: usize,
    },
    /// `cols` is not a multiple of the format's block size.
    #[error("cols = {cols} is not a multiple of the {format:?} block size {block_size}")]
    ColsNotMultipleOfBlock {
        /// Weight format.
        format: WeightFormat,
        /// Requested columns.
        cols: usize,
        /// Required multiple.
        block_size: usize,
    },
    /// `rows × cols` (or the batch) overflows `usize`.
    #[error("matrix size overflows usize")]
    SizeOverflow,
    /// A forced instruction-set path is not supported by this CPU.
    #[error("instruction set {0:?} is not available on this CPU")]
    IsaUnavailable(Isa),
    /// Only Q8_0 and Q4_0 have a row-interleaved layout.
    #[error("{0:?} has no row-interleaved layout (Q8_0 and Q4_0 do)")]
    NotInterleavable(WeightFormat),
}

/// Instruction-set path of the kernels.
///
/// ```
/// use hearth_quant::kernels::Isa;
/// assert!(Isa::Scalar.is_available());
/// assert!(Isa::detect().is_available());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (integer dot products, no intrinsics).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/VNNI/VBMI and GFNI (plus AVX2/FMA/F16C).
    Avx512,
}

impl Isa {
    /// Best path for this CPU (detected once, cached).
    ///
    /// ```
    /// # use hearth_quant::kernels::Isa;
    /// println!("{:?}", Isa::detect());
    /// ```
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            if Isa::Avx512.is_available() {
                Isa::Avx512
            } else if Isa::Avx2.is_available() {
                Isa::Avx2
            } else {
                Isa::Scalar
            }
        })
    }

    /// Whether this CPU can run the path.
    ///
    /// ```
    /// # use hearth_quant::kernels::Isa;
    /// assert!(Isa::available().contains(&Isa::Scalar));
    /// ```
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vbmi")
                    && is_x86_feature_detected!("gfni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// All paths this CPU can run, slowest first.
    ///
    /// ```
    /// # use hearth_quant::kernels::Isa;
    /// assert_eq!(Isa::available()[0], Isa::Scalar);
    /// ```
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }
}

static PREFETCH_DISTANCE: AtomicUsize = AtomicUsize::new(DEFAULT_PREFETCH_DISTANCE);

/// Default software-prefetch distance of the SIMD kernels, in bytes of weights ahead (swept
/// with `KERNELS_PF_SWEEP` on the 2-core AVX-512 dev machine, 2026-12-01: 1–2 KiB beat 4 KiB by
/// 1–4 points of the bandwidth probe for the interleaved Q4_0/Q8_0 and the BF16 kernels).
pub const DEFAULT_PREFETCH_DISTANCE: usize = 2048;

/// Sets how far ahead (bytes of the weight stream) the SIMD kernels software-prefetch;
/// `0` disables prefetching. A tuning knob: the default suits DRAM-streaming decode.
///
/// ```
/// use hearth_quant::kernels::{set_prefetch_distance, DEFAULT_PREFETCH_DISTANCE};
/// set_prefetch_distance(DEFAULT_PREFETCH_DISTANCE);
/// ```
pub fn set_prefetch_distance(bytes: usize) {
    PREFETCH_DISTANCE.store(bytes, Ordering::Relaxed);
}

#[inline]
pub(crate) fn prefetch_distance() -> usize {
    PREFETCH_DISTANCE.load(Ordering::Relaxed)
}

thread_local! {
    /// Buffers of de-interleaved BF16 activations, reused across calls on this thread.
    static XD_POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Returns pooled buffers: the decode step's activation preparation allocates nothing once warm
/// (every format and path: integer blocks, AVX-512 window and K-quant layouts, BF16).
impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if let Some(q) = self.q8.take() {
            q.recycle();
        }
        if let Some(w) = self.win.take() {
            w.recycle();
        }
        if let Some(k) = self.kq.take() {
            k.recycle();
        }
        if self.xd.capacity() > 0 {
            let xd = std::mem::take(&mut self.xd);
            XD_POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < 40 {
                    p.push(xd);
                }
            });
        }
    }
}

/// Activations prepared once per input vector for a given (isa, format).
pub(crate) struct Prepared<'a> {
    /// Original activations.
    pub x: &'a [f32],
    /// BF16 SIMD paths: `x` de-interleaved per group of `g` (even indices then odd indices).
    pub xd: Vec<f32>,
    /// Quantized activations for the integer-dot formats (all paths but the AVX-512 windows).
    pub q8: Option<Q8Activations>,
    /// AVX-512 Q4_0/Q4_1/Q8_0: activations laid out for the window kernels.
    pub win: Option<act::WinAct>,
    /// AVX-512 Q4_K/Q6_K: activations laid out for the K-quant kernels.
    pub kq: Option<act::KAct>,
}

impl<'a> Prepared<'a> {
    fn new(isa: Isa, fmt: WeightFormat, x: &'a [f32]) -> Self {
        #[cfg(target_arch = "x86_64")]
        let win = match (isa, avx512::win_selector(fmt)) {
            // SAFETY: callers only prepare for an `isa` whose `is_available()` was checked.
            (Isa::Avx512, Some(f)) => Some(unsafe { avx512::build_win(x, f) }),
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let win = None;
        let kq = match (isa, fmt) {
            (Isa::Avx512, WeightFormat::Q4_K) => Some(act::KAct::new(x, true)),
            (Isa::Avx512, WeightFormat::Q6_K) => Some(act::KAct::new(x, false)),
            _ => None,
        };
        let q8 = match (&win, &kq) {
            (Some(_), _) | (_, Some(_)) => None,
            _ => fmt
                .activation_block()
                .map(|b| Q8Activations::quantize_pooled(x, b, isa == Isa::Avx2 && !fmt.is_interleaved())),
        };
        let group = match (isa, fmt) {
            (Isa::Avx2, WeightFormat::Bf16) => 16,
            (Isa::Avx512, WeightFormat::Bf16) => 32,
            _ => 0,
        };
        let mut xd = Vec::new();
        if group > 0 {
            xd = XD_POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
            xd.clear();
            xd.reserve(x.len());
            let mut chunks = x.chunks_exact(group);
            for c in &mut chunks {
                xd.extend(c.iter().step_by(2));
                xd.extend(c.iter().skip(1).step_by(2));
            }
            xd.extend_from_slice(chunks.remainder());
        }
        Prepared { x, xd, q8, win, kq }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn kq(&self) -> &act::KAct {
        self.kq
            .as_ref()
            .expect("internal: K-quant activations prepared for this format")
    }

    #[cfg(target_arch = "x86_64")]
    pub fn win(&self) -> &act::WinAct {
        self.win
            .as_ref()
            .expect("internal: window activations prepared for this format")
    }

    pub fn q8(&self) -> &Q8Activations {
        self.q8
            .as_ref()
            .expect("internal: quantized activations prepared for this format")
    }
}

/// Computes `out[i] = dot(row i of chunk, x)` for every row of `chunk` on the given path.
fn dot_rows(
    isa: Isa,
    fmt: WeightFormat,
    chunk: &[u8],
    row_bytes: usize,
    cols: usize,
    p: &Prepared<'_>,
    out: &mut [f32],
) {
    if fmt.is_interleaved() {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 {
            // SAFETY: `Isa::Avx512.is_available()` was checked by the entry point; the chunk
            // holds whole groups and `p.q8` was prepared from `cols` values.
            unsafe { interleaved::gemm_groups(fmt, chunk, cols, &[p.q8()], out) };
            return;
        }
        interleaved::dot_groups_portable(fmt, chunk, cols, p, out);
        return;
    }
    debug_assert_eq!(chunk.len(), row_bytes * out.len());
    match isa {
        Isa::Scalar => scalar::dot_rows(fmt, chunk, row_bytes, cols, p, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every public entry point rejects an `isa` whose `is_available()` is false,
        // so the CPU supports the features `avx2::dot_rows` is compiled for.
        Isa::Avx2 => unsafe { avx2::dot_rows(fmt, chunk, row_bytes, cols, p, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, `Isa::Avx512.is_available()` was checked by the entry point.
        Isa::Avx512 => unsafe { avx512::dot_rows(fmt, chunk, row_bytes, cols, p, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-x86 ISA paths are never available"),
    }
}

/// From this many activation rows on, AVX-512 Q4_0/Q4_1/Q8_0 `matmul` runs token-parallel.
const TOKEN_PARALLEL_MIN: usize = 16;

/// Matrices smaller than this run on the calling thread (waking the pool costs more).
const SERIAL_BYTES: usize = 64 * 1024;

static TASKS_PER_THREAD: AtomicUsize = AtomicUsize::new(4);

#[doc(hidden)]
/// Tuning knob for benchmarks: contiguous row spans per rayon thread (default 4).
pub fn set_tasks_per_thread(n: usize) {
    TASKS_PER_THREAD.store(n.max(1), Ordering::Relaxed);
}

static GUIDED: AtomicBool = AtomicBool::new(true);

#[doc(hidden)]
/// Tuning knob for A/B measurements: `false` splits each parallel matrix–vector product into
/// fixed tasks ([`set_tasks_per_thread`] per thread) scheduled by rayon's work stealing instead
/// of the default guided self-scheduling (see `run_guided`). Results are the same either way.
///
/// ```
/// hearth_quant::kernels::set_guided_schedule(true);
/// ```
pub fn set_guided_schedule(on: bool) {
    GUIDED.store(on, Ordering::Relaxed);
}

/// Jobs per guided pass (`matvec_many` / `matvec_each` run longer lists in passes).
const GUIDED_PASS: usize = 40;

/// Smallest span of weights a thread claims at once (a few µs of streaming).
const MIN_CLAIM_BYTES: usize = 64 * 1024;

/// Each claim takes `1 / (GUIDED_DIV · threads)` of the work still unclaimed.
const GUIDED_DIV: usize = 2;

/// An output pointer handed to the threads of one guided pass.
struct OutPtr(*mut f32);

// SAFETY: the pointer is only dereferenced through `run_guided`, whose cursor hands every row
// span to exactly one thread, so no two threads ever write the same element.
unsafe impl Send for OutPtr {}
// SAFETY: as above (shared references to `OutPtr` only ever create disjoint slices).
unsafe impl Sync for OutPtr {}

/// One matrix of a guided pass.
struct GuidedJob<'a, 'p> {
    fmt: WeightFormat,
    weight: &'a [u8],
    rb: usize,
    rows: usize,
    /// Rows per schedulable unit (a multiple of 4, whole interleaved groups).
    unit: usize,
    y: OutPtr,
    /// `y` stays mutably borrowed for the job's lifetime.
    _y: std::marker::PhantomData<&'a mut [f32]>,
    p: &'p Prepared<'p>,
}

impl<'a, 'p> GuidedJob<'a, 'p> {
    fn new(fmt: WeightFormat, weight: &'a [u8], rb: usize, y: &'a mut [f32], p: &'p Prepared<'_>) -> Self {
        // (`Prepared` is covariant in its lifetime: shorten it to the borrow's)
        let p: &'p Prepared<'p> = p;
        GuidedJob {
            fmt,
            weight,
            rb,
            rows: y.len(),
            unit: align_rows(fmt, 4),
            y: OutPtr(y.as_mut_ptr()),
            _y: std::marker::PhantomData,
            p,
        }
    }

    fn units(&self) -> usize {
        self.rows.div_ceil(self.unit)
    }
}

/// Guided self-scheduling of the rows of several matrices over every thread of the current
/// rayon pool: the units of all jobs ([`GuidedJob::units`] each) form one range, and each thread repeatedly claims (one atomic compare-and-swap) the next
/// `remaining / (GUIDED_DIV · threads)` units, at least [`MIN_CLAIM_BYTES`] of weights, until
/// none are left. Big claims first keep each thread streaming long contiguous runs; the small
/// claims at the end make the threads finish within a few µs of each other (fixed tasks leave
/// one thread idle for half a task on average), and a thread that starts late (or is
/// preempted) just claims less. One task per thread via nested `rayon::join`: allocation-free.
/// Results are bit-identical to one `dot_rows` over each whole matrix (units are whole groups of
/// 4 rows / 16 interleaved rows, computed independently).
fn run_guided(isa: Isa, jobs: &[Option<GuidedJob<'_, '_>>], cols: usize) {
    // (`Option` only to build fixed-size tables without allocating; every entry is `Some`)
    assert!(jobs.len() <= GUIDED_PASS);
    let mut tbl: [usize; GUIDED_PASS + 1] = [0; GUIDED_PASS + 1];
    for (i, j) in jobs.iter().enumerate() {
        tbl[i + 1] = tbl[i] + j.as_ref().map_or(0, GuidedJob::units);
    }
    let starts = &tbl[..jobs.len() + 1];
    let bytes: usize = jobs.iter().flatten().map(|j| j.weight.len()).sum();
    let total = starts[jobs.len()];
    if total == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let min_units = (MIN_CLAIM_BYTES / (bytes / total).max(1)).max(1);
    let cursor = AtomicUsize::new(0);
    let work = || {
        loop {
            let mut lo = cursor.load(Ordering::Relaxed);
            let hi = loop {
                if lo >= total {
                    return;
                }
                let left = total - lo;
                let take = left.div_ceil(GUIDED_DIV * threads).max(min_units).min(left);
                match cursor.compare_exchange_weak(lo, lo + take, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break lo + take,
                    Err(cur) => lo = cur,
                }
            };
            // the claimed units, job by job
            let first = starts.partition_point(|&s| s <= lo) - 1;
            for (i, w) in starts.windows(2).enumerate().skip(first) {
                let (s, e) = (w[0], w[1]);
                if s >= hi {
                    break;
                }
                let (a, b) = (lo.max(s) - s, hi.min(e) - s);
                if a >= b {
                    continue;
                }
                let Some(j) = &jobs[i] else { continue };
                let (r0, r1) = (a * j.unit, (b * j.unit).min(j.rows));
                let wend = (b * j.unit * j.rb).min(j.weight.len());
                // SAFETY: `OutPtr` points at `j.rows` outputs and rows `r0..r1` belong to units
                // `a..b` of this job, which the cursor handed to this thread alone.
                let out = unsafe { std::slice::from_raw_parts_mut(j.y.0.add(r0), r1 - r0) };
                dot_rows(isa, j.fmt, &j.weight[r0 * j.rb..wend], j.rb, cols, j.p, out);
            }
        }
    };
    spread(threads, &work);
}

/// Runs `f` on `k` rayon tasks (nested `join`s: no allocation).
fn spread(k: usize, f: &(impl Fn() + Sync)) {
    if k <= 1 {
        f();
    } else {
        let h = k / 2;
        rayon::join(|| spread(h, f), || spread(k - h, f));
    }
}

/// Rows per rayon task: a few contiguous spans per thread (so each thread streams long
/// runs of weights and a preempted thread's work can still be stolen), a multiple of 4 rows.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = threads * TASKS_PER_THREAD.load(Ordering::Relaxed);
    rows.div_ceil(tasks).next_multiple_of(4).max(4)
}

/// Rounds a task's row count to whole interleaved groups for interleaved formats.
fn align_rows(fmt: WeightFormat, rows: usize) -> usize {
    if fmt.is_interleaved() {
        rows.next_multiple_of(interleaved::GROUP)
    } else {
        rows
    }
}

/// Rows per rayon task of the row-by-row `matmul` path: at most ~256 KiB of weights, so a
/// task's rows stay in L2 while every activation row passes over them.
fn matmul_chunk_rows(rows: usize, row_bytes: usize) -> usize {
    const TASK_BYTES: usize = 256 * 1024;
    let by_bytes = (TASK_BYTES / row_bytes.max(1)).max(1);
    chunk_rows(rows).min(by_bytes.next_multiple_of(4))
}

fn validate(isa: Isa, fmt: WeightFormat, weight: &[u8], rows: usize, cols: usize) -> Result<usize, KernelError> {
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    let rb = fmt.row_bytes(cols)?;
    let total = rb.checked_mul(fmt.stored_rows(rows)).ok_or(KernelError::SizeOverflow)?;
    if weight.len() != total {
        return Err(KernelError::LengthMismatch {
            buffer: Buffer::Weight,
            expected: total,
            actual: weight.len(),
        });
    }
    Ok(rb)
}

fn check_len(buffer: Buffer, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            buffer,
            expected,
            actual,
        })
    }
}

/// `y[r] = Σ_c W[r,c] · x[c]` for `r in 0..rows`, on the best instruction set of this CPU.
///
/// `weight` holds `rows * fmt.row_bytes(cols)` bytes. See the module docs for the
/// numerics of the quantized formats.
///
/// ```
/// use hearth_quant::kernels::{matvec, WeightFormat};
/// // 2×3 f32 matrix [[1,2,3],[4,5,6]]
/// let w: Vec<u8> = [1.0f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mut y = [0.0f32; 2];
/// matvec(WeightFormat::F32, &w, 2, 3, &[1.0, 1.0, 1.0], &mut y).unwrap();
/// assert_eq!(y, [6.0, 15.0]);
/// ```
pub fn matvec(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    matvec_with_isa(Isa::detect(), fmt, weight, rows, cols, x, y)
}

/// [`matvec`] on a forced instruction-set path (errors if the CPU lacks it).
///
/// ```
/// use hearth_quant::kernels::{matvec_with_isa, Isa, WeightFormat};
/// let w: Vec<u8> = [2.0f32, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mut y = [0.0f32; 1];
/// matvec_with_isa(Isa::Scalar, WeightFormat::F32, &w, 1, 2, &[1.0, 2.0], &mut y).unwrap();
/// assert_eq!(y, [8.0]);
/// ```
pub fn matvec_with_isa(
    isa: Isa,
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    let rb = validate(isa, fmt, weight, rows, cols)?;
    check_len(Buffer::Input, cols, x.len())?;
    check_len(Buffer::Output, rows, y.len())?;
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let p = Prepared::new(isa, fmt, x);
    let cr = align_rows(fmt, chunk_rows(rows));
    if rayon::current_num_threads() <= 1 || rows <= cr || weight.len() < SERIAL_BYTES {
        dot_rows(isa, fmt, weight, rb, cols, &p, y);
    } else if GUIDED.load(Ordering::Relaxed) {
        run_guided(isa, &[Some(GuidedJob::new(fmt, weight, rb, y, &p))], cols);
    } else {
        y.par_chunks_mut(cr)
            .zip(weight.par_chunks(cr * rb))
            .for_each(|(out, w)| dot_rows(isa, fmt, w, rb, cols, &p, out));
    }
    Ok(())
}

/// One matrix of a [`matvec_many`] call: `y = W · x` for a `[y.len(), cols]` weight.
pub struct MatvecJob<'a> {
    /// Storage format of the rows.
    pub fmt: WeightFormat,
    /// `y.len() * fmt.row_bytes(cols)` bytes.
    pub weight: &'a [u8],
    /// Output, one value per weight row.
    pub y: &'a mut [f32],
}

/// Several matrix–vector products of the same input `x` in one parallel pass: the
/// activations are prepared (quantized) once per format, and the rows of all matrices are
/// split into one set of tasks by bytes, so e.g. a layer's Q, K and V projections cost one
/// fork/join instead of three and no thread idles at the end of a small matrix. Results are
/// bit-identical to [`matvec`] on each matrix.
///
/// ```
/// use hearth_quant::kernels::{matvec_many, MatvecJob, WeightFormat};
/// let a: Vec<u8> = [1.0f32, 2.].iter().flat_map(|v| v.to_le_bytes()).collect(); // [[1, 2]]
/// let b: Vec<u8> = [3.0f32, 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect(); // [[3, 4], [5, 6]]
/// let (mut ya, mut yb) = ([0.0f32; 1], [0.0f32; 2]);
/// let mut jobs = [
///     MatvecJob { fmt: WeightFormat::F32, weight: &a, y: &mut ya },
///     MatvecJob { fmt: WeightFormat::F32, weight: &b, y: &mut yb },
/// ];
/// matvec_many(&mut jobs, 2, &[1.0, 1.0]).unwrap();
/// assert_eq!((ya, yb), ([3.0], [7.0, 11.0]));
/// ```
pub fn matvec_many(jobs: &mut [MatvecJob<'_>], cols: usize, x: &[f32]) -> Result<(), KernelError> {
    matvec_many_with_isa(Isa::detect(), jobs, cols, x)
}

/// [`matvec_many`] on a forced instruction-set path (errors if the CPU lacks it).
pub fn matvec_many_with_isa(isa: Isa, jobs: &mut [MatvecJob<'_>], cols: usize, x: &[f32]) -> Result<(), KernelError> {
    check_len(Buffer::Input, cols, x.len())?;
    for j in jobs.iter() {
        validate(isa, j.fmt, j.weight, j.y.len(), cols)?;
    }
    if cols == 0 {
        jobs.iter_mut().for_each(|j| j.y.fill(0.0));
        return Ok(());
    }
    // activations prepared once per distinct format (a fixed table: no allocation of its own)
    let mut preps: [Option<(WeightFormat, Prepared<'_>)>; 10] = [const { None }; 10];
    for j in jobs.iter() {
        if !preps.iter().flatten().any(|(f, _)| *f == j.fmt) {
            let slot = preps
                .iter_mut()
                .find(|p| p.is_none())
                .expect("fewer formats than slots");
            *slot = Some((j.fmt, Prepared::new(isa, j.fmt, x)));
        }
    }
    let prep = |f: WeightFormat| &preps.iter().flatten().find(|(g, _)| *g == f).expect("prepared above").1;
    let total_bytes: usize = jobs.iter().map(|j| j.weight.len()).sum();
    let threads = rayon::current_num_threads().max(1);
    if threads <= 1 || total_bytes < SERIAL_BYTES {
        for j in jobs.iter_mut() {
            let rb = j.fmt.row_bytes(cols)?;
            dot_rows(isa, j.fmt, j.weight, rb, cols, prep(j.fmt), j.y);
        }
        return Ok(());
    }
    if GUIDED.load(Ordering::Relaxed) {
        for pass in jobs.chunks_mut(GUIDED_PASS) {
            let len = pass.len();
            let mut g: [Option<GuidedJob<'_, '_>>; GUIDED_PASS] = [const { None }; GUIDED_PASS];
            for (g, j) in g.iter_mut().zip(pass.iter_mut()) {
                let rb = j.fmt.row_bytes(cols)?;
                *g = Some(GuidedJob::new(j.fmt, j.weight, rb, j.y, prep(j.fmt)));
            }
            run_guided(isa, &g[..len], cols);
        }
        return Ok(());
    }
    // tasks of about equal bytes, a multiple of 4 rows each, never spanning two matrices
    let tasks = threads * TASKS_PER_THREAD.load(Ordering::Relaxed);
    let task_bytes = total_bytes.div_ceil(tasks).max(1);
    jobs.par_iter_mut().for_each(|j| {
        let rb = j.fmt.row_bytes(cols).expect("validated above");
        let cr = align_rows(j.fmt, (task_bytes / rb.max(1)).next_multiple_of(4).max(4));
        let (f, p) = (j.fmt, prep(j.fmt));
        j.y.par_chunks_mut(cr)
            .zip(j.weight.par_chunks(cr * rb))
            .for_each(|(y, w)| dot_rows(isa, f, w, rb, cols, p, y));
    });
    Ok(())
}

/// One matrix of a [`matvec_each`] call: `y = W · x` with its own input `x` (`cols` values).
pub struct MatvecInputJob<'a> {
    /// Storage format of the rows.
    pub fmt: WeightFormat,
    /// `y.len() * fmt.row_bytes(cols)` bytes.
    pub weight: &'a [u8],
    /// This matrix's input.
    pub x: &'a [f32],
    /// Output, one value per weight row.
    pub y: &'a mut [f32],
}

/// Jobs of one [`matvec_each`] pass (more are run in passes of this many).
const EACH_PASS: usize = 32;

/// Several matrix–vector products with different inputs (e.g. the down projections of a
/// token's routed experts) in one parallel pass: the rows of all matrices are split into one
/// set of tasks by bytes, as in [`matvec_many`]. Results are bit-identical to [`matvec`] on
/// each matrix; allocation-free once warm.
///
/// ```
/// use hearth_quant::kernels::{matvec_each, MatvecInputJob, WeightFormat};
/// let a: Vec<u8> = [1.0f32, 2.].iter().flat_map(|v| v.to_le_bytes()).collect(); // [[1, 2]]
/// let b: Vec<u8> = [3.0f32, 4.].iter().flat_map(|v| v.to_le_bytes()).collect(); // [[3, 4]]
/// let (mut ya, mut yb) = ([0.0f32; 1], [0.0f32; 1]);
/// let mut jobs = [
///     MatvecInputJob { fmt: WeightFormat::F32, weight: &a, x: &[1.0, 1.0], y: &mut ya },
///     MatvecInputJob { fmt: WeightFormat::F32, weight: &b, x: &[1.0, 0.0], y: &mut yb },
/// ];
/// matvec_each(&mut jobs, 2).unwrap();
/// assert_eq!((ya, yb), ([3.0], [3.0]));
/// ```
pub fn matvec_each(jobs: &mut [MatvecInputJob<'_>], cols: usize) -> Result<(), KernelError> {
    matvec_each_with_isa(Isa::detect(), jobs, cols)
}

/// [`matvec_each`] on a forced instruction-set path (errors if the CPU lacks it).
pub fn matvec_each_with_isa(isa: Isa, jobs: &mut [MatvecInputJob<'_>], cols: usize) -> Result<(), KernelError> {
    for j in jobs.iter() {
        validate(isa, j.fmt, j.weight, j.y.len(), cols)?;
        check_len(Buffer::Input, cols, j.x.len())?;
    }
    if cols == 0 {
        jobs.iter_mut().for_each(|j| j.y.fill(0.0));
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    for pass in jobs.chunks_mut(EACH_PASS) {
        // activations prepared once per job (pooled buffers: no allocation once warm)
        let mut preps: [Option<Prepared<'_>>; EACH_PASS] = [const { None }; EACH_PASS];
        for (p, j) in preps.iter_mut().zip(pass.iter()) {
            *p = Some(Prepared::new(isa, j.fmt, j.x));
        }
        let preps = &preps[..pass.len()];
        let total_bytes: usize = pass.iter().map(|j| j.weight.len()).sum();
        if threads <= 1 || total_bytes < SERIAL_BYTES {
            for (j, p) in pass.iter_mut().zip(preps) {
                let rb = j.fmt.row_bytes(cols)?;
                dot_rows(isa, j.fmt, j.weight, rb, cols, p.as_ref().expect("prepared above"), j.y);
            }
            continue;
        }
        if GUIDED.load(Ordering::Relaxed) {
            let len = pass.len();
            let mut g: [Option<GuidedJob<'_, '_>>; GUIDED_PASS] = [const { None }; GUIDED_PASS];
            for ((g, j), p) in g.iter_mut().zip(pass.iter_mut()).zip(preps) {
                let rb = j.fmt.row_bytes(cols)?;
                *g = Some(GuidedJob::new(
                    j.fmt,
                    j.weight,
                    rb,
                    j.y,
                    p.as_ref().expect("prepared above"),
                ));
            }
            run_guided(isa, &g[..len], cols);
            continue;
        }
        let tasks = threads * TASKS_PER_THREAD.load(Ordering::Relaxed);
        let task_bytes = total_bytes.div_ceil(tasks).max(1);
        pass.par_iter_mut().zip(preps.par_iter()).for_each(|(j, p)| {
            let rb = j.fmt.row_bytes(cols).expect("validated above");
            let cr = align_rows(j.fmt, (task_bytes / rb.max(1)).next_multiple_of(4).max(4));
            let (f, p) = (j.fmt, p.as_ref().expect("prepared above"));
            j.y.par_chunks_mut(cr)
                .zip(j.weight.par_chunks(cr * rb))
                .for_each(|(y, w)| dot_rows(isa, f, w, rb, cols, p, y));
        });
    }
    Ok(())
}

/// `Y[n, r] = Σ_c W[r,c] · X[n, c]`: `x` is `n × cols` row-major, `y` is `n × rows` row-major.
///
/// Each weight row-chunk is read from memory once and reused (from cache) for all `n`
/// activation rows.
///
/// ```
/// use hearth_quant::kernels::{matmul, WeightFormat};
/// let w: Vec<u8> = [1.0f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect(); // [[1,2],[3,4]]
/// let x = [1.0f32, 0.0, 0.0, 1.0]; // two activation rows
/// let mut y = [0.0f32; 4];
/// matmul(WeightFormat::F32, &w, 2, 2, &x, 2, &mut y).unwrap();
/// assert_eq!(y, [1.0, 3.0, 2.0, 4.0]);
/// ```
pub fn matmul(
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_with_isa(Isa::detect(), fmt, weight, rows, cols, x, n, y)
}

/// [`matmul`] on a forced instruction-set path (errors if the CPU lacks it).
///
/// ```
/// use hearth_quant::kernels::{matmul_with_isa, Isa, WeightFormat};
/// let w: Vec<u8> = [1.0f32, 2.].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mut y = [0.0f32; 2];
/// matmul_with_isa(Isa::Scalar, WeightFormat::F32, &w, 1, 2, &[1.0, 1.0, 2.0, 0.0], 2, &mut y).unwrap();
/// assert_eq!(y, [3.0, 2.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_isa(
    isa: Isa,
    fmt: WeightFormat,
    weight: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let rb = validate(isa, fmt, weight, rows, cols)?;
    check_len(
        Buffer::Input,
        n.checked_mul(cols).ok_or(KernelError::SizeOverflow)?,
        x.len(),
    )?;
    check_len(
        Buffer::Output,
        n.checked_mul(rows).ok_or(KernelError::SizeOverflow)?,
        y.len(),
    )?;
    if n == 1 {
        return matvec_with_isa(isa, fmt, weight, rows, cols, x, y);
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && n >= TOKEN_PARALLEL_MIN && avx512::win_selector(fmt.base()).is_some() {
        // SAFETY: `validate` checked that the CPU supports `Isa::Avx512`; lengths were checked above.
        unsafe { avx512::matmul_tok(fmt, weight, rows, cols, x, n, y) };
        return Ok(());
    }
    let preps: Vec<Prepared<'_>> = if n >= 4 {
        x.par_chunks(cols).map(|xr| Prepared::new(isa, fmt, xr)).collect()
    } else {
        x.chunks(cols).map(|xr| Prepared::new(isa, fmt, xr)).collect()
    };
    #[cfg(target_arch = "x86_64")]
    let wins: Vec<&act::WinAct> = preps.iter().filter_map(|p| p.win.as_ref()).collect();
    let cr = align_rows(fmt, matmul_chunk_rows(rows, rb));
    // Scratch laid out chunk by chunk, each chunk as [n][rows_in_chunk].
    let mut scratch = vec![0.0f32; rows * n];
    #[cfg(target_arch = "x86_64")]
    let q8s: Vec<&Q8Activations> = preps.iter().filter_map(|p| p.q8.as_ref()).collect();
    let run = |(out, w): (&mut [f32], &[u8])| {
        #[cfg(target_arch = "x86_64")]
        if fmt.is_interleaved() && isa == Isa::Avx512 {
            // SAFETY: `validate` checked `Isa::Avx512`; each chunk holds whole groups.
            unsafe { interleaved::gemm_groups(fmt, w, cols, &q8s, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && matches!(fmt, WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16) {
            // SAFETY: `validate` checked `Isa::Avx512`; `w` is whole rows, `x` is `n × cols`.
            unsafe { avx512::gemm_float(fmt, w, cols, x, n, out) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if wins.len() == n {
            // SAFETY: window activations exist only for `Isa::Avx512`, checked available by `validate`.
            unsafe { avx512::gemm_win(fmt, w, rb, &wins, out) };
            return;
        }
        let r = out.len() / n;
        for (p, o) in preps.iter().zip(out.chunks_mut(r)) {
            dot_rows(isa, fmt, w, rb, cols, p, o);
        }
    };
    scratch
        .par_chunks_mut(cr * n)
        .zip(weight.par_chunks(cr * rb))
        .for_each(run);
    for (ci, chunk) in scratch.chunks(cr * n).enumerate() {
        let r0 = ci * cr;
        let r = chunk.len() / n;
        for (j, src) in chunk.chunks(r).enumerate() {
            y[j * rows + r0..j * rows + r0 + r].copy_from_slice(src);
        }
    }
    Ok(())
}

/// Measures memory read bandwidth (bytes/s) by summing a `bytes`-sized buffer with
/// vectorised loads on `threads` threads (a dedicated rayon pool); returns the best of 5 runs.
/// The buffer is allocated like repacked weights ([`crate::AlignedBytes::zeroed`]: transparent
/// huge pages on Linux where enabled).
///
/// Use a buffer much larger than the last-level cache (e.g. 1 GiB).
///
/// ```
/// let bw = hearth_quant::kernels::measure_read_bandwidth(8 << 20, 1);
/// assert!(bw > 0.0);
/// ```
pub fn measure_read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let words = (bytes / 8).max(1024);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("building a rayon pool for the bandwidth probe");
    const CHUNK: usize = 1 << 17; // 1 MiB of u64
    // the same allocation as repacked weights (huge pages where available, see
    // `AlignedBytes::zeroed`): the probe then measures the memory, not the page walks
    let mut bytes = crate::AlignedBytes::zeroed(words * 8);
    let buf: &mut [u64] = bytemuck::cast_slice_mut(bytes.as_mut_slice());
    pool.install(|| {
        buf.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
            for (j, v) in c.iter_mut().enumerate() {
                *v = (i * CHUNK + j) as u64;
            }
        })
    });
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let s = pool.install(|| buf.par_chunks(CHUNK).map(xor_reduce).reduce(|| 0, |a, b| a ^ b));
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((words * 8) as f64 / dt);
    }
    best
}

fn xor_reduce(c: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512.is_available() {
        // SAFETY: AVX-512F support was just checked.
        return unsafe { avx512::xor_reduce(c) };
    } else if Isa::Avx2.is_available() {
        // SAFETY: AVX2 support was just checked.
        return unsafe { avx2::xor_reduce(c) };
    }
    scalar::xor_reduce(c)
}

#[inline]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Unpacks the 12-byte Q4_K scale/min field into 8 six-bit scales and 8 six-bit mins.
#[inline]
pub(crate) fn q4k_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, mn)
}
