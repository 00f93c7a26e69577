//! Weight-read bandwidth of hearth's matrix × vector kernels on a cubecl device, next to the
//! device's read bandwidth measured in the same run (`cube::read_bandwidth`).
//!
//! The shapes are one decoder layer and the output head of llama-3.1-8b (K = 4096, hidden
//! 14336, vocabulary 128256); each line is one kernel: Q8_0/Q4_0 packed weights
//! (`packed_matmul`, the fused q/k/v and gate/up/SiLU kernels) and dense bf16 weights
//! (`matmul` with a row-major weight behind `.transpose()`, as the loader keeps them), one
//! activation row. Each is launched `ITERS` times in a row and synchronised once; the figure
//! is weight bytes per launch ÷ time per launch. `HEARTH_MATVEC` picks the kernel shape (see
//! `hearth_backend::cube::MatvecShape`), so a shell loop sweeps shapes.
//!
//! ```text
//! cargo run --release -p hearth-backend --features cuda --example matvec_bw -- cuda [ITERS] [FILTER]
//! cargo run --release -p hearth-backend --features wgpu --example matvec_bw -- wgpu 3 small
//! ```
//!
//! `FILTER` keeps the cases whose name contains it (`small` runs 512-wide shapes, for a
//! smoke run on llvmpipe). The `attn mla` lines time MLA decode attention (16 and 128 heads on
//! one 576-wide latent head; `HEARTH_ATTN_FOLD=1` for the group-folded products instead of
//! the general kernel).

#[cfg(feature = "cube")]
mod bench {
    use burn::tensor::{DType, Distribution, Tensor};
    use hearth_backend::{HearthBackend, PackedFormat, PackedMatrix};
    use std::time::Instant;

    /// GGUF-layout bytes of `n · k` values of `format` with a valid f16 scale per block and
    /// pseudo-random quants (the timing does not depend on the values).
    fn blocks(format: PackedFormat, n: usize, k: usize) -> Vec<u8> {
        let (block, quant_bytes) = match format {
            PackedFormat::Q8_0 => (34, 32),
            PackedFormat::Q4_0 => (18, 16),
            _ => unreachable!("only the 32-value formats"),
        };
        let count = n * k / 32;
        let mut out = Vec::with_capacity(count * block);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let scale = half::f16::from_f32(0.01).to_le_bytes();
        for _ in 0..count {
            out.extend_from_slice(&scale);
            for _ in 0..quant_bytes {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                out.push(state as u8);
            }
        }
        out
    }

    pub fn run<B: HearthBackend>(dev: &B::Device, iters: usize, filter: &str, dense: &[DType]) {
        let sync = || B::sync(dev).expect("sync");
        for w in [None, Some(PackedFormat::Q8_0), Some(PackedFormat::Q4_0)] {
            println!("matvec shape for {w:?}: {:?}", hearth_backend::cube::matvec_shape(w));
        }
        // the yardstick, measured now
        let bw = B::read_bandwidth(dev, 1 << 30).unwrap_or(f64::NAN);
        println!("read bandwidth (stream kernel): {:.1} GB/s", bw / 1e9);
        let time = |name: &str, bytes: usize, f: &dyn Fn()| {
            if !name.contains(filter) {
                return;
            }
            for _ in 0..3 {
                f();
            }
            sync();
            let t0 = Instant::now();
            for _ in 0..iters {
                f();
            }
            sync();
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            let gbs = bytes as f64 / s / 1e9;
            println!(
                "{name:<34} {:9.1} µs  {gbs:8.1} GB/s  {:5.1}% of read bandwidth",
                s * 1e6,
                100.0 * gbs * 1e9 / bw
            );
        };
        let shapes: &[(&str, usize, usize)] = &[
            ("q/o 4096x4096", 4096, 4096),
            ("k/v 1024x4096", 1024, 4096),
            ("gate/up 14336x4096", 14336, 4096),
            ("down 4096x14336", 4096, 14336),
            ("head 128256x4096", 128256, 4096),
            ("small 512x512", 512, 512),
        ];
        for format in [PackedFormat::Q8_0, PackedFormat::Q4_0] {
            for &(name, n, k) in shapes {
                if !name.contains(filter) && !format!("{format:?}").contains(filter) {
                    continue;
                }
                let bytes = blocks(format, n, k);
                let w: PackedMatrix<B> = B::upload_packed(format, &bytes, n, k, dev).expect("upload");
                let x = Tensor::<B, 2>::random([1, k], Distribution::Uniform(-1.0, 1.0), dev);
                time(&format!("{format:?} {name}"), bytes.len(), &|| {
                    std::hint::black_box(B::packed_matmul(x.clone(), &w).expect("matvec"));
                });
                // half-precision activations, as a bf16 decode step passes them
                for &dtype in dense.iter().filter(|d| **d != DType::F32) {
                    let xh = x.clone().cast(dtype);
                    time(&format!("{format:?} {name} x {dtype:?}"), bytes.len(), &|| {
                        std::hint::black_box(B::packed_matmul(xh.clone(), &w).expect("matvec"));
                    });
                }
                if name.starts_with("gate") || name.starts_with("small") {
                    let up: PackedMatrix<B> = B::upload_packed(format, &bytes, n, k, dev).expect("upload");
                    time(&format!("{format:?} {name} gate+up+silu"), 2 * bytes.len(), &|| {
                        std::hint::black_box(B::packed_matmul_silu(x.clone(), &w, &up).expect("silu"));
                    });
                }
                if name.starts_with("q/o") || name.starts_with("small") {
                    let kv_bytes = blocks(format, n / 4, k);
                    let kv: PackedMatrix<B> = B::upload_packed(format, &kv_bytes, n / 4, k, dev).expect("upload");
                    time(
                        &format!("{format:?} {name} q+k+v"),
                        bytes.len() + 2 * kv_bytes.len(),
                        &|| {
                            std::hint::black_box(B::packed_matmul3(x.clone(), [&w, &kv, &kv]).expect("qkv"));
                        },
                    );
                }
                drop(w);
                sync();
            }
        }
        for &dtype in dense {
            for &(name, n, k) in shapes {
                let label = format!("dense {dtype:?} {name}");
                if !label.contains(filter) {
                    continue;
                }
                let w = Tensor::<B, 2>::random([n, k], Distribution::Uniform(-1.0, 1.0), dev).cast(dtype);
                let wt = w.transpose();
                let x = Tensor::<B, 2>::random([1, k], Distribution::Uniform(-1.0, 1.0), dev).cast(dtype);
                time(&label, n * k * dtype.size(), &|| {
                    std::hint::black_box(B::matmul(x.clone(), wt.clone()));
                });
                drop(wt);
                sync();
            }
        }
        // MLA decode attention (absorbed: one latent head of 512 + 64 RoPE dims, the values a
        // view of the key rows) at 16 and 128 heads: bytes are the latent cache read once
        for &dtype in dense {
            for (h, s) in [(16, 1024), (128, 1024), (128, 4096)] {
                let label = format!("attn mla h{h} s{s} {dtype:?}");
                if !label.contains(filter) {
                    continue;
                }
                let (d, dv) = (576, 512);
                let q = Tensor::<B, 4>::random([1, h, 1, d], Distribution::Uniform(-1.0, 1.0), dev).cast(dtype);
                let kc = Tensor::<B, 4>::random([1, 1, s + 64, d], Distribution::Uniform(-1.0, 1.0), dev).cast(dtype);
                let k = kc.slice([0..1, 0..1, 0..s, 0..d]);
                let v = B::prefix(k.clone(), 3, dv);
                let mask = Tensor::<B, 3>::zeros([1, 1, s], dev).cast(dtype);
                time(&label, s * d * dtype.size(), &|| {
                    std::hint::black_box(B::gqa_attention(q.clone(), k.clone(), v.clone(), mask.clone(), 0.04));
                });
                sync();
            }
        }
    }
}

#[cfg_attr(not(feature = "cube"), allow(unused_variables))]
fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "cuda".into());
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50);
    let filter = args.next().unwrap_or_default();
    match backend.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => bench::run::<hearth_backend::Cuda>(
            &Default::default(),
            iters,
            &filter,
            &[burn::tensor::DType::BF16, burn::tensor::DType::F32],
        ),
        #[cfg(feature = "wgpu")]
        // llvmpipe and many Vulkan devices have no bf16
        "wgpu" => bench::run::<hearth_backend::Wgpu>(&Default::default(), iters, &filter, &[burn::tensor::DType::F32]),
        other => {
            eprintln!("backend `{other}` is not compiled in (features: cuda, wgpu)");
            std::process::exit(2);
        }
    }
}
