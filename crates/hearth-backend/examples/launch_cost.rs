//! Host cost of one kernel launch on a cubecl backend: burn ops, hearth's kernels and minimal
//! cubecl kernels that differ in one way each (array vs tensor arguments, `#[define]` dtype,
//! comptime arguments), enqueued `N` times in a row without synchronising.
//!
//! ```text
//! cargo run --release -p hearth-backend --features wgpu --example launch_cost -- wgpu 2000
//! ```

#[cfg(feature = "cube")]
mod kernels {
    use cubecl::prelude::*;

    #[cube(launch_unchecked)]
    pub fn copy_array<F: Float>(x: &Array<F>, out: &mut Array<F>, #[define(F)] _dtype: StorageType) {
        if ABSOLUTE_POS < x.len() {
            out[ABSOLUTE_POS] = x[ABSOLUTE_POS];
        }
    }

    #[cube(launch_unchecked)]
    pub fn copy_tensor<F: Float>(x: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: StorageType) {
        if ABSOLUTE_POS < x.len() {
            out[ABSOLUTE_POS] = x[ABSOLUTE_POS * x.stride(1)];
        }
    }

    #[cube(launch_unchecked)]
    pub fn copy_tensor_comptime<F: Float>(
        x: &Tensor<F>,
        out: &mut Tensor<F>,
        n: u32,
        #[comptime] a: usize,
        #[comptime] b: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        if ABSOLUTE_POS < n as usize {
            let mut v = x[ABSOLUTE_POS * x.stride(1)];
            if comptime!(b) {
                v += F::cast_from(comptime!(a as u32));
            }
            out[ABSOLUTE_POS] = v;
        }
    }
}

#[cfg(feature = "cube")]
mod imp {
    use super::kernels::*;
    use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
    use burn_cubecl::{
        BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, ops::numeric::empty_device_dtype,
        tensor::CubeTensor,
    };
    use cubecl::prelude::{CubeCount, CubeDim};
    use hearth_backend::HearthBackend;
    use std::time::Instant;

    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

    fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        t: Tensor<Cube<R, F, I, BT>, 2>,
    ) -> CubeTensor<R> {
        t.into_primitive().tensor()
    }

    fn wrap<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
        t: CubeTensor<R>,
    ) -> Tensor<Cube<R, F, I, BT>, 2> {
        Tensor::from_primitive(TensorPrimitive::Float(t))
    }

    /// Runs every variant `n` times; prints µs per launch (enqueue only, and until synced).
    pub fn run<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(n: usize, n_big: usize, big_len: usize)
    where
        Cube<R, F, I, BT>: HearthBackend,
    {
        let dev = &<Cube<R, F, I, BT> as burn::tensor::backend::BackendTypes>::Device::default();
        type B<R, F, I, BT> = Cube<R, F, I, BT>;
        let x = Tensor::<B<R, F, I, BT>, 2>::ones([1, 64], dev);
        let y = Tensor::<B<R, F, I, BT>, 2>::ones([1, 64], dev);
        let w = Tensor::<B<R, F, I, BT>, 1>::ones([64], dev);
        let sync = || B::<R, F, I, BT>::sync(dev).expect("sync");
        let time = |name: &str, f: &dyn Fn()| {
            for _ in 0..10 {
                f();
            }
            sync();
            let t0 = Instant::now();
            for _ in 0..n {
                f();
            }
            let enq = t0.elapsed().as_secs_f64();
            sync();
            let all = t0.elapsed().as_secs_f64();
            println!(
                "{name:<28} enqueue {:8.2} µs   with sync {:8.2} µs",
                enq * 1e6 / n as f64,
                all * 1e6 / n as f64
            );
        };
        let launch = |kind: u8, x: Tensor<B<R, F, I, BT>, 2>| -> Tensor<B<R, F, I, BT>, 2> {
            let x = prim(x);
            let client = x.client.clone();
            let dtype = x.dtype;
            let out = empty_device_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
            let count = CubeCount::Static(1, 1, 1);
            let dim = CubeDim::new_1d(64);
            // SAFETY: 64 units over 64-element tensors; every index is bounds-checked in the kernel.
            unsafe {
                match kind {
                    0 => copy_array::launch_unchecked::<R>(
                        &client,
                        count,
                        dim,
                        x.into_array_arg(),
                        out.clone().into_array_arg(),
                        dtype.into(),
                    ),
                    1 => copy_tensor::launch_unchecked::<R>(
                        &client,
                        count,
                        dim,
                        x.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        dtype.into(),
                    ),
                    _ => copy_tensor_comptime::launch_unchecked::<R>(
                        &client,
                        count,
                        dim,
                        x.into_tensor_arg(),
                        out.clone().into_tensor_arg(),
                        64,
                        3,
                        true,
                        dtype.into(),
                    ),
                }
            }
            wrap(out)
        };
        time("burn add_scalar", &|| {
            std::hint::black_box(x.clone().add_scalar(1.0));
        });
        time("burn add", &|| {
            std::hint::black_box(x.clone() + y.clone());
        });
        time("burn empty", &|| {
            std::hint::black_box(Tensor::<B<R, F, I, BT>, 2>::empty([1, 64], dev));
        });
        time("minimal: array args", &|| {
            std::hint::black_box(launch(0, x.clone()));
        });
        time("minimal: tensor args", &|| {
            std::hint::black_box(launch(1, x.clone()));
        });
        time("minimal: tensor + comptime", &|| {
            std::hint::black_box(launch(2, x.clone()));
        });
        time("hearth silu_mul", &|| {
            std::hint::black_box(B::<R, F, I, BT>::silu_mul(x.clone(), y.clone()));
        });
        time("hearth rms_norm", &|| {
            std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
        });
        time("hearth add_rms_norm", &|| {
            std::hint::black_box(B::<R, F, I, BT>::add_rms_norm(x.clone(), y.clone(), w.clone(), 1e-6));
        });
        let big = (0..n_big)
            .map(|i| Tensor::<B<R, F, I, BT>, 1>::zeros([big_len + i * 64], dev))
            .collect::<Vec<_>>();
        sync();
        println!("-- with {n_big} device buffers of ~{} MB alive", (big_len * 4) >> 20);
        time("burn add_scalar", &|| {
            std::hint::black_box(x.clone().add_scalar(1.0));
        });
        time("minimal: tensor args", &|| {
            std::hint::black_box(launch(1, x.clone()));
        });
        time("hearth rms_norm", &|| {
            std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
        });
        time("rms_norm on a big buffer's arg", &|| {
            std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), big[0].clone().slice(0..64), 1e-6));
        });
        let from_threads = std::thread::scope(|s| {
            (0..4)
                .map(|_| s.spawn(|| Tensor::<B<R, F, I, BT>, 1>::ones([64], dev)))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        sync();
        println!("-- weight made on another thread");
        time("hearth rms_norm", &|| {
            std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), from_threads[0].clone(), 1e-6));
        });
        time("burn add (other-thread y)", &|| {
            std::hint::black_box(w.clone() + from_threads[1].clone());
        });
        drop(big);
        for keep in [false, true] {
            // what a prefill leaves behind: many large temporaries of many sizes
            let mut temps = Vec::new();
            for i in 0..300usize {
                let len = (1 << 18) + (i * 7919 % 97) * (1 << 17);
                temps.push(Tensor::<B<R, F, I, BT>, 1>::zeros([len], dev).add_scalar(1.0));
                if i % 3 == 0 && !keep {
                    temps.pop();
                }
            }
            temps.push(Tensor::<B<R, F, I, BT>, 1>::zeros([1 << 28], dev));
            sync();
            if !keep {
                temps.clear();
                sync();
            }
            println!("-- after 300 temporaries of 1–50 MB and one of 1 GiB (kept alive: {keep})");
            time("burn add_scalar", &|| {
                std::hint::black_box(x.clone().add_scalar(1.0));
            });
            time("minimal: array args", &|| {
                std::hint::black_box(launch(0, x.clone()));
            });
            time("hearth rms_norm", &|| {
                std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
            });
            drop(temps);
        }
        // what loading a checkpoint does: ~1.4 GB uploaded from the host in tensors of 4–280 MB
        let mut uploaded = Vec::new();
        for (i, mb) in [280usize, 4, 16, 32, 64, 4, 4, 16, 32, 64]
            .iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            let len = mb << 18;
            let host = vec![i as f32; len];
            uploaded.push(Tensor::<B<R, F, I, BT>, 1>::from_data(
                burn::tensor::TensorData::new(host, [len]),
                dev,
            ));
            if i % 10 == 0 {
                sync();
                println!("-- after uploading {} tensors from the host", i + 1);
                time("burn add_scalar", &|| {
                    std::hint::black_box(x.clone().add_scalar(1.0));
                });
                time("minimal: array args", &|| {
                    std::hint::black_box(launch(0, x.clone()));
                });
                time("minimal: tensor args", &|| {
                    std::hint::black_box(launch(1, x.clone()));
                });
                time("hearth rms_norm", &|| {
                    std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
                });
            }
        }
        drop(uploaded);
        println!("-- after another thread ran kernels on this thread's tensors");
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..200 {
                    std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
                }
                sync();
            });
        });
        time("burn add_scalar", &|| {
            std::hint::black_box(x.clone().add_scalar(1.0));
        });
        time("hearth rms_norm", &|| {
            std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
        });
        println!("-- on another thread, tensors of this one");
        std::thread::scope(|s| {
            s.spawn(|| {
                time("burn add_scalar", &|| {
                    std::hint::black_box(x.clone().add_scalar(1.0));
                });
                time("hearth rms_norm", &|| {
                    std::hint::black_box(B::<R, F, I, BT>::rms_norm(x.clone(), w.clone(), 1e-6));
                });
                let x2 = Tensor::<B<R, F, I, BT>, 2>::ones([1, 64], dev);
                let w2 = Tensor::<B<R, F, I, BT>, 1>::ones([64], dev);
                time("hearth rms_norm (own tensors)", &|| {
                    std::hint::black_box(B::<R, F, I, BT>::rms_norm(x2.clone(), w2.clone(), 1e-6));
                });
            });
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "wgpu".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let n_big: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(150);
    let big_len: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2_400_000);
    // (unused when no cubecl backend is compiled in)
    let _ = (n, n_big, big_len);
    match backend.as_str() {
        #[cfg(feature = "wgpu")]
        "wgpu" => imp::run::<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>(n, n_big, big_len),
        #[cfg(feature = "cuda")]
        "cuda" => imp::run::<cubecl::cuda::CudaRuntime, f32, i32, u8>(n, n_big, big_len),
        other => eprintln!("backend `{other}` is not compiled in (features wgpu, cuda)"),
    }
}
