//! Matvec throughput per weight format, in GB/s of weight bytes, next to measured memory
//! read bandwidth.
//!
//! * `matvec_cold/*`: each iteration reads a different copy of the matrix out of a set
//!   larger than twice the LLC, so weights stream from DRAM as in real decode (all layers'
//!   weights together far exceed the cache). This is the number to compare with bandwidth.
//! * `matvec_hot/*`: one matrix, re-read every iteration (cache-resident when it fits).
//!
//! Environment: `KERNELS_BENCH_FORMATS=Q4_0,Q8_0` restricts formats; `KERNELS_BENCH_BIG=1`
//! adds the 128256×2048 (vocab projection) shape for Q4_0/Q8_0/BF16;
//! `KERNELS_ISA=avx2` forces an ISA path;
//! `KERNELS_PF_SWEEP=0,1024,2048` skips criterion and times each software-prefetch distance.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth_quant::kernels::{Isa, WeightFormat, matvec_with_isa, measure_read_bandwidth, set_prefetch_distance};
use std::time::{Duration, Instant};

const COLD_SET_BYTES: usize = 640 << 20;
const BW_BYTES: usize = 1 << 30;

fn random_matrix(fmt: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let n = rows * fmt.row_bytes(cols).unwrap();
    let mut w: Vec<u8> = (0..n).map(|_| next() as u8).collect();
    // Make every scale / float a sane finite value (no NaN/Inf/denormals).
    let h = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let bb = fmt.block_bytes();
    for b in w.chunks_exact_mut(bb) {
        match fmt {
            WeightFormat::F32 => b.copy_from_slice(&(((b[0] as f32) - 128.0) / 128.0).to_le_bytes()),
            WeightFormat::Bf16 => b[1] = 0x3C | (b[1] & 0x80),
            WeightFormat::F16 => b[1] = 0x30 | (b[1] & 0x83),
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => b[..2].copy_from_slice(&h),
            WeightFormat::Q4_1 | WeightFormat::Q4_K => {
                b[..2].copy_from_slice(&h);
                b[2..4].copy_from_slice(&h);
            }
            WeightFormat::Q6_K => b[208..210].copy_from_slice(&h),
        }
    }
    w
}

fn formats() -> Vec<WeightFormat> {
    let sel = std::env::var("KERNELS_BENCH_FORMATS").unwrap_or_default();
    WeightFormat::ALL
        .into_iter()
        .filter(|f| sel.is_empty() || sel.split(',').any(|s| s.eq_ignore_ascii_case(&format!("{f:?}"))))
        .collect()
}

const SHAPES: [(usize, usize); 3] = [(2048, 2048), (8192, 2048), (2048, 8192)];

/// Median seconds per matvec over the rotating cold set, from our own timing loop.
/// ISA under test: `KERNELS_ISA=scalar|avx2|avx512` forces a path (default: detected).
fn bench_isa() -> Isa {
    match std::env::var("KERNELS_ISA").as_deref() {
        Ok("scalar") => Isa::Scalar,
        Ok("avx2") => Isa::Avx2,
        Ok("avx512") => Isa::Avx512,
        _ => Isa::detect(),
    }
}

fn matvec(fmt: WeightFormat, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) {
    matvec_with_isa(bench_isa(), fmt, w, rows, cols, x, y).unwrap()
}

fn time_cold(fmt: WeightFormat, set: &[Vec<u8>], rows: usize, cols: usize, x: &[f32]) -> f64 {
    let mut y = vec![0.0f32; rows];
    let mut ts = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while ts.len() < 15 || start.elapsed() < Duration::from_millis(600) {
        let w = &set[i % set.len()];
        i += 1;
        let t = Instant::now();
        matvec(fmt, w, rows, cols, x, &mut y);
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn bench(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let bw0 = measure_read_bandwidth(BW_BYTES, threads);
    eprintln!(
        "isa={:?} threads={threads} measured read bandwidth: {:.2} GB/s",
        bench_isa(),
        bw0 / 1e9
    );
    let mut shapes: Vec<(WeightFormat, usize, usize)> = Vec::new();
    for fmt in formats() {
        for (r, cc) in SHAPES {
            shapes.push((fmt, r, cc));
        }
        if std::env::var("KERNELS_BENCH_BIG").is_ok()
            && matches!(fmt, WeightFormat::Q4_0 | WeightFormat::Q8_0 | WeightFormat::Bf16)
        {
            shapes.push((fmt, 128_256, 2048));
        }
    }
    let mut summary = Vec::new();
    for (fmt, rows, cols) in shapes {
        let bytes = rows * fmt.row_bytes(cols).unwrap();
        let base = random_matrix(fmt, rows, cols, 0x1234_5678 ^ rows as u64);
        let copies = COLD_SET_BYTES.div_ceil(bytes).max(1);
        let set: Vec<Vec<u8>> = (0..copies).map(|_| base.clone()).collect();
        drop(base);
        let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut y = vec![0.0f32; rows];
        let id = format!("{fmt:?}/{rows}x{cols}");
        if let Ok(list) = std::env::var("KERNELS_PF_SWEEP") {
            // Tuning mode: only our own timing loop, for each prefetch distance.
            for pf in list.split(',').filter_map(|v| v.parse::<usize>().ok()) {
                set_prefetch_distance(pf);
                let t = time_cold(fmt, &set, rows, cols, &x);
                summary.push((format!("{id} pf={pf}"), bytes as f64 / t));
            }
            if std::env::var("KERNELS_HOT").is_ok() {
                // Cache-resident: 64 rows (fits L2), repeated.
                let r = 64.min(rows);
                let w = &set[0][..r * fmt.row_bytes(cols).unwrap()];
                let t = time_cold(fmt, std::slice::from_ref(&w.to_vec()), r, cols, &x);
                summary.push((format!("{id} hot64"), (w.len()) as f64 / t));
            }
            set_prefetch_distance(hearth_quant::kernels::DEFAULT_PREFETCH_DISTANCE);
            continue;
        }

        let mut g = c.benchmark_group("matvec_cold");
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut i = 0usize;
        g.bench_function(&id, |b| {
            b.iter(|| {
                let w = &set[i % set.len()];
                i += 1;
                matvec(fmt, w, rows, cols, &x, &mut y);
            })
        });
        g.finish();

        let mut g = c.benchmark_group("matvec_hot");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(&id, |b| b.iter(|| matvec(fmt, &set[0], rows, cols, &x, &mut y)));
        g.finish();

        let t = time_cold(fmt, &set, rows, cols, &x);
        summary.push((id, bytes as f64 / t));
    }
    let bw1 = measure_read_bandwidth(BW_BYTES, threads);
    let bw = bw0.max(bw1);
    eprintln!(
        "\nread bandwidth: start {:.2} GB/s, end {:.2} GB/s (using max {:.2})",
        bw0 / 1e9,
        bw1 / 1e9,
        bw / 1e9
    );
    eprintln!("{:<22} {:>10} {:>8}", "cold matvec", "GB/s", "% of BW");
    for (id, gbs) in summary {
        eprintln!("{id:<22} {:>10.2} {:>7.1}%", gbs / 1e9, 100.0 * gbs / bw);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
