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
//! `KERNELS_QUICK=1` skips criterion: per shape, the cold median in GB/s and in % of a
//! bandwidth probe run just before it (and of the max of the probes at start and end);
//! `KERNELS_REPEAT=3` repeats and reports medians; `KERNELS_HOT=1` adds a cache-hot median (a
//! slice of at most 1 MiB of rows, re-read). `KERNELS_MATMUL=128` (with `KERNELS_QUICK`) also times `matmul` with that many
//! activation rows (prefill) and prints GFLOP/s. `KERNELS_SHAPES=2048x2048,512x2048` replaces
//! the shape list in that mode. `KERNELS_CPUTIME=1` (quick mode) runs on one thread and times
//! with that thread's CPU time (averages over batches): compute throughput on a busy machine
//! (bandwidth figures are still wall-clock).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth_quant::AlignedBytes;
use hearth_quant::kernels::{
    Isa, WeightFormat, matmul_with_isa, matvec_with_isa, measure_read_bandwidth, set_prefetch_distance,
};
use std::time::{Duration, Instant};

const COLD_SET_BYTES: usize = 640 << 20;
const BW_BYTES: usize = 1 << 30;

fn random_matrix(fmt: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    if fmt.is_interleaved() {
        let base = random_matrix(fmt.base(), rows, cols, seed);
        return hearth_quant::kernels::interleaved::repack(fmt.base(), &base, rows, cols)
            .unwrap()
            .1;
    }
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
            WeightFormat::Q8_0x16 | WeightFormat::Q4_0x16 => unreachable!("generated as their base format"),
        }
    }
    w
}

fn formats() -> Vec<WeightFormat> {
    let sel = std::env::var("KERNELS_BENCH_FORMATS").unwrap_or_default();
    WeightFormat::ALL
        .into_iter()
        .chain([WeightFormat::Q8_0x16, WeightFormat::Q4_0x16])
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

fn time_cold(fmt: WeightFormat, set: &[AlignedBytes], rows: usize, cols: usize, x: &[f32]) -> f64 {
    let mut y = vec![0.0f32; rows];
    median_secs(15, Duration::from_millis(600), |i| {
        matvec(fmt, set[i % set.len()].as_slice(), rows, cols, x, &mut y)
    })
}

fn cpu_time_mode() -> bool {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| std::env::var("KERNELS_CPUTIME").is_ok())
}

/// Seconds on a clock: wall time, or with `KERNELS_CPUTIME=1` (quick mode, one thread) the
/// calling thread's on-CPU time from `/proc/thread-self/schedstat`, which ignores the time other
/// processes hold the core (a busy shared machine).
fn clock() -> f64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if cpu_time_mode() {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        let ns: u64 = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("schedstat ns");
        ns as f64 * 1e-9
    } else {
        T0.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

/// Seconds per call of `f` (given the call index): the median of single calls on the wall
/// clock, or on the CPU clock (whose tick granularity is coarse) the best of 3 averages over
/// ≥ 150 ms batches.
fn median_secs(min_iters: usize, min_time: Duration, mut f: impl FnMut(usize)) -> f64 {
    let mut i = 0;
    if cpu_time_mode() {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let (t0, i0) = (clock(), i);
            while clock() - t0 < 0.15 || i - i0 < 2 {
                f(i);
                i += 1;
            }
            best = best.min((clock() - t0) / (i - i0) as f64);
        }
        return best;
    }
    let mut ts = Vec::new();
    let start = Instant::now();
    while ts.len() < min_iters || start.elapsed() < min_time {
        let t = clock();
        f(i);
        i += 1;
        ts.push(clock() - t);
    }
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

/// `KERNELS_QUICK` mode: our own timing loops only (cold, optionally hot and matmul).
///
/// Each cold measurement is preceded by its own bandwidth probe (256 MiB, best of 5) and
/// reported against it, so drifting load from other processes affects both alike;
/// `KERNELS_REPEAT=k` repeats probe + measurement `k` times and reports the medians.
fn quick(shapes: &[(WeightFormat, usize, usize)], threads: usize) {
    let bw0 = measure_read_bandwidth(BW_BYTES, threads);
    let n_mm: Option<usize> = std::env::var("KERNELS_MATMUL").ok().and_then(|v| v.parse().ok());
    let hot_on = std::env::var("KERNELS_HOT").is_ok() || cpu_time_mode();
    let reps: usize = std::env::var("KERNELS_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut lines = Vec::new();
    for &(fmt, rows, cols) in shapes {
        let rb = fmt.row_bytes(cols).unwrap();
        let bytes = rows * rb;
        let base = random_matrix(fmt, rows, cols, 0x1234_5678 ^ rows as u64);
        let copies = COLD_SET_BYTES.div_ceil(bytes).max(1);
        // 64-byte aligned copies, as the model loader stores weights
        let set: Vec<AlignedBytes> = (0..copies).map(|_| AlignedBytes::copy_of(&base)).collect();
        let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut y = vec![0.0f32; rows];
        let id = format!("{fmt:?}/{rows}x{cols}");
        let (mut gbs, mut local, mut pct) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let bw = measure_read_bandwidth(256 << 20, threads);
            let g = bytes as f64 / time_cold(fmt, &set, rows, cols, &x);
            gbs.push(g);
            local.push(bw);
            pct.push(100.0 * g / bw);
        }
        let hot = hot_on.then(|| {
            let mut hr = ((1usize << 20) / rb).clamp(1, rows);
            if fmt.is_interleaved() {
                // whole 16-row groups
                hr = (hr / 16 * 16).max(16).min(rows);
            }
            let hot_copy = AlignedBytes::copy_of(&base[..hr * rb]);
            let hot_w = hot_copy.as_slice();
            let t = median_secs(50, Duration::from_millis(300), |_| {
                matvec(fmt, hot_w, hr, cols, &x, &mut y[..hr])
            });
            (hr * rb) as f64 / t
        });
        lines.push((id.clone(), median(gbs), median(local), median(pct), hot));
        if let Some(n) = n_mm {
            let xs: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut ys = vec![0.0f32; n * rows];
            let t = median_secs(3, Duration::from_millis(1500), |i| {
                matmul_with_isa(
                    bench_isa(),
                    fmt,
                    set[i % set.len()].as_slice(),
                    rows,
                    cols,
                    &xs,
                    n,
                    &mut ys,
                )
                .unwrap()
            });
            let gflops = 2.0 * (rows * cols * n) as f64 / t / 1e9;
            eprintln!(
                "{id:<20} matmul n={n}: {:>8.2} ms {gflops:>7.1} GFLOP/s {:>8.1} rows/s",
                t * 1e3,
                n as f64 / t
            );
        }
    }
    let bw1 = measure_read_bandwidth(BW_BYTES, threads);
    let bw = bw0.max(bw1) / 1e9;
    eprintln!(
        "isa={:?} threads={threads} reps={reps} bandwidth start {:.2} end {:.2} GB/s",
        bench_isa(),
        bw0 / 1e9,
        bw1 / 1e9
    );
    eprintln!(
        "{:<20} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "cold matvec", "GB/s", "probe GB/s", "% probe", "% start/end", "hot GB/s"
    );
    for (id, cold, probe, pct, hot) in lines {
        let hot = hot.map(|h| format!("{:>10.2}", h / 1e9)).unwrap_or_default();
        eprintln!(
            "{id:<20} {:>10.2} {:>10.2} {pct:>7.1}% {:>9.1}% {hot}",
            cold / 1e9,
            probe / 1e9,
            100.0 * cold / 1e9 / bw,
        );
    }
}

fn bench(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    if std::env::var("KERNELS_QUICK").is_ok() {
        let mut shapes = Vec::new();
        let only: Vec<(usize, usize)> = std::env::var("KERNELS_SHAPES")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.split_once('x'))
            .filter_map(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
            .collect();
        for fmt in formats() {
            for (r, cc) in SHAPES {
                shapes.push((fmt, r, cc));
            }
            if std::env::var("KERNELS_BENCH_BIG").is_ok() {
                shapes.push((fmt, 128_256, 2048));
            }
        }
        if !only.is_empty() {
            shapes = formats()
                .into_iter()
                .flat_map(|f| only.iter().map(move |&(r, c)| (f, r, c)))
                .collect();
        }
        if std::env::var("KERNELS_CPUTIME").is_ok() {
            // Everything on one pool thread, so the thread-CPU clock sees all the work.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            pool.install(|| quick(&shapes, 1));
        } else {
            quick(&shapes, threads);
        }
        return;
    }
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
        // 64-byte aligned copies, as the model loader stores weights
        let set: Vec<AlignedBytes> = (0..copies).map(|_| AlignedBytes::copy_of(&base)).collect();
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
                let w = &set[0].as_slice()[..r * fmt.row_bytes(cols).unwrap()];
                let t = time_cold(fmt, std::slice::from_ref(&AlignedBytes::copy_of(w)), r, cols, &x);
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
                let w = set[i % set.len()].as_slice();
                i += 1;
                matvec(fmt, w, rows, cols, &x, &mut y);
            })
        });
        g.finish();

        let mut g = c.benchmark_group("matvec_hot");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(&id, |b| {
            b.iter(|| matvec(fmt, set[0].as_slice(), rows, cols, &x, &mut y))
        });
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
