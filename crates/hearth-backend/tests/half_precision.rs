//! The kernels with a half-precision compute dtype (f16 on wgpu, bf16 on CUDA), chosen with
//! [`hearth_backend::set_compute_dtype`] before any tensor exists (hence this separate test
//! binary, with one test per backend and its own device). They read and write half precision and
//! accumulate in f32, so they must match the f32 results within half-precision rounding.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{Tensor, TensorData};
use hearth_backend::{BackendKind, DType, HearthBackend, PackedFormat, open_device, ops};

fn host<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// max |a − b| / max |b|
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let s = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / s
}

fn check<B: HearthBackend>(kind: BackendKind, dev: &B::Device, dtype: DType, tol: f32) {
    open_device::<B>(kind, dev, dtype).unwrap();
    let t = |v: Vec<f32>, s: [usize; 2]| Tensor::<B, 2>::from_data(TensorData::new(v, s), dev);
    assert_eq!(
        t(vec![0.0], [1, 1]).dtype(),
        dtype.burn(),
        "the device default is {dtype:?}"
    );

    // matmul: half inputs, f32 accumulation; reference: the same (rounded) inputs in f32 on the host
    let (m, k, n) = (3, 300, 70);
    let (a, c) = (t(vals(m * k, 1), [m, k]), t(vals(k * n, 2), [k, n]));
    let (ah, ch) = (host(a.clone()), host(c.clone()));
    let mut want = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| ah[i * k + p] as f64 * ch[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    let e = rel(&host(B::matmul(a.clone(), c.clone())), &want);
    println!("{dtype:?} matmul rel err {e:.1e}");
    assert!(e < tol, "matmul {e:e}");
    // one row (the vecmat path)
    let e = rel(&host(B::matmul(a.clone().narrow(0, 0, 1), c)), &want[..n]);
    assert!(e < tol, "vecmat {e:e}");

    // RMSNorm, SiLU·mul against the burn-op fallbacks run on f32 copies of the same inputs
    let x = t(vals(5 * 96, 3), [5, 96]);
    let w = Tensor::<B, 1>::from_data(TensorData::new(vals(96, 4), [96]), dev);
    let x32 = x.clone().cast(burn::tensor::FloatDType::F32);
    let w32 = w.clone().cast(burn::tensor::FloatDType::F32);
    let e = rel(
        &host(B::rms_norm(x.clone(), w, 1e-6)),
        &host(ops::rms_norm(x32.clone(), w32, 1e-6)),
    );
    println!("{dtype:?} rms_norm rel err {e:.1e}");
    assert!(e < tol, "rms_norm {e:e}");
    let u = t(vals(5 * 96, 5), [5, 96]);
    let u32_ = u.clone().cast(burn::tensor::FloatDType::F32);
    let e = rel(&host(B::silu_mul(x.clone(), u)), &host(ops::silu_mul(x32, u32_)));
    assert!(e < tol, "silu_mul {e:e}");

    // decode attention in half precision against the fallback on f32 copies (hearth's exact
    // matmul): 40 keys (one cube per row) and 300 keys (the keys split over several cubes per
    // row, joined by a second kernel)
    let f32c = |x: Tensor<B, 4>| x.cast(burn::tensor::FloatDType::F32);
    for keys in [40, 300] {
        let (hkv, g, d) = (2, 2, 64);
        let h = hkv * g;
        let t4 = |v: Vec<f32>, s: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(v, s), dev);
        let q = t4(vals(h * d, 8), [1, h, 1, d]);
        let k = t4(vals(hkv * keys * d, 9), [1, hkv, keys, d]);
        let v = t4(vals(hkv * keys * d, 10), [1, hkv, keys, d]);
        let mask = Tensor::<B, 3>::zeros([1, 1, keys], dev);
        let want = host(ops::gqa_attention_with(
            f32c(q.clone()),
            f32c(k.clone()),
            f32c(v.clone()),
            mask.clone().cast(burn::tensor::FloatDType::F32),
            0.125,
            B::matmul::<4>,
        ));
        let e = rel(&host(B::gqa_attention(q, k, v, mask, 0.125)), &want);
        println!("{dtype:?} attention over {keys} keys rel err {e:.1e}");
        assert!(e < tol, "attention over {keys} keys: {e:e}");
    }

    // dense matvecs (weights row-major behind `.transpose()`, as the loader keeps them): one
    // matrix, q/k/v and gate/up/SiLU, on tensor cores where the device has them, against the
    // host product of the same (rounded) values and against the unit-per-vector kernels
    for (m, k, n) in [(1, 4096, 70), (3, 1024, 33), (4, 160, 17), (1, 14336, 40), (2, 48, 5)] {
        let x = t(vals(m * k, 11), [m, k]);
        let ws: Vec<Tensor<B, 2>> = (0..3).map(|i| t(vals(n * k, 12 + i), [n, k]).transpose()).collect();
        let xh = host(x.clone());
        let wants: Vec<Vec<f32>> = ws
            .iter()
            .map(|w| {
                let wh = host(w.clone().transpose());
                (0..m * n)
                    .map(|i| {
                        (0..k)
                            .map(|p| xh[i / n * k + p] as f64 * wh[i % n * k + p] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect()
            })
            .collect();
        let run = || {
            let one = host(B::matmul(x.clone(), ws[0].clone()));
            let three = B::matmul3(x.clone(), [&ws[0], &ws[1], &ws[2]]).map(host);
            // x / 64 (exact): the gate · up products stay within f16's range
            let silu = host(B::matmul_silu(x.clone() / 64.0, &ws[0], &ws[1]));
            (one, three, silu)
        };
        // the tensor-core kernels (where the device has them) against the default kernels
        let mma = hearth_backend::cube::MatvecShape::parse("mma=1").unwrap();
        hearth_backend::cube::set_thread_matvec_shape(Some(mma));
        let (one, three, silu) = run();
        hearth_backend::cube::set_thread_matvec_shape(None);
        let (one_u, three_u, silu_u) = run();
        let e = rel(&one, &wants[0]);
        println!("{dtype:?} dense matvec [{m}, {k}] x [{k}, {n}] rel err {e:.1e}");
        assert!(e < tol, "dense matvec m{m} k{k} n{n}: {e:e}");
        for i in 0..3 {
            assert!(rel(&three[i], &wants[i]) < tol, "dense matvec3[{i}] m{m} k{k} n{n}");
            // the two kernels differ by f32 summation order, then one rounding to half
            assert!(rel(&three[i], &three_u[i]) < tol / 2.0, "matvec3[{i}] vs unit kernel");
        }
        assert!(
            rel(&one, &one_u) < tol / 2.0,
            "dense matvec vs unit kernel m{m} k{k} n{n}"
        );
        let want_silu: Vec<f32> = wants[0]
            .iter()
            .zip(&wants[1])
            .map(|(g, u)| (g / 64.0) / (1.0 + (-g / 64.0).exp()) * (u / 64.0))
            .collect();
        let e = rel(&silu, &want_silu);
        println!("{dtype:?} dense silu m{m} k{k} n{n} rel err {e:.1e}");
        assert!(e < tol, "dense silu m{m} k{k} n{n}: {e:e}");
        assert!(rel(&silu, &silu_u) < tol, "dense silu vs unit kernel");
    }

    // packed Q8_0 weight × half activations
    let wq: Vec<f32> = vals(7 * 64, 6);
    let bytes = hearth_quant::quantize_to_vec(hearth_quant::GgmlType::Q8_0, &wq).unwrap();
    let deq = hearth_quant::dequantize_to_vec(hearth_quant::GgmlType::Q8_0, &bytes).unwrap();
    let pw = B::upload_packed(PackedFormat::Q8_0, &bytes, 7, 64, dev).unwrap();
    for rows in [1, 6] {
        let xq = t(vals(rows * 64, 7), [rows, 64]);
        let xh = host(xq.clone());
        let want: Vec<f32> = (0..rows * 7)
            .map(|i| (0..64).map(|p| xh[i / 7 * 64 + p] * deq[i % 7 * 64 + p]).sum())
            .collect();
        let e = rel(&host(B::packed_matmul(xq, &pw).unwrap()), &want);
        println!("{dtype:?} packed Q8_0 × [{rows}, 64] rel err {e:.1e}");
        assert!(e < tol, "packed {e:e}");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_f16() {
    use hearth_backend::Wgpu;
    let dev = burn::backend::wgpu::WgpuDevice::DefaultDevice;
    if !hearth_backend::device_supports::<Wgpu>(&dev, DType::F16) {
        // a typed error instead (e.g. a Vulkan device without shaderFloat16)
        let err = open_device::<Wgpu>(BackendKind::Wgpu, &dev, DType::F16).unwrap_err();
        println!("f16 unavailable: {err}");
        assert!(matches!(
            err,
            hearth_backend::BackendError::DTypeUnsupportedOnDevice { .. }
        ));
        return;
    }
    check::<Wgpu>(BackendKind::Wgpu, &dev, DType::F16, 4e-3);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_bf16() {
    let dev = Default::default();
    // an H200 multiplies bf16 (and Q8_0) on tensor cores: the run must cover that path
    assert!(hearth_backend::cube::q8_tensor_cores::<cubecl::cuda::CudaRuntime>(&dev));
    check::<hearth_backend::Cuda>(BackendKind::Cuda, &dev, DType::Bf16, 2e-2);
}
