//! Kernel correctness: every format × every ISA path available on this CPU, against the
//! scalar references, for ragged shapes, matvec and matmul, plus error cases.

use hearth_quant::kernels::{
    Buffer, Isa, KernelError, MatvecInputJob, MatvecJob, Q8Activations, WeightFormat, interleaved, matmul,
    matmul_with_isa, matvec, matvec_each_with_isa, matvec_many_with_isa, matvec_with_isa, reference,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    /// Uniform in [lo, hi).
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn f16_bytes(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        half::f16::from_f32(self.f32(lo, hi)).to_bits().to_le_bytes()
    }
}

fn random_weights(fmt: WeightFormat, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    if fmt.is_interleaved() {
        let base = random_weights(fmt.base(), rows, cols, rng);
        return interleaved::repack(fmt.base(), &base, rows, cols).unwrap().1;
    }
    let nblocks = rows * cols / fmt.block_size();
    let mut w = Vec::with_capacity(nblocks * fmt.block_bytes());
    for _ in 0..nblocks {
        match fmt {
            WeightFormat::F32 => w.extend(rng.f32(-1.0, 1.0).to_le_bytes()),
            WeightFormat::Bf16 => w.extend(half::bf16::from_f32(rng.f32(-1.0, 1.0)).to_bits().to_le_bytes()),
            WeightFormat::F16 => w.extend(rng.f16_bytes(-1.0, 1.0)),
            WeightFormat::Q8_0 => {
                w.extend(rng.f16_bytes(-0.02, 0.02));
                w.extend((0..32).map(|_| rng.byte()));
            }
            WeightFormat::Q4_0 => {
                w.extend(rng.f16_bytes(-0.1, 0.1));
                w.extend((0..16).map(|_| rng.byte()));
            }
            WeightFormat::Q4_1 => {
                w.extend(rng.f16_bytes(0.0, 0.1));
                w.extend(rng.f16_bytes(-0.8, 0.0));
                w.extend((0..16).map(|_| rng.byte()));
            }
            WeightFormat::Q4_K => {
                w.extend(rng.f16_bytes(0.0, 0.003));
                w.extend(rng.f16_bytes(0.0, 0.003));
                w.extend((0..140).map(|_| rng.byte()));
            }
            WeightFormat::Q6_K => {
                w.extend((0..192).map(|_| rng.byte()));
                w.extend((0..16).map(|_| rng.byte() >> 1)); // i8 scales in [-64, 63] via wrap below
                let n = w.len();
                for v in &mut w[n - 16..] {
                    *v = (*v as i8).wrapping_sub(32) as u8;
                }
                w.extend(rng.f16_bytes(0.0, 0.001));
            }
            WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => unreachable!("generated as the base format"),
        }
    }
    assert_eq!(w.len(), rows * fmt.row_bytes(cols).unwrap());
    w
}

fn random_x(cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..cols).map(|_| rng.f32(-2.0, 2.0)).collect();
    // An all-zero 32-block exercises the zero-scale path.
    if cols >= 64 {
        x[32..64].fill(0.0);
    }
    x
}

fn dequant(fmt: WeightFormat, w: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let rb = fmt.row_bytes(cols).unwrap();
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        reference::dequantize_row(fmt, &w[r * rb..(r + 1) * rb], cols, &mut out[r * cols..(r + 1) * cols]);
    }
    out
}

/// Checks `y` (from a fast kernel) against the exact-integer reference (tight) and the f32
/// dequantized reference (bounded by half an activation quantization step per element).
fn check_against_references(fmt: WeightFormat, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &[f32], what: &str) {
    let mut yq = vec![0.0f32; rows];
    let mut yf = vec![0.0f32; rows];
    reference::matvec_quantized(fmt, w, rows, cols, x, &mut yq).unwrap();
    reference::matvec(fmt, w, rows, cols, x, &mut yf).unwrap();
    let wd = dequant(fmt, w, rows, cols);
    let (xq, step) = match fmt.activation_block() {
        Some(b) => {
            let q = Q8Activations::quantize(x, b);
            let steps: Vec<f32> = (0..cols).map(|i| q.scales()[i / b] / 2.0).collect();
            (q.dequantize(), steps)
        }
        None => (x.to_vec(), vec![0.0; cols]),
    };
    for r in 0..rows {
        let wr = &wd[r * cols..(r + 1) * cols];
        let mag: f32 = wr.iter().zip(&xq).map(|(a, b)| (a * b).abs()).sum::<f32>()
            + wr.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>();
        let tight = 2e-5 * mag + 1e-6;
        assert!(
            (y[r] - yq[r]).abs() <= tight,
            "{what}: {fmt:?} rows={rows} cols={cols} row {r}: kernel {} vs exact-int reference {} (tol {tight})",
            y[r],
            yq[r]
        );
        let bound: f32 = wr.iter().zip(&step).map(|(a, s)| a.abs() * s).sum::<f32>() * 1.01 + tight;
        assert!(
            (y[r] - yf[r]).abs() <= bound,
            "{what}: {fmt:?} rows={rows} cols={cols} row {r}: kernel {} vs f32 reference {} (bound {bound})",
            y[r],
            yf[r]
        );
    }
}

fn col_counts(fmt: WeightFormat) -> Vec<usize> {
    let bs = fmt.block_size();
    if bs == 1 {
        vec![1, 3, 15, 16, 17, 31, 33, 64, 100, 255, 257, 1029]
    } else {
        // 32-block formats: AVX-512 "windows" are 32 (Q4_0, Q8_0) or 16 (Q4_1) blocks, so
        // cover partial, exact and ragged multiples of both.
        [1, 2, 3, 4, 5, 7, 9, 15, 16, 17, 31, 32, 33, 64, 65]
            .iter()
            .map(|k| k * bs)
            .collect()
    }
}

const ROWS: [usize; 4] = [1, 3, 17, 257];

#[test]
fn matvec_all_formats_all_isas_match_reference() {
    let mut rng = Rng(1);
    for isa in Isa::available() {
        for fmt in WeightFormat::ALL {
            for cols in col_counts(fmt) {
                for rows in ROWS {
                    if rows * cols > 1 << 20 {
                        continue;
                    }
                    let w = random_weights(fmt, rows, cols, &mut rng);
                    let x = random_x(cols, &mut rng);
                    let mut y = vec![f32::NAN; rows];
                    matvec_with_isa(isa, fmt, &w, rows, cols, &x, &mut y).unwrap();
                    check_against_references(fmt, &w, rows, cols, &x, &y, &format!("matvec {isa:?}"));
                }
            }
        }
    }
}

#[test]
fn isa_paths_agree_closely() {
    // Same quantized activations on every path: results differ only by f32 summation order.
    let mut rng = Rng(7);
    let (rows, cols) = (33, 768);
    for fmt in WeightFormat::ALL {
        let w = random_weights(fmt, rows, cols, &mut rng);
        let x = random_x(cols, &mut rng);
        let mut base = vec![0.0f32; rows];
        matvec_with_isa(Isa::Scalar, fmt, &w, rows, cols, &x, &mut base).unwrap();
        for isa in Isa::available() {
            let mut y = vec![0.0f32; rows];
            matvec_with_isa(isa, fmt, &w, rows, cols, &x, &mut y).unwrap();
            for r in 0..rows {
                assert!(
                    (y[r] - base[r]).abs() <= 1e-4 * (1.0 + base[r].abs()),
                    "{fmt:?} {isa:?} row {r}: {} vs scalar {}",
                    y[r],
                    base[r]
                );
            }
        }
    }
}

#[test]
fn matvec_multithreaded_pool_matches_single_thread() {
    let mut rng = Rng(3);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for fmt in WeightFormat::ALL {
        let (rows, cols) = (1027, 512);
        let w = random_weights(fmt, rows, cols, &mut rng);
        let x = random_x(cols, &mut rng);
        let mut y1 = vec![0.0f32; rows];
        let mut y2 = vec![0.0f32; rows];
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| matvec(fmt, &w, rows, cols, &x, &mut y1).unwrap());
        pool.install(|| matvec(fmt, &w, rows, cols, &x, &mut y2).unwrap());
        assert_eq!(y1, y2, "{fmt:?}: chunking must not change per-row results");
        check_against_references(fmt, &w, rows, cols, &x, &y2, "matvec pool(2)");
    }
}

#[test]
fn matvec_each_equals_matvec_per_matrix() {
    // Different inputs per matrix, mixed formats (interleaved ones too), ragged rows, more jobs
    // than one pass holds; 2 threads and 1; every result bit-identical to `matvec`.
    let mut rng = Rng(12);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let cols = 256;
    let fmts = [
        WeightFormat::Q4_0,
        WeightFormat::Q8_0x16,
        WeightFormat::Q4_0x16,
        WeightFormat::Q4_K,
        WeightFormat::Q6_K,
        WeightFormat::Q4_1,
        WeightFormat::Bf16,
        WeightFormat::F32,
    ];
    let shapes: Vec<(WeightFormat, usize)> = (0..37).map(|i| (fmts[i % fmts.len()], 1 + (i * 97) % 301)).collect();
    let ws: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(f, r)| random_weights(f, r, cols, &mut rng))
        .collect();
    let xs: Vec<Vec<f32>> = shapes.iter().map(|_| random_x(cols, &mut rng)).collect();
    for isa in Isa::available() {
        let want: Vec<Vec<f32>> = shapes
            .iter()
            .zip(&ws)
            .zip(&xs)
            .map(|((&(f, r), w), x)| {
                let mut y = vec![0.0f32; r];
                matvec_with_isa(isa, f, w, r, cols, x, &mut y).unwrap();
                y
            })
            .collect();
        for p in [&pool, &one] {
            let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&(_, r)| vec![f32::NAN; r]).collect();
            let mut jobs: Vec<MatvecInputJob<'_>> = shapes
                .iter()
                .zip(&ws)
                .zip(&xs)
                .zip(ys.iter_mut())
                .map(|(((&(fmt, _), w), x), y)| MatvecInputJob { fmt, weight: w, x, y })
                .collect();
            p.install(|| matvec_each_with_isa(isa, &mut jobs, cols).unwrap());
            for (i, (got, want)) in ys.iter().zip(&want).enumerate() {
                assert_eq!(
                    got,
                    want,
                    "{isa:?}, {} threads, matrix {i} ({:?})",
                    p.current_num_threads(),
                    shapes[i].0
                );
            }
        }
        // a wrong-sized input is a typed error, not a panic
        let mut y = vec![0.0f32; shapes[0].1];
        let mut jobs = [MatvecInputJob {
            fmt: shapes[0].0,
            weight: &ws[0],
            x: &xs[0][..cols - 32],
            y: &mut y,
        }];
        assert!(matches!(
            matvec_each_with_isa(isa, &mut jobs, cols),
            Err(KernelError::LengthMismatch {
                buffer: Buffer::Input,
                ..
            })
        ));
    }
}

#[test]
fn matvec_many_equals_matvec_per_matrix() {
    // Mixed formats and ragged row counts in one pass, on a 2-thread pool (the task split
    // crosses matrix boundaries) and on one thread; every result bit-identical to `matvec`.
    let mut rng = Rng(11);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let cols = 512;
    let shapes = [
        (WeightFormat::Q4_0, 1031),
        (WeightFormat::Q8_0, 257),
        (WeightFormat::Q4_K, 77),
        (WeightFormat::Bf16, 130),
        (WeightFormat::Q4_0, 3),
        (WeightFormat::F32, 1),
    ];
    let ws: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(f, r)| random_weights(f, r, cols, &mut rng))
        .collect();
    let x = random_x(cols, &mut rng);
    for isa in Isa::available() {
        let want: Vec<Vec<f32>> = shapes
            .iter()
            .zip(&ws)
            .map(|(&(f, r), w)| {
                let mut y = vec![0.0f32; r];
                matvec_with_isa(isa, f, w, r, cols, &x, &mut y).unwrap();
                y
            })
            .collect();
        for threads in [1, 2] {
            let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&(_, r)| vec![f32::NAN; r]).collect();
            let mut jobs: Vec<MatvecJob<'_>> = shapes
                .iter()
                .zip(&ws)
                .zip(ys.iter_mut())
                .map(|((&(fmt, _), w), y)| MatvecJob { fmt, weight: w, y })
                .collect();
            let run = || matvec_many_with_isa(isa, &mut jobs, cols, &x).unwrap();
            if threads == 2 {
                pool.install(run);
            } else {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap()
                    .install(run);
            }
            for (i, (got, want)) in ys.iter().zip(&want).enumerate() {
                assert_eq!(got, want, "{isa:?}, {threads} threads, matrix {i} ({:?})", shapes[i].0);
            }
        }
        // a wrong-sized output is a typed error, not a panic
        let mut short = vec![0.0f32; 2];
        let mut jobs = [MatvecJob {
            fmt: WeightFormat::Q4_0,
            weight: &ws[4],
            y: &mut short,
        }];
        assert!(matches!(
            matvec_many_with_isa(isa, &mut jobs, cols, &x),
            Err(KernelError::LengthMismatch { .. })
        ));
    }
}

#[test]
fn interleaved_layouts_match_reference_on_ragged_shapes() {
    // Q8_0x16 / Q4_0x16: every ISA path (AVX-512 kernel, portable fallback), ragged row
    // counts around the 16-row groups and the 4-group matvec passes, ragged block counts,
    // 1 and 2 threads; matmul (n = 2, 3, 4, 5, 9) equals matvec row by row exactly.
    let mut rng = Rng(21);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for base in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
        for &rows in &[1usize, 15, 16, 17, 63, 64, 65, 100, 1027] {
            for &cols in &[32usize, 96, 512, 2080] {
                let w = random_weights(base, rows, cols, &mut rng);
                let (fmt, packed) = interleaved::repack(base, &w, rows, cols).unwrap();
                assert_eq!(packed.len(), fmt.stored_rows(rows) * base.row_bytes(cols).unwrap());
                assert_eq!(interleaved::to_gguf(fmt, &packed, rows, cols).unwrap(), w);
                let x = random_x(cols, &mut rng);
                for isa in Isa::available() {
                    let mut y = vec![f32::NAN; rows];
                    pool.install(|| matvec_with_isa(isa, fmt, &packed, rows, cols, &x, &mut y).unwrap());
                    check_against_references(base, &w, rows, cols, &x, &y, &format!("{fmt:?} {isa:?}"));
                    let mut y1 = vec![f32::NAN; rows];
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap()
                        .install(|| matvec_with_isa(isa, fmt, &packed, rows, cols, &x, &mut y1).unwrap());
                    assert_eq!(y, y1, "{fmt:?} {isa:?}: thread count must not change results");
                    if rows > 100 || cols > 512 {
                        continue;
                    }
                    // from 16 tokens on AVX-512 the token-parallel kernel runs on the
                    // groups turned back into rows: identical to the row-major weights
                    for n in [17usize, 40] {
                        let xs: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
                        let (mut yi, mut yb) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
                        pool.install(|| {
                            matmul_with_isa(isa, fmt, &packed, rows, cols, &xs, n, &mut yi).unwrap();
                            matmul_with_isa(isa, base, &w, rows, cols, &xs, n, &mut yb).unwrap();
                        });
                        if isa == Isa::Avx512 {
                            assert_eq!(yi, yb, "{fmt:?} n={n}: token-parallel on interleaved weights");
                        } else {
                            for t in 0..n {
                                let xt = &xs[t * cols..(t + 1) * cols];
                                let what = format!("{fmt:?} {isa:?} n={n} token {t}");
                                check_against_references(
                                    base,
                                    &w,
                                    rows,
                                    cols,
                                    xt,
                                    &yi[t * rows..(t + 1) * rows],
                                    &what,
                                );
                            }
                        }
                    }
                    for n in [2usize, 3, 4, 5, 9] {
                        let xs: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
                        let mut ym = vec![f32::NAN; n * rows];
                        pool.install(|| matmul_with_isa(isa, fmt, &packed, rows, cols, &xs, n, &mut ym).unwrap());
                        for t in 0..n {
                            let mut yv = vec![0.0f32; rows];
                            let xt = &xs[t * cols..(t + 1) * cols];
                            matvec_with_isa(isa, fmt, &packed, rows, cols, xt, &mut yv).unwrap();
                            assert_eq!(
                                &ym[t * rows..(t + 1) * rows],
                                &yv[..],
                                "{fmt:?} {isa:?} n={n} token {t}"
                            );
                        }
                    }
                }
            }
        }
    }
    // typed errors
    let w = vec![0u8; 3 * 18];
    assert!(matches!(
        interleaved::repack(WeightFormat::Q4_K, &w, 3, 32),
        Err(KernelError::NotInterleavable(WeightFormat::Q4_K))
    ));
    assert!(matches!(
        interleaved::repack(WeightFormat::Q4_0, &w[1..], 3, 32),
        Err(KernelError::LengthMismatch { .. })
    ));
    let (fmt, packed) = interleaved::repack(WeightFormat::Q4_0, &w, 3, 32).unwrap();
    let mut y = [0.0f32; 3];
    // the interleaved buffer holds 16 rows: a row-major-sized buffer is rejected
    assert!(matches!(
        matvec(fmt, &packed[..3 * 18], 3, 32, &[0.0; 32], &mut y),
        Err(KernelError::LengthMismatch { .. })
    ));
}

#[test]
fn matmul_all_formats_all_isas_match_reference() {
    let mut rng = Rng(2);
    for isa in Isa::available() {
        for fmt in WeightFormat::ALL {
            let bs = fmt.block_size();
            let cols = if bs == 1 { 67 } else { 3 * bs };
            for rows in [1usize, 17, 257] {
                for n in [1usize, 2, 5, 33] {
                    let w = random_weights(fmt, rows, cols, &mut rng);
                    let x: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_with_isa(isa, fmt, &w, rows, cols, &x, n, &mut y).unwrap();
                    for j in 0..n {
                        check_against_references(
                            fmt,
                            &w,
                            rows,
                            cols,
                            &x[j * cols..(j + 1) * cols],
                            &y[j * rows..(j + 1) * rows],
                            &format!("matmul {isa:?} n={n} j={j}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_blocked_paths_match_reference() {
    // Window formats: the small-batch tile path (n < 16) and the token-parallel path (n ≥ 16),
    // with partial token groups and ragged windows.
    let mut rng = Rng(6);
    for isa in Isa::available() {
        for fmt in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0] {
            for (rows, blocks) in [(5usize, 33usize), (6, 64), (7, 65), (9, 17)] {
                let cols = 32 * blocks;
                for n in [2usize, 4, 15, 16, 17, 35] {
                    let w = random_weights(fmt, rows, cols, &mut rng);
                    let x: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
                    let mut y = vec![f32::NAN; n * rows];
                    matmul_with_isa(isa, fmt, &w, rows, cols, &x, n, &mut y).unwrap();
                    for j in 0..n {
                        check_against_references(
                            fmt,
                            &w,
                            rows,
                            cols,
                            &x[j * cols..(j + 1) * cols],
                            &y[j * rows..(j + 1) * rows],
                            &format!("matmul {isa:?} n={n} j={j}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_large_batch_close_to_matvec() {
    // n ≥ 16 may take a token-parallel kernel that sums in another order than matvec.
    let mut rng = Rng(8);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for fmt in WeightFormat::ALL {
        let bs = fmt.block_size();
        let cols = if bs == 1 { 515 } else { 33 * 32.max(bs) };
        let (rows, n) = (203, 37);
        let w = random_weights(fmt, rows, cols, &mut rng);
        let x: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
        let mut y = vec![0.0f32; n * rows];
        pool.install(|| matmul(fmt, &w, rows, cols, &x, n, &mut y).unwrap());
        let wd = dequant(fmt, &w, rows, cols);
        for j in 0..n {
            let xj = &x[j * cols..(j + 1) * cols];
            let mut yj = vec![0.0f32; rows];
            matvec(fmt, &w, rows, cols, xj, &mut yj).unwrap();
            for r in 0..rows {
                let mag: f32 = wd[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(xj)
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                let (a, b) = (y[j * rows + r], yj[r]);
                assert!(
                    (a - b).abs() <= 1e-5 * mag + 1e-6,
                    "{fmt:?} batch row {j} row {r}: matmul {a} vs matvec {b}"
                );
            }
        }
    }
}

#[test]
fn matmul_equals_repeated_matvec() {
    let mut rng = Rng(4);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for fmt in WeightFormat::ALL {
        let (rows, cols, n) = (600, 512, 5);
        let w = random_weights(fmt, rows, cols, &mut rng);
        let x: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
        let mut y = vec![0.0f32; n * rows];
        pool.install(|| matmul(fmt, &w, rows, cols, &x, n, &mut y).unwrap());
        for j in 0..n {
            let mut yj = vec![0.0f32; rows];
            matvec(fmt, &w, rows, cols, &x[j * cols..(j + 1) * cols], &mut yj).unwrap();
            let float = matches!(fmt, WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16);
            if float && Isa::detect() == Isa::Avx512 {
                // the blocked float GEMM sums in another order: equal up to f32 rounding
                let wd = dequant(fmt, &w, rows, cols);
                for r in 0..rows {
                    let mag: f32 = wd[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x[j * cols..(j + 1) * cols])
                        .map(|(a, b)| (a * b).abs())
                        .sum();
                    let (a, b) = (y[j * rows + r], yj[r]);
                    assert!(
                        (a - b).abs() <= 1e-5 * mag + 1e-6,
                        "{fmt:?} batch row {j} row {r}: {a} vs {b}"
                    );
                }
            } else {
                assert_eq!(&y[j * rows..(j + 1) * rows], &yj[..], "{fmt:?} batch row {j}");
            }
        }
    }
}

#[test]
fn known_values_q4_0_and_q8_0() {
    // Q4_0 block, d = 0.5: nibble pattern low = 0..15, high = 15..0 -> values (q-8)*0.5.
    let mut blk = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
    blk.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    let mut out = [0.0f32; 32];
    reference::dequantize_row(WeightFormat::Q4_0, &blk, 32, &mut out);
    assert_eq!(out[0], -4.0);
    assert_eq!(out[15], 3.5);
    assert_eq!(out[16], 3.5);
    assert_eq!(out[31], -4.0);
    // x = one-hot at element 16 (quantizes exactly): y = W[16].
    let mut x = [0.0f32; 32];
    x[16] = 1.0;
    for isa in Isa::available() {
        let mut y = [0.0f32];
        matvec_with_isa(isa, WeightFormat::Q4_0, &blk, 1, 32, &x, &mut y).unwrap();
        assert_eq!(y[0], 3.5, "{isa:?}");
    }
    let mut q8 = half::f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    for isa in Isa::available() {
        let mut y = [0.0f32];
        matvec_with_isa(isa, WeightFormat::Q8_0, &q8, 1, 32, &[1.0; 32], &mut y).unwrap();
        assert_eq!(y[0], -16.0 * 0.25, "{isa:?}"); // sum of (i - 16) for i in 0..32 = -16
    }
}

#[test]
fn activation_quantization_error_is_half_a_step() {
    let mut rng = Rng(5);
    let x = random_x(1024, &mut rng);
    for b in [32, 256] {
        let q = Q8Activations::quantize(&x, b);
        let xd = q.dequantize();
        for i in 0..x.len() {
            let d = q.scales()[i / b];
            assert!((x[i] - xd[i]).abs() <= d * 0.5 * (1.0 + 1e-5), "b={b} i={i}");
        }
        for (g, s) in q.sums16().iter().enumerate() {
            assert_eq!(*s, q.qs()[16 * g..16 * g + 16].iter().map(|&v| v as i32).sum::<i32>());
        }
    }
}

#[test]
fn typed_errors() {
    let w = vec![0u8; 18 * 2];
    let x = vec![0.0f32; 32];
    let mut y = vec![0.0f32; 2];
    assert_eq!(
        matvec(WeightFormat::Q4_0, &w, 2, 33, &x, &mut y),
        Err(KernelError::ColsNotMultipleOfBlock {
            format: WeightFormat::Q4_0,
            cols: 33,
            block_size: 32
        })
    );
    assert_eq!(
        matvec(WeightFormat::Q4_0, &w[1..], 2, 32, &x, &mut y),
        Err(KernelError::LengthMismatch {
            buffer: Buffer::Weight,
            expected: 36,
            actual: 35
        })
    );
    assert_eq!(
        matvec(WeightFormat::Q4_0, &w, 2, 32, &x[1..], &mut y),
        Err(KernelError::LengthMismatch {
            buffer: Buffer::Input,
            expected: 32,
            actual: 31
        })
    );
    assert_eq!(
        matvec(WeightFormat::Q4_0, &w, 2, 32, &x, &mut y[1..]),
        Err(KernelError::LengthMismatch {
            buffer: Buffer::Output,
            expected: 2,
            actual: 1
        })
    );
    let mut y3 = vec![0.0f32; 3 * 2];
    assert_eq!(
        matmul(WeightFormat::Q4_0, &w, 2, 32, &x, 3, &mut y3),
        Err(KernelError::LengthMismatch {
            buffer: Buffer::Input,
            expected: 96,
            actual: 32
        })
    );
    assert_eq!(
        WeightFormat::Q4_K.row_bytes(255),
        Err(KernelError::ColsNotMultipleOfBlock {
            format: WeightFormat::Q4_K,
            cols: 255,
            block_size: 256
        })
    );
    assert_eq!(
        matvec(WeightFormat::F32, &[], usize::MAX, 2, &[0.0; 2], &mut []),
        Err(KernelError::SizeOverflow)
    );
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.is_available() {
            assert_eq!(
                matvec_with_isa(isa, WeightFormat::Q4_0, &w, 2, 32, &x, &mut y),
                Err(KernelError::IsaUnavailable(isa))
            );
        }
    }
    let mut yr = vec![0.0f32; 2];
    assert!(matches!(
        reference::matvec(WeightFormat::Q4_0, &w, 2, 32, &x[..5], &mut yr),
        Err(KernelError::LengthMismatch {
            buffer: Buffer::Input,
            ..
        })
    ));
}

#[test]
fn degenerate_shapes() {
    let mut y: Vec<f32> = vec![];
    matvec(WeightFormat::Q4_0, &[], 0, 64, &[0.0; 64], &mut y).unwrap();
    let mut y = vec![1.0f32; 3];
    matvec(WeightFormat::Q4_0, &[], 3, 0, &[], &mut y).unwrap();
    assert_eq!(y, [0.0; 3]);
    let mut y = vec![1.0f32; 0];
    matmul(WeightFormat::Q8_0, &[0u8; 34], 1, 32, &[], 0, &mut y).unwrap();
}

#[test]
fn this_machine_uses_expected_isa() {
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vbmi") {
        assert_eq!(Isa::detect(), Isa::Avx512);
    }
    assert!(Isa::available().contains(&Isa::detect()));
}

#[test]
fn guided_schedule_is_bit_identical_to_one_thread_and_to_fixed_tasks() {
    // Matrices large enough for many guided claims (several MiB in all, ragged row counts
    // around the 4-row units and 16-row interleaved groups, the BF16 4-row passes), on pools of
    // 2 and 3 threads (odd `join` spreads), for `matvec`, `matvec_many` and `matvec_each`: every
    // result equals the one-thread result exactly, and the fixed-task schedule gives the same.
    let mut rng = Rng(31);
    let cols = 2048;
    let shapes = [
        (WeightFormat::Q4_0x16, 1001),
        (WeightFormat::Q8_0x16, 333),
        (WeightFormat::Bf16, 517),
        (WeightFormat::Q4_0x16, 64),
        (WeightFormat::Q4_K, 203),
        (WeightFormat::Bf16, 3),
    ];
    let ws: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(f, r)| random_weights(f, r, cols, &mut rng))
        .collect();
    let xs: Vec<Vec<f32>> = shapes.iter().map(|_| random_x(cols, &mut rng)).collect();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for isa in Isa::available() {
        let want: Vec<Vec<f32>> = shapes
            .iter()
            .zip(&ws)
            .zip(&xs)
            .map(|((&(f, r), w), x)| {
                let mut y = vec![0.0f32; r];
                one.install(|| matvec_with_isa(isa, f, w, r, cols, x, &mut y).unwrap());
                y
            })
            .collect();
        let want_many: Vec<Vec<f32>> = shapes
            .iter()
            .zip(&ws)
            .map(|(&(f, r), w)| {
                let mut y = vec![0.0f32; r];
                one.install(|| matvec_with_isa(isa, f, w, r, cols, &xs[0], &mut y).unwrap());
                y
            })
            .collect();
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for guided in [true, false] {
                hearth_quant::kernels::set_guided_schedule(guided);
                let ctx = format!("{isa:?}, {threads} threads, guided {guided}");
                for (i, ((&(f, r), w), x)) in shapes.iter().zip(&ws).zip(&xs).enumerate() {
                    let mut y = vec![f32::NAN; r];
                    pool.install(|| matvec_with_isa(isa, f, w, r, cols, x, &mut y).unwrap());
                    assert_eq!(y, want[i], "matvec, {ctx}, matrix {i} ({f:?})");
                }
                let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&(_, r)| vec![f32::NAN; r]).collect();
                let mut jobs: Vec<MatvecJob<'_>> = shapes
                    .iter()
                    .zip(&ws)
                    .zip(ys.iter_mut())
                    .map(|((&(fmt, _), w), y)| MatvecJob { fmt, weight: w, y })
                    .collect();
                pool.install(|| matvec_many_with_isa(isa, &mut jobs, cols, &xs[0]).unwrap());
                assert_eq!(ys, want_many, "matvec_many, {ctx}");
                let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&(_, r)| vec![f32::NAN; r]).collect();
                let mut jobs: Vec<MatvecInputJob<'_>> = shapes
                    .iter()
                    .zip(&ws)
                    .zip(&xs)
                    .zip(ys.iter_mut())
                    .map(|(((&(fmt, _), w), x), y)| MatvecInputJob { fmt, weight: w, x, y })
                    .collect();
                pool.install(|| matvec_each_with_isa(isa, &mut jobs, cols).unwrap());
                assert_eq!(ys, want, "matvec_each, {ctx}");
            }
            hearth_quant::kernels::set_guided_schedule(true);
        }
    }
}
