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
/// Buffers kept per thread and kind (for [`Q8Activations::quantize_pooled`] and the AVX-512
/// layouts): enough for every input of a [`super::matvec_each`] pass.
const POOL_SIZE: usize = 40;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Q8Activations>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Line buffers of [`WinAct`]s, reused (see [`WinAct::recycle`]).
    static LINE_POOL: std::cell::RefCell<Vec<Vec<Line>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// [`KAct`]s, reused (see [`KAct::recycle`]).
    static KACT_POOL: std::cell::RefCell<Vec<KAct>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Scratch quants and scales of [`WinAct`] construction.
    static WIN_SCRATCH: std::cell::RefCell<(Vec<i8>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Pushes `v` onto this thread's `pool`; a full pool keeps its [`POOL_SIZE`] largest buffers
/// (`size`), so that after warm-up every buffer taken fits the largest input seen.
fn give_back<T>(pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>, v: T, size: impl Fn(&T) -> usize) {
    // (`try_with`: a buffer dropped while the thread's locals are torn down is just freed)
    let _ = pool.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_SIZE {
            p.push(v);
        } else if let Some((i, _)) = p.iter().enumerate().min_by_key(|(_, b)| size(b))
            && size(&p[i]) < size(&v)
        {
            p[i] = v;
        }
    });
}

/// A buffer from this thread's `pool` whose `size` is at least `need` (else the largest, to be
/// grown by the caller), or `None` when the pool is empty.
fn take_fitting<T>(
    pool: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    need: usize,
    size: impl Fn(&T) -> usize,
) -> Option<T> {
    pool.with(|p| {
        let mut p = p.borrow_mut();
        let i = p
            .iter()
            .position(|b| size(b) >= need)
            .or_else(|| p.iter().enumerate().max_by_key(|(_, b)| size(b)).map(|(i, _)| i))?;
        Some(p.swap_remove(i))
    })
}

/// `n` zero lines, from this thread's pool when it has a buffer.
pub(crate) fn pooled_lines(n: usize) -> Vec<Line> {
    let mut v = take_fitting(&LINE_POOL, n, Vec::capacity).unwrap_or_default();
    v.clear();
    v.resize(n, Line([0; 64]));
    v
}

/// This thread's scratch quants and scales for [`WinAct`] construction, zeroed to `nq` and
/// `nd` elements (they grow only when a longer input comes); hand them back with
/// [`return_win_scratch`].
pub(crate) fn take_win_scratch(nq: usize, nd: usize) -> (Vec<i8>, Vec<f32>) {
    let (mut qs, mut d) = WIN_SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    qs.clear();
    qs.resize(nq, 0);
    d.clear();
    d.resize(nd, 0.0);
    (qs, d)
}

/// Gives the buffers of [`take_win_scratch`] back.
pub(crate) fn return_win_scratch(s: (Vec<i8>, Vec<f32>)) {
    let _ = WIN_SCRATCH.try_with(|w| *w.borrow_mut() = s);
}

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
        Self::quantize_with(x, block_size, true)
    }

    /// [`Q8Activations::quantize`]; `lanes = false` skips the per-4-element lane helpers
    /// (only the AVX2 kernels read them).
    pub(crate) fn quantize_with(x: &[f32], block_size: usize, lanes: bool) -> Self {
        let mut q = Q8Activations {
            block: block_size,
            qs: Vec::new(),
            d: Vec::new(),
            sum16: Vec::new(),
            lane_d: Vec::new(),
            lane_bias: Vec::new(),
            lane_s: Vec::new(),
        };
        q.refill(x, block_size, lanes);
        q
    }

    /// [`Self::quantize_with`] into a buffer set taken from this thread's pool (see
    /// [`Self::recycle`]): after the first calls of a decode step, quantizing allocates nothing.
    pub(crate) fn quantize_pooled(x: &[f32], block_size: usize, lanes: bool) -> Self {
        match take_fitting(&POOL, x.len(), |q| q.qs.capacity()) {
            Some(mut q) => {
                q.refill(x, block_size, lanes);
                q
            }
            None => Self::quantize_with(x, block_size, lanes),
        }
    }

    /// Gives the buffers back to this thread's pool for [`Self::quantize_pooled`].
    pub(crate) fn recycle(self) {
        give_back(&POOL, self, |q| q.qs.capacity());
    }

    /// Re-quantizes `x` into these buffers (growing them only when `x` is longer than before).
    fn refill(&mut self, x: &[f32], block_size: usize, lanes: bool) {
        assert!(
            block_size > 0 && block_size.is_multiple_of(16),
            "activation block size must be a positive multiple of 16"
        );
        assert!(
            x.len().is_multiple_of(block_size),
            "activation length must be a multiple of the block size"
        );
        let nb = x.len() / block_size;
        self.block = block_size;
        let (qs, d) = (&mut self.qs, &mut self.d);
        qs.clear();
        qs.resize(x.len(), 0);
        d.clear();
        d.resize(nb, 0.0);
        #[cfg(target_arch = "x86_64")]
        let simd = super::Isa::Avx2.is_available();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        if simd && block_size.is_multiple_of(32) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2/FMA support was checked just above.
            unsafe {
                super::avx2::quantize_blocks(x, block_size, qs, d)
            };
        } else {
            quantize_portable(x, block_size, qs, d);
        }
        self.sum16.clear();
        self.sum16
            .extend(qs.chunks_exact(16).map(|c| c.iter().map(|&v| v as i32).sum::<i32>()));
        self.lane_d.clear();
        self.lane_bias.clear();
        self.lane_s.clear();
        if lanes && block_size == 32 {
            for (i, c) in qs.chunks_exact(4).enumerate() {
                let s: i32 = c.iter().map(|&v| v as i32).sum();
                let db = d[i / 8];
                self.lane_d.push(db);
                self.lane_bias.push(-8 * s);
                self.lane_s.push(db * s as f32);
            }
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

/// Layout of a 32-element block format for the AVX-512 "window" kernels.
///
/// A window is `wb` consecutive blocks whose bytes (`wb · bb`) are exactly `nreg` 64-byte
/// registers, so every register of every window has the same block/byte geometry. The kernels
/// load the weight bytes as they are (scale bytes included) and the activations are laid out
/// once per call to line up byte for byte with those registers (zero under scale bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WinFmt {
    /// Bytes per block.
    pub bb: usize,
    /// Offset of the quants inside a block.
    pub qoff: usize,
    /// 4-bit quants (low nibble = element `i`, high nibble = element `i + 16`) or 8-bit.
    pub nibbles: bool,
    /// Blocks per window.
    pub wb: usize,
    /// 64-byte registers per window (`wb · bb / 64`).
    pub nreg: usize,
    /// 64-byte activation lines per register (`XL, XH, DA, BIAS|S` or `X, DA, BIAS`).
    pub lpr: usize,
}

pub(crate) const WIN_Q4_0: WinFmt = WinFmt {
    bb: 18,
    qoff: 2,
    nibbles: true,
    wb: 32,
    nreg: 9,
    lpr: 4,
};
pub(crate) const WIN_Q4_1: WinFmt = WinFmt {
    bb: 20,
    qoff: 4,
    nibbles: true,
    wb: 16,
    nreg: 5,
    lpr: 4,
};
pub(crate) const WIN_Q8_0: WinFmt = WinFmt {
    bb: 34,
    qoff: 2,
    nibbles: false,
    wb: 32,
    nreg: 17,
    lpr: 3,
};

/// Static geometry of register `j` of a window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RegTable {
    /// Window-relative offset of the 128 activation quants the register draws from (the
    /// high nibbles draw from the 128 starting at `base + 16`).
    pub base: usize,
    /// Per weight byte: index (0..128, relative to `base`) of the activation under the low
    /// nibble (or under the byte for 8-bit formats); the same index relative to `base + 16`
    /// for the high nibble.
    pub src: [u8; 64],
    /// Bit `i` set when weight byte `i` is a quant (not a scale byte, not past the window).
    pub valid: u64,
    /// Per i32 lane: window-relative block of its quants.
    pub lane_blk: [u32; 16],
    /// Bit `l` set when lane `l` holds quants.
    pub lane_valid: u16,
    /// Per lane: word index of its block's `d` in `[previous register, this register]`
    /// (0..32 previous, 32..64 this one); entries 16..32 unused.
    pub d_idx: [u16; 32],
}

const fn reg_table(f: WinFmt, j: usize) -> RegTable {
    let mut t = RegTable {
        base: usize::MAX,
        src: [0; 64],
        valid: 0,
        lane_blk: [0; 16],
        lane_valid: 0,
        d_idx: [0; 32],
    };
    // First pass: the smallest activation index used by the register.
    let mut i = 0;
    while i < 64 {
        let gb = 64 * j + i;
        let (k, p) = (gb / f.bb, gb % f.bb);
        if k < f.wb && p >= f.qoff {
            let src = 32 * k + p - f.qoff;
            if src < t.base {
                t.base = src;
            }
        }
        i += 1;
    }
    let mut i = 0;
    while i < 64 {
        let gb = 64 * j + i;
        let (k, p) = (gb / f.bb, gb % f.bb);
        if k < f.wb && p >= f.qoff {
            let q = p - f.qoff;
            let src = 32 * k + q - t.base;
            assert!(src < 128, "window register draws from more than 128 activations");
            t.src[i] = src as u8;
            t.valid |= 1 << i;
            let l = i / 4;
            if t.lane_valid & (1 << l) != 0 {
                assert!(t.lane_blk[l] as usize == k, "a lane mixes the quants of two blocks");
            }
            t.lane_blk[l] = k as u32;
            t.lane_valid |= 1 << l;
            let d_byte = k * f.bb;
            assert!(d_byte + 64 >= 64 * j, "block scale before the previous register");
            t.d_idx[l] = ((d_byte + 64 - 64 * j) / 2) as u16;
        }
        i += 1;
    }
    t
}

const fn reg_tables<const N: usize>(f: WinFmt) -> [RegTable; N] {
    assert!(f.bb * f.wb == 64 * N && f.nreg == N);
    let mut out = [reg_table(f, 0); N];
    let mut j = 1;
    while j < N {
        out[j] = reg_table(f, j);
        j += 1;
    }
    // The Q4_0/Q8_0 kernels rely on every lane of a full register holding quants.
    j = 0;
    while j < N {
        assert!(f.qoff > 2 || out[j].lane_valid == u16::MAX);
        j += 1;
    }
    out
}

pub(crate) static TABLES_Q4_0: [RegTable; 9] = reg_tables(WIN_Q4_0);
pub(crate) static TABLES_Q4_1: [RegTable; 5] = reg_tables(WIN_Q4_1);
pub(crate) static TABLES_Q8_0: [RegTable; 17] = reg_tables(WIN_Q8_0);

/// One 64-byte, 64-byte-aligned line of prepared activations.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line(pub [u8; 64]);

/// Activations of one input vector laid out for the window kernels of one format: for window
/// `w` and register `j`, lines `(w · nreg + j) · lpr ..` hold the i8 activations under the low
/// and high nibbles (or the bytes), the per-lane activation scale (f32) and the per-lane
/// integer bias (Q4_0: `−8 Σq`, Q8_0: `−128 Σq`) or, for Q4_1, the per-lane `d · Σq` (f32).
#[derive(Clone, Debug)]
pub(crate) struct WinAct {
    pub fmt: WinFmt,
    /// Blocks of 32 per row.
    pub nb: usize,
    pub lines: Vec<Line>,
}

impl WinAct {
    /// Gives the line buffer back to this thread's pool (see [`pooled_lines`]).
    pub(crate) fn recycle(self) {
        give_back(&LINE_POOL, self.lines, Vec::capacity);
    }
}

/// Activations of one input vector for the AVX-512 K-quant kernels (256-blocks): the quants
/// (for Q4_K with the 32-element sub-blocks of each super-block reordered `0,2,1,3,4,6,5,7`,
/// matching the low/high nibble halves of two 64-byte weight loads), the scales, and per
/// super-block the i16 sums of the quants over each sub-block (Q4_K: 8 of 32 elements; Q6_K:
/// 16 of 16 elements).
#[derive(Clone, Debug)]
pub(crate) struct KAct {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sums: Vec<i16>,
}

impl KAct {
    /// Activations for the Q4_K (`q4k`) or Q6_K kernels; the buffers come from this thread's
    /// pool (see [`Self::recycle`]), so a warm decode step allocates nothing here.
    pub(crate) fn new(x: &[f32], q4k: bool) -> KAct {
        let q = Q8Activations::quantize_pooled(x, 256, false);
        let mut k = take_fitting(&KACT_POOL, x.len(), |k| k.qs.capacity()).unwrap_or(KAct {
            qs: Vec::new(),
            d: Vec::new(),
            sums: Vec::new(),
        });
        k.qs.clear();
        k.sums.clear();
        k.d.clear();
        k.d.extend_from_slice(&q.d);
        if q4k {
            k.qs.resize(q.qs.len(), 0);
            for (src, dst) in q.qs.chunks_exact(256).zip(k.qs.chunks_exact_mut(256)) {
                for (j, &s) in [0usize, 2, 1, 3, 4, 6, 5, 7].iter().enumerate() {
                    dst[32 * j..32 * j + 32].copy_from_slice(&src[32 * s..32 * s + 32]);
                }
            }
            k.sums.extend(q.sum16.chunks_exact(2).map(|p| (p[0] + p[1]) as i16));
        } else {
            k.qs.extend_from_slice(&q.qs);
            k.sums.extend(q.sum16.iter().map(|&v| v as i16));
        }
        q.recycle();
        k
    }

    /// Gives the buffers back to this thread's pool.
    pub(crate) fn recycle(self) {
        give_back(&KACT_POOL, self, |k| k.qs.capacity());
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
