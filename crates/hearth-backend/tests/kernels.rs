//! hearth's cubecl kernels against the burn-op fallbacks (and a float64 host reference), on
//! random ragged shapes, for every compiled GPU backend: wgpu (Vulkan; Mesa's llvmpipe in CI)
//! and CUDA.
//!
//! `cargo test -p hearth-backend --features wgpu --test kernels` (and `--features cuda` on a
//! CUDA machine). These tests fail, never skip, when the backend has no device: burn panics
//! ("No possible adapter available") on the first tensor.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::{Tensor, TensorData, backend::Backend};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use hearth_backend::{
    BackendError, BackendKind, DType, Expert, HearthBackend, NormSums, PackedFormat, PackedMatrix, PreNorm, RopeTables,
    Weight, device_supports, open_device, ops, set_compute_dtype,
};
use hearth_quant::GgmlType;
use std::str::FromStr;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// uniform in [-1, 1)
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn tensor<B: Backend, const D: usize>(v: Vec<f32>, shape: [usize; D], dev: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), dev)
}

/// max |a − b| / max(max |b|, floor)
fn rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(floor, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Batched host reference `a[b] · c[b]` in f64, with the per-element bound Σ|a||c|.
fn host_matmul(a: &[f32], c: &[f32], batch: usize, m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f64>) {
    let mut out = vec![0.0f32; batch * m * n];
    let mut mag = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut g) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a[(bi * m + i) * k + p] as f64 * c[(bi * k + p) * n + j] as f64;
                    s += x;
                    g += x.abs();
                }
                out[(bi * m + i) * n + j] = s as f32;
                mag[(bi * m + i) * n + j] = g;
            }
        }
    }
    (out, mag)
}

/// Worst `|got − ref| / Σ|a||c|` over the elements: ~1e-7 for f32 accumulation, ~5e-4 for TF32.
fn matmul_err(got: &[f32], want: &[f32], mag: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(mag)
        .map(|((g, w), m)| (*g as f64 - *w as f64).abs() / m.max(1e-30))
        .fold(0.0, f64::max)
}

const F32_MATMUL_TOL: f64 = 2e-6;

fn matmul_2d<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(1);
    let mut shapes = vec![
        (1, 1, 1),
        (1, 37, 53),
        (5, 3, 7),
        (17, 129, 65),
        (1, 1024, 300),
        (33, 96, 1),
    ];
    for _ in 0..6 {
        shapes.push((1 + rng.below(40), 1 + rng.below(300), 1 + rng.below(200)));
    }
    for (m, k, n) in shapes {
        let (a, c) = (rng.vec(m * k), rng.vec(k * n));
        let (want, mag) = host_matmul(&a, &c, 1, m, k, n);
        let ta = tensor::<B, 2>(a, [m, k], dev);
        let tc = tensor::<B, 2>(c, [k, n], dev);
        let got = host(B::matmul(ta.clone(), tc.clone()));
        let fallback = host(ta.matmul(tc));
        let (e, ef) = (matmul_err(&got, &want, &mag), matmul_err(&fallback, &want, &mag));
        println!("matmul [{m},{k}]x[{k},{n}]: kernel {e:.1e}, burn fallback {ef:.1e}");
        assert!(e <= F32_MATMUL_TOL, "[{m},{k}]x[{k},{n}]: {e:e}");
        assert!(ef <= 2e-3, "burn's matmul is off: {ef:e}");
        assert!(rel_err(&got, &fallback, 1e-3) < 5e-3);
    }
}

/// Launch shapes of the vectorised matvecs besides the default: every one must compute the
/// same products (one row per cube and one vector per pass; many rows sharing `x`; one plane
/// per cube with deep unrolling; the integer conversion of quants; quants through the 2²³
/// mantissa and through f16 pairs).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn matvec_shapes() -> Vec<hearth_backend::cube::MatvecShape> {
    use hearth_backend::cube::MatvecShape;
    [
        "rows=1,unroll=1,units=32,convert=0",
        "rows=4,unroll=2",
        "rows=8,unroll=8,units=32",
        "rows=2,units=256,convert=0",
        "rows=1,unroll=1,units=32,convert=2",
        "rows=2,unroll=8,convert=1",
        "rows=4,unroll=2,convert=2",
    ]
    .iter()
    .map(|s| MatvecShape::parse(s).unwrap())
    .collect()
}

/// `x · w` with `w` a transposed view of a contiguous `[N, K]` (how dense device weights are
/// kept), few rows: the cubecl backends' dense matvec kernel, against the host product.
fn matvec_transposed<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(3);
    let mut shapes = vec![
        (1, 1, 1),
        (1, 64, 48),
        (2, 37, 53),
        (4, 1024, 300),
        (3, 2048, 7),
        (1, 6, 1000),
    ];
    for _ in 0..6 {
        shapes.push((1 + rng.below(4), 1 + rng.below(700), 1 + rng.below(300)));
    }
    for (m, k, n) in shapes {
        let (a, wt) = (rng.vec(m * k), rng.vec(n * k));
        // c = wtᵀ: [k, n]
        let c: Vec<f32> = (0..k * n).map(|i| wt[(i % n) * k + i / n]).collect();
        let (want, mag) = host_matmul(&a, &c, 1, m, k, n);
        let ta = tensor::<B, 2>(a, [m, k], dev);
        let tw = tensor::<B, 2>(wt, [n, k], dev).transpose();
        let got = host(B::matmul(ta.clone(), tw.clone()));
        let e = matmul_err(&got, &want, &mag);
        assert!(e <= F32_MATMUL_TOL, "[{m},{k}]x[{n},{k}]ᵀ: {e:e}");
        #[cfg(any(feature = "wgpu", feature = "cuda"))]
        for shape in matvec_shapes() {
            hearth_backend::cube::set_matvec_shape(Some(shape));
            let got = host(B::matmul(ta.clone(), tw.clone()));
            hearth_backend::cube::set_matvec_shape(None);
            let e = matmul_err(&got, &want, &mag);
            assert!(e <= F32_MATMUL_TOL, "[{m},{k}]x[{n},{k}]ᵀ {shape:?}: {e:e}");
        }
    }
}

fn matmul_batched<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(2);
    for _ in 0..5 {
        let (b, h) = (1 + rng.below(3), 1 + rng.below(4));
        let (m, k, n) = (1 + rng.below(20), 1 + rng.below(70), 1 + rng.below(50));
        // 3-D
        let (a, c) = (rng.vec(b * m * k), rng.vec(b * k * n));
        let (want, mag) = host_matmul(&a, &c, b, m, k, n);
        let ta = tensor::<B, 3>(a.clone(), [b, m, k], dev);
        let tc = tensor::<B, 3>(c, [b, k, n], dev);
        let got = host(B::matmul(ta.clone(), tc.clone()));
        assert!(
            matmul_err(&got, &want, &mag) <= F32_MATMUL_TOL,
            "3-D [{b},{m},{k}]x[{b},{k},{n}]"
        );
        assert!(rel_err(&got, &host(ta.clone().matmul(tc)), 1e-3) < 5e-3);

        // 3-D with the rhs broadcast over the batch
        let c1 = rng.vec(k * n);
        let cb: Vec<f32> = (0..b).flat_map(|_| c1.iter().copied()).collect();
        let (want, mag) = host_matmul(&a, &cb, b, m, k, n);
        let got = host(B::matmul(ta, tensor::<B, 3>(c1, [1, k, n], dev)));
        assert!(matmul_err(&got, &want, &mag) <= F32_MATMUL_TOL, "broadcast rhs");

        // 4-D, rhs given transposed (attention's q·kᵀ) and lhs expanded (MLA's weight)
        let (q, kk) = (rng.vec(b * h * m * k), rng.vec(b * h * n * k));
        let tq = tensor::<B, 4>(q.clone(), [b, h, m, k], dev);
        let tk = tensor::<B, 4>(kk.clone(), [b, h, n, k], dev);
        let mut kt = vec![0.0f32; kk.len()];
        for g in 0..b * h {
            for j in 0..n {
                for p in 0..k {
                    kt[(g * k + p) * n + j] = kk[(g * n + j) * k + p];
                }
            }
        }
        let (want, mag) = host_matmul(&q, &kt, b * h, m, k, n);
        let got = host(B::matmul(tq.clone(), tk.clone().swap_dims(2, 3)));
        let e = matmul_err(&got, &want, &mag);
        println!("matmul 4-D [{b},{h},{m},{k}]x[{b},{h},{k},{n}]ᵀ: {e:.1e}");
        assert!(e <= F32_MATMUL_TOL, "4-D transposed rhs: {e:e}");
        assert!(rel_err(&got, &host(tq.matmul(tk.swap_dims(2, 3))), 1e-3) < 5e-3);

        let w = rng.vec(h * k * n);
        let wb: Vec<f32> = (0..b).flat_map(|_| w.iter().copied()).collect();
        let (want, mag) = host_matmul(&q, &wb, b * h, m, k, n);
        let tw = tensor::<B, 3>(w, [h, k, n], dev)
            .unsqueeze_dim::<4>(0)
            .expand([b, h, k, n]);
        let got = host(B::matmul(tensor::<B, 4>(q, [b, h, m, k], dev), tw));
        assert!(matmul_err(&got, &want, &mag) <= F32_MATMUL_TOL, "4-D expanded rhs");
    }
}

fn rms_norm<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(3);
    let mut shapes = vec![(1, 1), (3, 7), (2, 64), (5, 4099), (1, 2048), (70, 33)];
    for _ in 0..6 {
        shapes.push((1 + rng.below(50), 1 + rng.below(1500)));
    }
    for plane in [true, false] {
        hearth_backend::cube::set_plane_reductions(plane);
        for &(rows, cols) in &shapes {
            let x = tensor::<B, 2>(rng.vec(rows * cols), [rows, cols], dev) * 3.0;
            let w = tensor::<B, 1>(rng.vec(cols), [cols], dev);
            let got = host(B::rms_norm(x.clone(), w.clone(), 1e-6));
            let want = host(ops::rms_norm(x, w, 1e-6));
            let e = rel_err(&got, &want, 1e-6);
            assert!(e < 1e-5, "rms_norm [{rows}, {cols}] plane={plane}: {e:e}");
        }
    }
    hearth_backend::cube::set_plane_reductions(true);
    // 4-D input (per-head q/k norm), and a non-contiguous view
    let x = tensor::<B, 4>(rng.vec(2 * 3 * 5 * 24), [2, 3, 5, 24], dev);
    let w = tensor::<B, 1>(rng.vec(24), [24], dev);
    let e = rel_err(
        &host(B::rms_norm(x.clone(), w.clone(), 1e-5)),
        &host(ops::rms_norm(x.clone(), w.clone(), 1e-5)),
        1e-6,
    );
    assert!(e < 1e-5, "4-D: {e:e}");
    let xt = x.swap_dims(1, 2);
    let e = rel_err(
        &host(B::rms_norm(xt.clone(), w.clone(), 1e-5)),
        &host(ops::rms_norm(xt, w.clone(), 1e-5)),
        1e-6,
    );
    assert!(e < 1e-5, "swapped dims: {e:e}");
}

fn silu_mul<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(4);
    let mut shapes = vec![[1, 1, 1], [1, 3, 5], [2, 7, 64], [1, 1, 8193]];
    for _ in 0..5 {
        shapes.push([1 + rng.below(3), 1 + rng.below(9), 1 + rng.below(700)]);
    }
    for s in shapes {
        let n = s.iter().product();
        let g = tensor::<B, 3>(rng.vec(n), s, dev) * 8.0;
        let u = tensor::<B, 3>(rng.vec(n), s, dev);
        let e = rel_err(
            &host(B::silu_mul(g.clone(), u.clone())),
            &host(ops::silu_mul(g.clone(), u.clone())),
            1e-6,
        );
        assert!(e < 1e-6, "silu_mul {s:?}: {e:e}");
        // non-contiguous operands
        let (gt, ut) = (g.swap_dims(0, 2), u.swap_dims(0, 2));
        let e = rel_err(
            &host(B::silu_mul(gt.clone(), ut.clone())),
            &host(ops::silu_mul(gt, ut)),
            1e-6,
        );
        assert!(e < 1e-6, "silu_mul transposed {s:?}: {e:e}");
    }
}

fn attention<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(5);
    for _ in 0..4 {
        let (b, hkv, g) = (1 + rng.below(2), 1 + rng.below(3), 1 + rng.below(3));
        let (t, s, d) = (1 + rng.below(6), 1 + rng.below(20), 1 + rng.below(40));
        let h = hkv * g;
        let q = tensor::<B, 4>(rng.vec(b * h * t * d), [b, h, t, d], dev);
        let k = tensor::<B, 4>(rng.vec(b * hkv * s * d), [b, hkv, s, d], dev);
        let v = tensor::<B, 4>(rng.vec(b * hkv * s * d), [b, hkv, s, d], dev);
        let mask: Vec<f32> = (0..b * t * s)
            .map(|i| {
                if i % s <= i / s % t + s.saturating_sub(t) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mask = tensor::<B, 3>(mask, [b, t, s], dev);
        let got = host(B::gqa_attention(q.clone(), k.clone(), v.clone(), mask.clone(), 0.3));
        let want = host(ops::gqa_attention(q, k, v, mask, 0.3));
        let e = rel_err(&got, &want, 1e-3);
        assert!(e < 5e-3, "attention b{b} h{h} hkv{hkv} t{t} s{s} d{d}: {e:e}");
    }
}

/// hearth's cubecl kernels called directly (not through the trait, which falls back), for the
/// generic test functions below.
trait CubeKernels: HearthBackend {
    fn k_rope(
        x: Tensor<Self, 4>,
        c: &Tensor<Self, 4>,
        s: &Tensor<Self, 4>,
        r: usize,
        il: bool,
    ) -> Result<Tensor<Self, 4>, BackendError>;
    fn k_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Tensor<Self, 3>,
        scale: f64,
    ) -> Result<Tensor<Self, 4>, BackendError>;
    #[allow(clippy::type_complexity)]
    fn k_add_rms_norm(
        x: Tensor<Self, 2>,
        r: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
    ) -> Result<(Tensor<Self, 2>, Tensor<Self, 2>), BackendError>;
    fn k_matvec(x: Tensor<Self, 2>, w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError>;
    fn k_write_at(dst: Tensor<Self, 4>, src: Tensor<Self, 4>, at: [usize; 4]) -> Result<Tensor<Self, 4>, BackendError>;
    fn k_matvec3(x: Tensor<Self, 2>, w: [&PackedMatrix<Self>; 3]) -> Result<[Tensor<Self, 2>; 3], BackendError>;
    fn k_silu(
        x: Tensor<Self, 2>,
        g: &PackedMatrix<Self>,
        u: &PackedMatrix<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError>;
    #[allow(clippy::type_complexity)]
    fn k_rope2(
        a: Tensor<Self, 4>,
        b: Tensor<Self, 4>,
        c: &Tensor<Self, 4>,
        s: &Tensor<Self, 4>,
        r: usize,
        il: bool,
    ) -> Result<(Tensor<Self, 4>, Tensor<Self, 4>), BackendError>;
    #[allow(clippy::type_complexity)]
    fn k_write_at2(
        da: Tensor<Self, 4>,
        sa: Tensor<Self, 4>,
        db: Tensor<Self, 4>,
        sb: Tensor<Self, 4>,
        at: [usize; 4],
    ) -> Option<(Tensor<Self, 4>, Tensor<Self, 4>)>;
    #[allow(clippy::type_complexity)]
    fn k_dense3(x: Tensor<Self, 2>, w: [&Tensor<Self, 2>; 3]) -> Option<[Tensor<Self, 2>; 3]>;
    fn k_dense_silu(x: Tensor<Self, 2>, g: &Tensor<Self, 2>, u: &Tensor<Self, 2>) -> Option<Tensor<Self, 2>>;
    fn k_norm3(h: Tensor<Self, 2>, n: PreNorm<Self>, w: [Weight<Self>; 3]) -> Option<[Tensor<Self, 2>; 3]>;
    fn k_norm_silu(h: Tensor<Self, 2>, n: PreNorm<Self>, g: Weight<Self>, u: Weight<Self>) -> Option<Tensor<Self, 2>>;
    fn k_matvec_add(x: Tensor<Self, 2>, w: Weight<Self>, r: Tensor<Self, 2>) -> Option<Tensor<Self, 2>>;
    #[allow(clippy::type_complexity)]
    fn k_add_sums(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        r: Tensor<Self, 2>,
        next: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Option<(Tensor<Self, 2>, Tensor<Self, 2>)>;
    fn k_sums3(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        w: [Weight<Self>; 3],
    ) -> Option<[Tensor<Self, 2>; 3]>;
    fn k_sums_silu(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        g: Weight<Self>,
        u: Weight<Self>,
    ) -> Option<Tensor<Self, 2>>;
    fn k_sums_norm(
        x: Tensor<Self, 2>,
        g: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Option<Tensor<Self, 2>>;
    fn k_moe(x: Tensor<Self, 2>, e: &[Expert<Self>], w: &[f32]) -> Option<Tensor<Self, 2>>;
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn k_rope_write(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        rope: RopeTables<Self>,
        kc: Tensor<Self, 4>,
        vc: Tensor<Self, 4>,
        at: [usize; 4],
    ) -> Option<(Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>)>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> CubeKernels for CubeBackend<R, F, I, BT> {
    fn k_moe(x: Tensor<Self, 2>, e: &[Expert<Self>], w: &[f32]) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::moe_experts(x, e, w)
    }
    fn k_rope(
        x: Tensor<Self, 4>,
        c: &Tensor<Self, 4>,
        s: &Tensor<Self, 4>,
        r: usize,
        il: bool,
    ) -> Result<Tensor<Self, 4>, BackendError> {
        hearth_backend::cube::rope(x, c, s, r, il)
    }
    fn k_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: Tensor<Self, 3>,
        scale: f64,
    ) -> Result<Tensor<Self, 4>, BackendError> {
        hearth_backend::cube::gqa_attention(q, k, v, mask, scale)
    }
    fn k_add_rms_norm(
        x: Tensor<Self, 2>,
        r: Tensor<Self, 2>,
        w: Tensor<Self, 1>,
        eps: f64,
    ) -> Result<(Tensor<Self, 2>, Tensor<Self, 2>), BackendError> {
        hearth_backend::cube::add_rms_norm(x, r, w, eps)
    }
    fn k_matvec(x: Tensor<Self, 2>, w: &PackedMatrix<Self>) -> Result<Tensor<Self, 2>, BackendError> {
        hearth_backend::cube::packed_matvec(x, w)
    }
    fn k_write_at(dst: Tensor<Self, 4>, src: Tensor<Self, 4>, at: [usize; 4]) -> Result<Tensor<Self, 4>, BackendError> {
        hearth_backend::cube::write_at(dst, src, at)
    }
    fn k_matvec3(x: Tensor<Self, 2>, w: [&PackedMatrix<Self>; 3]) -> Result<[Tensor<Self, 2>; 3], BackendError> {
        hearth_backend::cube::packed_matvec3(x, w)
    }
    fn k_silu(
        x: Tensor<Self, 2>,
        g: &PackedMatrix<Self>,
        u: &PackedMatrix<Self>,
    ) -> Result<Tensor<Self, 2>, BackendError> {
        hearth_backend::cube::packed_matvec_silu(x, g, u)
    }
    fn k_rope2(
        a: Tensor<Self, 4>,
        b: Tensor<Self, 4>,
        c: &Tensor<Self, 4>,
        s: &Tensor<Self, 4>,
        r: usize,
        il: bool,
    ) -> Result<(Tensor<Self, 4>, Tensor<Self, 4>), BackendError> {
        hearth_backend::cube::rope2(a, b, c, s, r, il)
    }
    fn k_write_at2(
        da: Tensor<Self, 4>,
        sa: Tensor<Self, 4>,
        db: Tensor<Self, 4>,
        sb: Tensor<Self, 4>,
        at: [usize; 4],
    ) -> Option<(Tensor<Self, 4>, Tensor<Self, 4>)> {
        hearth_backend::cube::write_at2(da, sa, db, sb, at)
    }
    fn k_dense3(x: Tensor<Self, 2>, w: [&Tensor<Self, 2>; 3]) -> Option<[Tensor<Self, 2>; 3]> {
        hearth_backend::cube::dense_matvec3(x, w)
    }
    fn k_dense_silu(x: Tensor<Self, 2>, g: &Tensor<Self, 2>, u: &Tensor<Self, 2>) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::dense_matvec_silu(x, g, u)
    }
    fn k_norm3(h: Tensor<Self, 2>, n: PreNorm<Self>, w: [Weight<Self>; 3]) -> Option<[Tensor<Self, 2>; 3]> {
        hearth_backend::cube::norm_matvec3(h, n, w)
    }
    fn k_norm_silu(h: Tensor<Self, 2>, n: PreNorm<Self>, g: Weight<Self>, u: Weight<Self>) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::norm_matvec_silu(h, n, g, u)
    }
    fn k_matvec_add(x: Tensor<Self, 2>, w: Weight<Self>, r: Tensor<Self, 2>) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::matvec_add(x, w, r)
    }
    fn k_add_sums(
        x: Tensor<Self, 2>,
        w: Weight<Self>,
        r: Tensor<Self, 2>,
        next: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Option<(Tensor<Self, 2>, Tensor<Self, 2>)> {
        hearth_backend::cube::matvec_add_sums(x, w, r, next, sums, slot)
    }
    fn k_sums3(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        w: [Weight<Self>; 3],
    ) -> Option<[Tensor<Self, 2>; 3]> {
        hearth_backend::cube::sums_matvec3(hg, sums, slot, SUMS_EPS, w)
    }
    fn k_sums_silu(
        hg: Tensor<Self, 2>,
        sums: &NormSums<Self>,
        slot: usize,
        g: Weight<Self>,
        u: Weight<Self>,
    ) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::sums_matvec_silu(hg, sums, slot, SUMS_EPS, g, u)
    }
    fn k_sums_norm(
        x: Tensor<Self, 2>,
        g: &Tensor<Self, 1>,
        sums: &NormSums<Self>,
        slot: usize,
    ) -> Option<Tensor<Self, 2>> {
        hearth_backend::cube::sums_norm(x, g.clone(), &sums.buffer(), slot * sums.rows()).ok()
    }
    fn k_rope_write(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        r: RopeTables<Self>,
        kc: Tensor<Self, 4>,
        vc: Tensor<Self, 4>,
        at: [usize; 4],
    ) -> Option<(Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>)> {
        hearth_backend::cube::rope_write(q, k, v, r.cos, r.sin, r.rope_dim, r.interleaved, kc, vc, at)
    }
}

/// RoPE on q and k with the layer's K/V cache writes in one launch, against the burn-op
/// RoPE and `slice_assign`: grouped heads, partial rotary dims, both pair layouts, q/k/v as
/// the `[B, T, H, D] → [B, H, T, D]` views the models pass, writes at an offset into caches
/// with room to spare. A shared cache is declined (nothing written) and the trait falls back.
fn rope_write<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(33);
    // (b, h, hkv, t, d, rope_dim, capacity, past, interleaved)
    let cases = [
        (1, 4, 2, 1, 8, 8, 9, 5, false),
        (2, 6, 3, 3, 16, 10, 12, 4, true),
        (1, 8, 8, 5, 12, 12, 7, 2, false),
        (3, 2, 1, 1, 64, 32, 70, 69, true),
    ];
    for (b, h, hkv, t, d, rd, cap, past, il) in cases {
        let view = |n: usize, rng: &mut Rng| tensor::<B, 4>(rng.vec(b * t * n * d), [b, t, n, d], dev).swap_dims(1, 2);
        let (q, k, v) = (view(h, &mut rng), view(hkv, &mut rng), view(hkv, &mut rng));
        let cos = tensor::<B, 4>(rng.vec(b * t * rd), [b, 1, t, rd], dev);
        let sin = tensor::<B, 4>(rng.vec(b * t * rd), [b, 1, t, rd], dev);
        let rope = RopeTables {
            cos: &cos,
            sin: &sin,
            rope_dim: rd,
            interleaved: il,
        };
        let (kc0, vc0) = (rng.vec(b * hkv * cap * d), rng.vec(b * hkv * cap * d));
        let cache = |v: &Vec<f32>| tensor::<B, 4>(v.clone(), [b, hkv, cap, d], dev);
        let at = [0, 0, past, 0];
        let want_q = host(ops::rope(q.clone(), &cos, &sin, rd, il));
        let want_k = host(ops::write_at(cache(&kc0), ops::rope(k.clone(), &cos, &sin, rd, il), at));
        let want_v = host(ops::write_at(cache(&vc0), v.clone(), at));
        let (gq, gk, gv) = B::k_rope_write(q.clone(), k.clone(), v.clone(), rope, cache(&kc0), cache(&vc0), at)
            .expect("the kernel takes these operands");
        let case = format!("b{b} h{h}/{hkv} t{t} d{d} rope{rd} il={il}");
        assert!(rel_err(&host(gq), &want_q, 1.0) < 1e-6, "q {case}");
        assert!(rel_err(&host(gk), &want_k, 1.0) < 1e-6, "k cache {case}");
        assert_eq!(host(gv), want_v, "v cache {case}");
        let (tq, tk, _) = B::rope_write(q, k, v, rope, cache(&kc0), cache(&vc0), at);
        assert!(rel_err(&host(tq), &want_q, 1.0) < 1e-6, "trait q {case}");
        assert!(rel_err(&host(tk), &want_k, 1.0) < 1e-6, "trait k {case}");
    }
    // a shared cache: declined, and the trait's fallback leaves the other handle untouched
    let z = || Tensor::<B, 4>::zeros([1, 1, 4, 2], dev);
    let x = || Tensor::<B, 4>::ones([1, 1, 1, 2], dev);
    let c = Tensor::<B, 4>::ones([1, 1, 1, 2], dev);
    let rope = RopeTables {
        cos: &c,
        sin: &c,
        rope_dim: 2,
        interleaved: false,
    };
    let kc = z();
    let keep = kc.clone();
    assert!(B::k_rope_write(x(), x(), x(), rope, kc.clone(), z(), [0, 0, 1, 0]).is_none());
    let (_, written, _) = B::rope_write(x(), x(), x(), rope, kc, z(), [0, 0, 1, 0]);
    assert_eq!(host(keep), vec![0.0; 8]);
    assert_eq!(host(written), vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
    // a write past the cache's end: declined
    assert!(B::k_rope_write(x(), x(), x(), rope, z(), z(), [0, 0, 4, 0]).is_none());
}

/// The RMSNorm folded into q/k/v and gate/up launches, and the residual added in a matvec's
/// epilogue, against the unfused pipeline (norm kernel, then the products; product, then an
/// addition): dense transposed weights and every vector format, ragged shapes, 1–4 rows,
/// random launch shapes. Operands the fused kernels do not take are declined (`None`) and the
/// trait methods fall back.
fn folded<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(21);
    let kinds = [
        None,
        Some(PackedFormat::F32),
        Some(PackedFormat::Q8_0),
        Some(PackedFormat::Q4_0),
    ];
    let shapes = matvec_shapes();
    for kind in kinds {
        for round in 0..3 {
            let m = 1 + rng.below(4);
            let k = match (kind, round) {
                (None, 0) => 4096,
                (None, _) => 1 + rng.below(900),
                (_, 0) => 4096,
                _ => 32 * (1 + rng.below(40)),
            };
            let ns = [1 + rng.below(70), 1 + rng.below(30), 1 + rng.below(30)];
            // dense weights live as transposed views of row-major [n, k]; packed as blocks
            let make = |rng: &mut Rng, n: usize| -> (Option<Tensor<B, 2>>, Option<PackedMatrix<B>>) {
                let w = weights(rng, n * k);
                match kind {
                    None => (Some(tensor::<B, 2>(w, [n, k], dev).transpose()), None),
                    Some(f) => (None, Some(B::upload_packed(f, &gguf_bytes(f, &w), n, k, dev).unwrap())),
                }
            };
            let ws: Vec<_> = ns.iter().map(|&n| make(&mut rng, n)).collect();
            let up = make(&mut rng, ns[0]);
            fn weight<B: HearthBackend>(w: &(Option<Tensor<B, 2>>, Option<PackedMatrix<B>>)) -> Weight<'_, B> {
                match w {
                    (Some(t), _) => Weight::Dense(t),
                    (_, Some(p)) => Weight::Packed(p),
                    _ => unreachable!(),
                }
            }
            let w3 = [weight(&ws[0]), weight(&ws[1]), weight(&ws[2])];
            // a residual stream of some scale, a norm weight around 1
            let h = tensor::<B, 2>(rng.vec(m * k).iter().map(|v| 3.0 * v).collect(), [m, k], dev);
            let g = tensor::<B, 1>(rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect(), [k], dev);
            let pre = PreNorm { weight: &g, eps: 1e-5 };
            let res = tensor::<B, 2>(rng.vec(m * ns[0]), [m, ns[0]], dev);
            // the tuned launch shapes, then a random one (each is a kernel build on llvmpipe)
            let shape = (round == 2).then(|| shapes[rng.below(shapes.len())]);
            hearth_backend::cube::set_matvec_shape(shape);
            let got3 = B::k_norm3(h.clone(), pre, w3).unwrap_or_else(|| {
                panic!("{kind:?} round {round} m{m} k{k} {ns:?} shape {shape:?}: norm_matvec3 declined")
            });
            let trait3 = B::norm_matmul3(h.clone(), pre, w3).unwrap();
            let silu = host(B::k_norm_silu(h.clone(), pre, w3[0], weight(&up)).unwrap_or_else(|| {
                panic!("{kind:?} round {round} m{m} k{k} {ns:?} shape {shape:?}: norm_matvec_silu declined")
            }));
            let x = tensor::<B, 2>(rng.vec(m * k), [m, k], dev);
            let added = host(B::k_matvec_add(x.clone(), w3[0], res.clone()).unwrap_or_else(|| {
                panic!("{kind:?} round {round} m{m} k{k} {ns:?} shape {shape:?}: matvec_add declined")
            }));
            hearth_backend::cube::set_matvec_shape(None);
            let want3 = ops::norm_matmul3(h.clone(), pre, w3).unwrap();
            for ((got, tr), want) in got3.into_iter().zip(trait3).zip(want3) {
                let (got, tr, want) = (host(got), host(tr), host(want));
                let e = rel_err(&got, &want, 1e-3);
                assert!(e < 2e-5, "{kind:?} norm3 m{m} k{k} {ns:?}: {e:e}");
                assert!(rel_err(&tr, &got, 1e-3) < 2e-5, "trait norm_matmul3");
            }
            let want = host(ops::norm_matmul_silu(h.clone(), pre, w3[0], weight(&up)).unwrap());
            let e = rel_err(&silu, &want, 1e-3);
            assert!(e < 2e-5, "{kind:?} norm silu m{m} k{k} n{}: {e:e}", ns[0]);
            let trait_silu = host(B::norm_matmul_silu(h.clone(), pre, w3[0], weight(&up)).unwrap());
            assert!(rel_err(&trait_silu, &silu, 1e-3) < 2e-5, "trait norm_matmul_silu");
            let want = host(ops::matmul_add(x.clone(), w3[0], res.clone()).unwrap());
            let e = rel_err(&added, &want, 1e-3);
            assert!(e < 2e-5, "{kind:?} matvec_add m{m} k{k} n{}: {e:e}", ns[0]);
            assert!(
                rel_err(&host(B::matmul_add(x, w3[0], res).unwrap()), &added, 1e-3) < 2e-5,
                "trait matmul_add"
            );
        }
    }
    // declined: K-quant blocks, too many rows, a residual of the wrong shape; the trait falls back
    let k = 256;
    let q = B::upload_packed(
        PackedFormat::Q4_K,
        &gguf_bytes(PackedFormat::Q4_K, &weights(&mut rng, 3 * k)),
        3,
        k,
        dev,
    )
    .unwrap();
    let g = Tensor::<B, 1>::ones([k], dev);
    let pre = PreNorm { weight: &g, eps: 1e-6 };
    let h = tensor::<B, 2>(rng.vec(k), [1, k], dev);
    assert!(B::k_norm3(h.clone(), pre, [Weight::Packed(&q); 3]).is_none());
    let want = host(ops::norm_matmul3(h.clone(), pre, [Weight::Packed(&q); 3]).unwrap()[0].clone());
    let got = host(B::norm_matmul3(h.clone(), pre, [Weight::Packed(&q); 3]).unwrap()[0].clone());
    assert!(rel_err(&got, &want, 1e-3) < 1e-6, "fallback norm_matmul3");
    let t = Tensor::<B, 2>::ones([3, k], dev).transpose();
    let h5 = Tensor::<B, 2>::ones([5, k], dev);
    assert!(B::k_norm_silu(h5.clone(), pre, Weight::Dense(&t), Weight::Dense(&t)).is_none());
    assert_eq!(
        host(B::norm_matmul_silu(h5, pre, Weight::Dense(&t), Weight::Dense(&t)).unwrap()).len(),
        15
    );
    let wrong = Tensor::<B, 2>::ones([1, 4], dev);
    assert!(B::k_matvec_add(h.clone(), Weight::Dense(&t), wrong).is_none());
    let added = host(B::matmul_add(h.clone(), Weight::Dense(&t), Tensor::ones([1, 3], dev)).unwrap());
    let plain = host(B::matmul(h, t));
    assert!(added.iter().zip(&plain).all(|(a, p)| (a - p - 1.0).abs() < 1e-4));
}

/// The eps of the carried-norm tests.
const SUMS_EPS: f64 = 1e-5;

/// The carried norm sums: a block's last product writing `h = residual + x · W`, `h ⊙ g` and
/// `Σh²` (one atomic addition per cube), the next block's q/k/v and gate/up/SiLU products
/// normalising from them in their epilogue, and the embeddings' `x ⊙ g` kernel, against the
/// unfused pipeline (product and addition; RMSNorm, then the products) and host sums: dense
/// transposed weights and every vector format, ragged shapes, 1–4 rows, random launch shapes.
/// The device must offer the sums (no silent fallback); K-quant blocks are declined and the
/// trait falls back.
fn carried<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(23);
    hearth_backend::cube::set_norm_sums(Some(true));
    assert!(
        B::norm_sums(1, 2, dev).is_some(),
        "the device offers no carried norm sums (f32 atomic addition)"
    );
    assert!(B::norm_sums(5, 2, dev).is_none(), "prefill rows normalise on their own");
    let shapes = matvec_shapes();
    let kinds = [
        None,
        Some(PackedFormat::F32),
        Some(PackedFormat::Q8_0),
        Some(PackedFormat::Q4_0),
    ];
    for kind in kinds {
        for round in 0..3 {
            let m = 1 + rng.below(4);
            // x: [m, k] into the producer, its output (the stream) [m, n] into the consumers
            let (k, n) = match (kind, round) {
                (_, 0) => (4096, 4096),
                (None, _) => (1 + rng.below(900), 1 + rng.below(700)),
                _ => (32 * (1 + rng.below(40)), 32 * (1 + rng.below(30))),
            };
            let make = |rng: &mut Rng, rows: usize, cols: usize| -> (Option<Tensor<B, 2>>, Option<PackedMatrix<B>>) {
                let w = weights(rng, rows * cols);
                match kind {
                    None => (Some(tensor::<B, 2>(w, [rows, cols], dev).transpose()), None),
                    Some(f) => (
                        None,
                        Some(B::upload_packed(f, &gguf_bytes(f, &w), rows, cols, dev).unwrap()),
                    ),
                }
            };
            fn weight<B: HearthBackend>(w: &(Option<Tensor<B, 2>>, Option<PackedMatrix<B>>)) -> Weight<'_, B> {
                match w {
                    (Some(t), _) => Weight::Dense(t),
                    (_, Some(p)) => Weight::Packed(p),
                    _ => unreachable!(),
                }
            }
            let wo = make(&mut rng, n, k);
            let ns = [1 + rng.below(70), 1 + rng.below(30), 1 + rng.below(30)];
            let ws: Vec<_> = ns.iter().map(|&o| make(&mut rng, o, n)).collect();
            let up = make(&mut rng, ns[0], n);
            let w3 = [weight(&ws[0]), weight(&ws[1]), weight(&ws[2])];
            let x = tensor::<B, 2>(rng.vec(m * k), [m, k], dev);
            let res = tensor::<B, 2>(rng.vec(m * n).iter().map(|v| 3.0 * v).collect(), [m, n], dev);
            let g = tensor::<B, 1>(rng.vec(n).iter().map(|v| 1.0 + 0.5 * v).collect(), [n], dev);
            let pre = PreNorm {
                weight: &g,
                eps: SUMS_EPS,
            };
            let ctx = format!("{kind:?} round {round} m{m} k{k} n{n} {ns:?}");
            let sums = NormSums::<B>::zeroed(m, 3, dev);
            let shape = (round == 2).then(|| shapes[rng.below(shapes.len())]);
            hearth_backend::cube::set_matvec_shape(shape);
            let (h, hg) = B::k_add_sums(x.clone(), weight(&wo), res.clone(), &g, &sums, 1)
                .unwrap_or_else(|| panic!("{ctx}: matvec_add_sums declined"));
            let got3 = B::k_sums3(hg.clone(), &sums, 1, w3).unwrap_or_else(|| panic!("{ctx}: sums_matvec3 declined"));
            let silu = B::k_sums_silu(hg.clone(), &sums, 1, w3[0], weight(&up))
                .unwrap_or_else(|| panic!("{ctx}: sums_matvec_silu declined"));
            // the embeddings' entry: x ⊙ g and Σx² into slot 2
            let e = B::k_sums_norm(res.clone(), &g, &sums, 2).unwrap_or_else(|| panic!("{ctx}: sums_norm failed"));
            hearth_backend::cube::set_matvec_shape(None);
            // the producer: h as the unfused product + addition, h ⊙ g and Σh² from h
            let (h, hg) = (host(h), host(hg));
            let want_h = host(ops::matmul_add(x.clone(), weight(&wo), res.clone()).unwrap());
            let err = rel_err(&h, &want_h, 1e-3);
            assert!(err < 2e-5, "{ctx}: h {err:e}");
            let gv = host(g.clone());
            let want_hg: Vec<f32> = h.iter().enumerate().map(|(i, v)| v * gv[i % n]).collect();
            assert!(rel_err(&hg, &want_hg, 1e-3) < 1e-6, "{ctx}: h ⊙ g");
            let host_sums = |v: &[f32]| -> Vec<f32> {
                v.chunks(n)
                    .map(|r| r.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() as f32)
                    .collect()
            };
            let zeros = vec![0.0f32; m];
            assert_eq!(host(sums.slot(0)), zeros, "{ctx}: slot 0 untouched");
            let err = rel_err(&host(sums.slot(1)), &host_sums(&h), 1e-3);
            assert!(err < 1e-5, "{ctx}: Σh² {err:e}");
            // the consumers: as RMSNorm(h), then the products
            let h = tensor::<B, 2>(h, [m, n], dev);
            let want3 = ops::norm_matmul3(h.clone(), pre, w3).unwrap();
            for (got, want) in got3.into_iter().zip(want3) {
                let err = rel_err(&host(got), &host(want), 1e-3);
                assert!(err < 2e-5, "{ctx}: sums3 {err:e}");
            }
            let want = host(ops::norm_matmul_silu(h.clone(), pre, w3[0], weight(&up)).unwrap());
            let err = rel_err(&host(silu), &want, 1e-3);
            assert!(err < 2e-5, "{ctx}: sums silu {err:e}");
            // the entry kernel
            let rv = host(res.clone());
            let want_e: Vec<f32> = rv.iter().enumerate().map(|(i, v)| v * gv[i % n]).collect();
            assert!(rel_err(&host(e), &want_e, 1e-3) < 1e-6, "{ctx}: x ⊙ g");
            let err = rel_err(&host(sums.slot(2)), &host_sums(&rv), 1e-3);
            assert!(err < 1e-5, "{ctx}: Σx² {err:e}");
            // the trait methods take the same kernels
            let sums2 = NormSums::<B>::zeroed(m, 1, dev);
            let (th, thg) = B::matmul_add_sums(x, weight(&wo), res, &g, &sums2, 0).unwrap();
            assert!(rel_err(&host(th), &want_h, 1e-3) < 2e-5, "{ctx}: trait matmul_add_sums");
            let [tq, _, _] = B::sums_matmul3(thg.clone(), &sums2, 0, SUMS_EPS, w3).unwrap();
            let want_q = host(ops::norm_matmul3(h.clone(), pre, w3).unwrap()[0].clone());
            assert!(rel_err(&host(tq), &want_q, 1e-3) < 2e-5, "{ctx}: trait sums_matmul3");
            let ts = B::sums_matmul_silu(thg, &sums2, 0, SUMS_EPS, w3[0], weight(&up)).unwrap();
            assert!(rel_err(&host(ts), &want, 1e-3) < 2e-5, "{ctx}: trait sums_matmul_silu");
        }
    }
    // declined: K-quant blocks (the trait falls back to the burn ops), rows the sums lack
    let k = 256;
    let q = B::upload_packed(
        PackedFormat::Q4_K,
        &gguf_bytes(PackedFormat::Q4_K, &weights(&mut rng, 3 * k)),
        3,
        k,
        dev,
    )
    .unwrap();
    let g = tensor::<B, 1>(rng.vec(k).iter().map(|v| 1.0 + 0.5 * v).collect(), [k], dev);
    let pre = PreNorm {
        weight: &g,
        eps: SUMS_EPS,
    };
    let h = tensor::<B, 2>(rng.vec(2 * k), [2, k], dev);
    let sums = NormSums::<B>::zeroed(2, 1, dev);
    let hg = B::sums_norm(h.clone(), &g, &sums, 0).unwrap();
    assert!(B::k_sums3(hg.clone(), &sums, 0, [Weight::Packed(&q); 3]).is_none());
    let got = host(B::sums_matmul3(hg.clone(), &sums, 0, SUMS_EPS, [Weight::Packed(&q); 3]).unwrap()[0].clone());
    let want = host(ops::norm_matmul3(h.clone(), pre, [Weight::Packed(&q); 3]).unwrap()[0].clone());
    assert!(rel_err(&got, &want, 1e-3) < 2e-5, "fallback sums_matmul3");
    let t = Tensor::<B, 2>::ones([3, k], dev).transpose();
    assert!(B::k_sums3(hg.clone().slice([0..1, 0..k]), &sums, 0, [Weight::Dense(&t); 3]).is_none());
    assert!(matches!(
        B::sums_matmul3(hg, &sums, 1, SUMS_EPS, [Weight::Dense(&t); 3]),
        Err(BackendError::ShapeMismatch { .. })
    ));
}

/// Dense q/k/v in one launch and dense gate/up/SiLU in one launch (row-major weights behind
/// `.transpose()`), against the host products; every launch shape; layouts the kernels do
/// not take (a plain `[K, N]` weight, too many rows) are declined, and the trait falls back.
fn fused_dense<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(12);
    let mut cases = vec![
        (1, 64, [48, 16, 16]),
        (3, 37, [5, 9, 1]),
        (4, 1000, [33, 7, 7]),
        (2, 4096, [3, 2, 1]),
    ];
    for _ in 0..4 {
        let k = 1 + rng.below(700);
        cases.push((
            1 + rng.below(4),
            k,
            [1 + rng.below(90), 1 + rng.below(30), 1 + rng.below(30)],
        ));
    }
    let shapes: Vec<Option<hearth_backend::cube::MatvecShape>> = std::iter::once(None)
        .chain(matvec_shapes().into_iter().map(Some))
        .collect();
    for (m, k, ns) in cases {
        let a = rng.vec(m * k);
        let ws: Vec<Vec<f32>> = ns.iter().map(|&n| rng.vec(n * k)).collect();
        let up = rng.vec(ns[0] * k);
        let tw = |w: &Vec<f32>, n: usize| tensor::<B, 2>(w.clone(), [n, k], dev).transpose();
        let tws: Vec<Tensor<B, 2>> = ws.iter().zip(ns).map(|(w, n)| tw(w, n)).collect();
        let tup = tw(&up, ns[0]);
        let ta = tensor::<B, 2>(a.clone(), [m, k], dev);
        // host references: x · wᵢᵀ
        let product = |w: &[f32], n: usize| {
            let c: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            host_matmul(&a, &c, 1, m, k, n)
        };
        let wants: Vec<(Vec<f32>, Vec<f64>)> = ws.iter().zip(ns).map(|(w, n)| product(w, n)).collect();
        let (g_want, _) = &wants[0];
        let (u_want, _) = product(&up, ns[0]);
        // silu(g)·u on the host, from the f32 products
        let silu_want: Vec<f32> = g_want
            .iter()
            .zip(&u_want)
            .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        for shape in &shapes {
            hearth_backend::cube::set_matvec_shape(*shape);
            let got = B::k_dense3(ta.clone(), [&tws[0], &tws[1], &tws[2]]).expect("the kernel takes these operands");
            let via_trait = B::matmul3(ta.clone(), [&tws[0], &tws[1], &tws[2]]);
            let silu = host(B::k_dense_silu(ta.clone(), &tws[0], &tup).expect("the kernel takes these operands"));
            let silu_trait = host(B::matmul_silu(ta.clone(), &tws[0], &tup));
            hearth_backend::cube::set_matvec_shape(None);
            for ((g, t), (want, mag)) in got.into_iter().zip(via_trait).zip(&wants) {
                let (g, t) = (host(g), host(t));
                let e = matmul_err(&g, want, mag);
                assert!(e <= F32_MATMUL_TOL, "dense3 m{m} k{k} {ns:?} {shape:?}: {e:e}");
                assert!(matmul_err(&t, want, mag) <= F32_MATMUL_TOL, "trait matmul3");
            }
            let e = rel_err(&silu, &silu_want, 1e-4);
            assert!(e < 1e-4, "dense silu m{m} k{k} n{} {shape:?}: {e:e}", ns[0]);
            assert!(rel_err(&silu_trait, &silu_want, 1e-4) < 1e-4, "trait matmul_silu");
        }
    }
    // operands the kernels decline: a [K, N] weight that is not a transposed view, 5 rows
    let plain = Tensor::<B, 2>::ones([8, 3], dev);
    let x = Tensor::<B, 2>::ones([1, 8], dev);
    assert!(B::k_dense3(x.clone(), [&plain, &plain, &plain]).is_none());
    assert!(B::k_dense_silu(x.clone(), &plain, &plain).is_none());
    let [q, _, _] = B::matmul3(x, [&plain, &plain, &plain]);
    assert_eq!(host(q), vec![8.0; 3]);
    let t = Tensor::<B, 2>::ones([3, 8], dev).transpose();
    let x5 = Tensor::<B, 2>::ones([5, 8], dev);
    assert!(B::k_dense3(x5.clone(), [&t, &t, &t]).is_none());
    assert_eq!(host(B::matmul_silu(x5, &t, &t)).len(), 15);
}

/// In-place strided writes (KV-cache updates) against `slice_assign`: ragged shapes, strided
/// sources, offsets; a shared destination is an error (never written through), out-of-range
/// writes and dtype mismatches too.
fn write_at<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(11);
    for case in 0..12 {
        let dd = [1 + rng.below(3), 1 + rng.below(5), 1 + rng.below(40), 1 + rng.below(70)];
        let sd = [
            1 + rng.below(dd[0]),
            1 + rng.below(dd[1]),
            1 + rng.below(dd[2]),
            1 + rng.below(dd[3]),
        ];
        let at = [0, 1, 2, 3].map(|i| rng.below(dd[i] - sd[i] + 1));
        let dst_v = rng.vec(dd.iter().product());
        let src_v = rng.vec(sd.iter().product());
        // every other case: the source is a transposed view (strided)
        let src = if case % 2 == 0 {
            tensor::<B, 4>(src_v, sd, dev)
        } else {
            tensor::<B, 4>(src_v, [sd[0], sd[2], sd[1], sd[3]], dev).swap_dims(1, 2)
        };
        let want = host(ops::write_at(tensor::<B, 4>(dst_v.clone(), dd, dev), src.clone(), at));
        let got = host(B::k_write_at(tensor::<B, 4>(dst_v.clone(), dd, dev), src.clone(), at).expect("write_at"));
        assert_eq!(got, want, "write_at {sd:?} at {at:?} in {dd:?}");
        // through the trait (what the KV cache calls)
        let got = host(B::write_at(tensor::<B, 4>(dst_v.clone(), dd, dev), src.clone(), at));
        assert_eq!(got, want, "HearthBackend::write_at {sd:?} at {at:?} in {dd:?}");
        // a shared destination is not written through; the trait still gives the right result
        let dst = tensor::<B, 4>(dst_v.clone(), dd, dev);
        let keep = dst.clone();
        assert!(B::k_write_at(dst.clone(), src.clone(), at).is_err());
        assert_eq!(host(B::write_at(dst, src.clone(), at)), want);
        assert_eq!(host(keep), dst_v, "the shared destination changed");
        // two writes in one launch (K and V): the second pair a plain copy of another source
        let src2_v = rng.vec(sd.iter().product());
        let dst2_v = rng.vec(dd.iter().product());
        let src2 = tensor::<B, 4>(src2_v, sd, dev);
        let want2 = host(ops::write_at(tensor::<B, 4>(dst2_v.clone(), dd, dev), src2.clone(), at));
        let (a, b) = B::k_write_at2(
            tensor::<B, 4>(dst_v.clone(), dd, dev),
            src.clone(),
            tensor::<B, 4>(dst2_v.clone(), dd, dev),
            src2.clone(),
            at,
        )
        .expect("write_at2");
        assert_eq!(
            (host(a), host(b)),
            (want.clone(), want2.clone()),
            "write_at2 {sd:?} at {at:?}"
        );
        // a shared second destination: declined, nothing written; the trait still writes both
        let (d1, d2) = (
            tensor::<B, 4>(dst_v.clone(), dd, dev),
            tensor::<B, 4>(dst2_v.clone(), dd, dev),
        );
        let keep2 = d2.clone();
        assert!(B::k_write_at2(d1.clone(), src.clone(), d2.clone(), src2.clone(), at).is_none());
        let (a, b) = B::write_at2(d1, src.clone(), d2, src2, at);
        assert_eq!((host(a), host(b)), (want, want2), "HearthBackend::write_at2");
        assert_eq!(host(keep2), dst2_v, "the shared destination changed");
    }
    let dst = Tensor::<B, 4>::zeros([1, 1, 4, 4], dev);
    assert!(B::k_write_at(dst.clone(), Tensor::ones([1, 1, 2, 4], dev), [0, 0, 3, 0]).is_err());
    assert!(B::k_write_at(dst, Tensor::ones([1, 2, 1, 1], dev), [0, 0, 0, 0]).is_err());
}

fn rope<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(7);
    let mut cases = vec![
        (1, 1, 1, 2, 2, false),
        (1, 4, 3, 64, 64, false),
        (2, 3, 5, 24, 8, true),
        (1, 2, 1, 130, 64, true),
    ];
    for _ in 0..6 {
        let d = 2 * (1 + rng.below(40));
        let r = 2 * (1 + rng.below(d / 2));
        cases.push((
            1 + rng.below(3),
            1 + rng.below(6),
            1 + rng.below(9),
            d,
            r,
            rng.below(2) == 1,
        ));
    }
    for (b, h, t, d, r, interleaved) in cases {
        // as the models call it: [B, T, H, D] projections viewed as [B, H, T, D]
        let x = tensor::<B, 4>(rng.vec(b * t * h * d), [b, t, h, d], dev).swap_dims(1, 2);
        let cos = tensor::<B, 4>(rng.vec(b * t * r), [b, 1, t, r], dev);
        let sin = tensor::<B, 4>(rng.vec(b * t * r), [b, 1, t, r], dev);
        let want = host(ops::rope(x.clone(), &cos, &sin, r, interleaved));
        let got = host(B::k_rope(x.clone(), &cos, &sin, r, interleaved).unwrap());
        let e = rel_err(&got, &want, 1e-6);
        assert!(
            e < 1e-6,
            "rope b{b} h{h} t{t} d{d} r{r} interleaved={interleaved}: {e:e}"
        );
        // the trait method runs the same kernel (other tests may switch plane reductions
        // concurrently, so compare with a tolerance rather than bit for bit)
        assert!(
            rel_err(&host(B::rope(x.clone(), &cos, &sin, r, interleaved)), &got, 1e-6) < 1e-6,
            "trait method"
        );
        // with a second tensor of other heads in the same launch (q and k)
        let hk = 1 + rng.below(3);
        let k = tensor::<B, 4>(rng.vec(b * t * hk * d), [b, t, hk, d], dev).swap_dims(1, 2);
        let want_k = host(ops::rope(k.clone(), &cos, &sin, r, interleaved));
        let (gq, gk) = B::k_rope2(x.clone(), k.clone(), &cos, &sin, r, interleaved).unwrap();
        assert!(
            rel_err(&host(gq), &want, 1e-6) < 1e-6,
            "rope2 q b{b} h{h} t{t} d{d} r{r}"
        );
        assert!(
            rel_err(&host(gk), &want_k, 1e-6) < 1e-6,
            "rope2 k b{b} h{hk} t{t} d{d} r{r}"
        );
        let (tq, tk) = B::rope2(x, k, &cos, &sin, r, interleaved);
        assert!(
            rel_err(&host(tq), &want, 1e-6) < 1e-6 && rel_err(&host(tk), &want_k, 1e-6) < 1e-6,
            "trait rope2"
        );
    }
    // bad input: odd or too large rope_dim, wrong table
    let x = Tensor::<B, 4>::ones([1, 2, 3, 8], dev);
    let c = Tensor::<B, 4>::ones([1, 1, 3, 8], dev);
    assert!(matches!(
        B::k_rope(x.clone(), &c, &c, 7, false),
        Err(BackendError::ShapeMismatch { op: "rope", .. })
    ));
    assert!(B::k_rope(x.clone(), &c, &c, 10, false).is_err());
    let c2 = Tensor::<B, 4>::ones([1, 1, 2, 8], dev);
    assert!(B::k_rope(x, &c2, &c2, 8, false).is_err());
}

/// The fused attention kernel against the burn-op fallback on KV-cache views: keys and values
/// are the first `s` positions of a `[B, Hkv, cap, D]` buffer, masks causal with a window and
/// padded rows, several 64-key tiles, head dims above the cube size, `Dv != D`.
fn fused_attention<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(8);
    let mut cases = vec![
        (1, 8, 4, 1, 1, 64, 64),
        (1, 2, 2, 1, 200, 130, 70),
        (2, 1, 3, 3, 65, 16, 16),
        // long contexts: the keys split over several cubes per row and joined
        (1, 2, 2, 1, 700, 64, 64),
        (2, 2, 2, 2, 1000, 128, 128),
        (1, 1, 1, 1, 4100, 32, 48),
        // decode shapes of Llama-3-8B (grouped 4:1), an 8:1 group, odd head sizes
        (1, 8, 4, 1, 160, 128, 128),
        (1, 8, 4, 1, 1000, 128, 128),
        (2, 1, 8, 1, 333, 96, 96),
        (1, 3, 2, 1, 37, 20, 12),
    ];
    for _ in 0..6 {
        cases.push((
            1 + rng.below(2),
            1 + rng.below(4),
            1 + rng.below(3),
            1 + rng.below(5),
            1 + rng.below(150),
            1 + rng.below(100),
            1 + rng.below(100),
        ));
    }
    for (b, hkv, g, t, s, d, dv) in cases {
        let s = s.max(t);
        let h = hkv * g;
        let cap = s + 1 + rng.below(20);
        let q = tensor::<B, 4>(rng.vec(b * t * h * d), [b, t, h, d], dev).swap_dims(1, 2);
        let kc = tensor::<B, 4>(rng.vec(b * hkv * cap * d), [b, hkv, cap, d], dev) * 2.0;
        let vc = tensor::<B, 4>(rng.vec(b * hkv * cap * dv), [b, hkv, cap, dv], dev);
        let k = kc.slice([0..b, 0..hkv, 0..s, 0..d]);
        let v = vc.slice([0..b, 0..hkv, 0..s, 0..dv]);
        let window = if rng.below(2) == 1 {
            Some(1 + rng.below(s))
        } else {
            None
        };
        let pos = hearth_attention_positions(b, t, s, &mut rng);
        let mask = mask_values(&pos, t, s, window);
        let mask = tensor::<B, 3>(mask, [b, t, s], dev);
        let scale = 1.0 / (d as f64).sqrt();
        // the fallback with hearth's exact-f32 matmul (burn's own matmul is TF32 on CUDA)
        let want = host(ops::gqa_attention_with(
            q.clone(),
            k.clone(),
            v.clone(),
            mask.clone(),
            scale,
            B::matmul::<4>,
        ));
        let got = B::k_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale).unwrap();
        assert_eq!(got.dims(), [b, h, t, dv]);
        let got = host(got);
        let e = rel_err(&got, &want, 1e-3);
        println!("fused attention b{b} h{h} hkv{hkv} t{t} s{s} d{d} dv{dv}: rel {e:.1e}");
        assert!(
            e < 1e-5,
            "attention b{b} h{h} hkv{hkv} t{t} s{s} d{d} dv{dv} {window:?}: {e:e}"
        );
        assert!(
            rel_err(
                &host(B::gqa_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale)),
                &got,
                1e-3
            ) < 1e-6,
            "trait method"
        );
        // one query row per head: the decode kernel, in other launch shapes too (split
        // from 0 keys: every case with more keys than a round splits), and the general kernel
        if t == 1 && s >= 100 {
            use hearth_backend::cube::{DecodeAttention, set_decode_attention};
            let shapes = [
                DecodeAttention {
                    planes: 1,
                    batch: 1,
                    split_from: 0,
                },
                DecodeAttention {
                    planes: 2,
                    batch: 3,
                    split_from: 40,
                },
                DecodeAttention {
                    planes: 4,
                    batch: 8,
                    split_from: 100_000,
                },
            ];
            for shape in shapes {
                set_decode_attention(Some(shape));
                let got = host(B::k_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale).unwrap());
                set_decode_attention(None);
                let e = rel_err(&got, &want, 1e-3);
                assert!(
                    e < 1e-5,
                    "decode attention {shape:?} b{b} h{h} hkv{hkv} s{s} d{d} dv{dv}: {e:e}"
                );
            }
        }
    }
    let q = Tensor::<B, 4>::ones([1, 3, 1, 8], dev);
    let k = Tensor::<B, 4>::ones([1, 2, 4, 8], dev);
    let mask = Tensor::<B, 3>::zeros([1, 1, 4], dev);
    assert!(matches!(
        B::k_attention(q, k.clone(), k, mask, 1.0),
        Err(BackendError::ShapeMismatch {
            op: "gqa_attention",
            ..
        })
    ));
}

/// Decode with many query heads on one KV head, as MLA runs it (absorbed: the values are the
/// first `dv` dims of the key rows, a view of the same cache buffer): the groups the decode
/// kernel declines go through the group-folded products; against a float64 host computation.
fn many_heads_attention<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(21);
    let cases = [
        (1, 16, 1, 48, 32),
        (1, 16, 37, 576, 512),
        (2, 32, 300, 72, 64),
        (1, 128, 130, 576, 512),
        (2, 20, 65, 40, 40),
        (1, 17, 700, 24, 8),
    ];
    for (b, h, s, d, dv) in cases {
        let cap = s + 3;
        let qv = rng.vec(b * h * d);
        let kv: Vec<f32> = rng.vec(b * cap * d).into_iter().map(|x| 2.0 * x).collect();
        let q = tensor::<B, 4>(qv.clone(), [b, 1, h, d], dev).swap_dims(1, 2);
        let kc = tensor::<B, 4>(kv.clone(), [b, 1, cap, d], dev);
        let k = kc.slice([0..b, 0..1, 0..s, 0..d]);
        let v = k.clone().slice([0..b, 0..1, 0..s, 0..dv]);
        // row `bi` sees its last `len` keys of a window, the rest masked
        let visible = |bi: usize, j: usize| {
            let end = s - (3 * bi).min(s - 1);
            let start = end.saturating_sub(if s > 8 { s - 5 } else { s });
            (start..end).contains(&j)
        };
        let mut mask = vec![0.0f32; b * s];
        for bi in 0..b {
            for j in 0..s {
                if !visible(bi, j) {
                    mask[bi * s + j] = f32::NEG_INFINITY;
                }
            }
        }
        let mask = tensor::<B, 3>(mask, [b, 1, s], dev);
        let scale = 1.0 / (d as f64).sqrt();
        let mut want = vec![0.0f32; b * h * dv];
        for bi in 0..b {
            for hh in 0..h {
                let qr = &qv[(bi * h + hh) * d..][..d];
                let key = |j: usize| &kv[(bi * cap + j) * d..][..d];
                let sc: Vec<f64> = (0..s)
                    .map(|j| {
                        if visible(bi, j) {
                            scale * qr.iter().zip(key(j)).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>()
                        } else {
                            f64::NEG_INFINITY
                        }
                    })
                    .collect();
                let top = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = sc.iter().map(|x| (x - top).exp()).collect();
                let z: f64 = p.iter().sum();
                for e in 0..dv {
                    let o: f64 = (0..s).map(|j| p[j] * key(j)[e] as f64).sum::<f64>() / z;
                    want[(bi * h + hh) * dv + e] = o as f32;
                }
            }
        }
        // the general kernel (the default) and the group folded into batched products
        for fold in [false, true] {
            hearth_backend::cube::set_group_fold(Some(fold));
            let got = B::k_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale).unwrap();
            assert_eq!(got.dims(), [b, h, 1, dv]);
            let e = rel_err(&host(got), &want, 1e-3);
            println!("many-heads attention fold={fold} b{b} h{h} s{s} d{d} dv{dv}: rel {e:.1e}");
            assert!(
                e < 1e-5,
                "many-heads attention fold={fold} b{b} h{h} s{s} d{d} dv{dv}: {e:e}"
            );
            let e = rel_err(
                &host(B::gqa_attention(q.clone(), k.clone(), v.clone(), mask.clone(), scale)),
                &want,
                1e-3,
            );
            assert!(e < 1e-5, "trait method fold={fold} b{b} h{h} s{s}: {e:e}");
        }
        hearth_backend::cube::set_group_fold(None);
    }
}

/// `(past, new)` per row for a chunk of `t` slots attending to `s` keys: one row ends exactly at
/// `s`, the others may be shorter (ragged batch, padded slots).
fn hearth_attention_positions(b: usize, t: usize, s: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    (0..b)
        .map(|row| {
            if row == 0 {
                (s - t, t)
            } else {
                let new = 1 + rng.below(t);
                (rng.below(s - new + 1), new)
            }
        })
        .collect()
}

/// The additive mask of hearth-attention's `BatchPositions::mask_values` (causal, optional
/// window, padded slots attend to key 0), written out independently.
fn mask_values(pos: &[(usize, usize)], t: usize, s: usize, window: Option<usize>) -> Vec<f32> {
    let mut m = vec![f32::NEG_INFINITY; pos.len() * t * s];
    for (b, &(p, n)) in pos.iter().enumerate() {
        for i in 0..t {
            let row = &mut m[(b * t + i) * s..(b * t + i + 1) * s];
            if i >= n {
                row[0] = 0.0;
                continue;
            }
            let q = p + i;
            let lo = window.map_or(0, |w| (q + 1).saturating_sub(w));
            for v in &mut row[lo..=q] {
                *v = 0.0;
            }
        }
    }
    m
}

fn add_rms_norm<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(9);
    let mut shapes = vec![(1, 1), (1, 2048), (3, 7), (5, 4099), (2, 64)];
    for _ in 0..5 {
        shapes.push((1 + rng.below(20), 1 + rng.below(3000)));
    }
    for plane in [true, false] {
        hearth_backend::cube::set_plane_reductions(plane);
        for &(rows, cols) in &shapes {
            let x = tensor::<B, 2>(rng.vec(rows * cols), [rows, cols], dev) * 3.0;
            let r = tensor::<B, 2>(rng.vec(rows * cols), [rows, cols], dev);
            let w = tensor::<B, 1>(rng.vec(cols), [cols], dev);
            let (ws, wy) = ops::add_rms_norm(x.clone(), r.clone(), w.clone(), 1e-6);
            let (gs, gy) = B::k_add_rms_norm(x.clone(), r.clone(), w.clone(), 1e-6).unwrap();
            assert_eq!(host(gs), host(ws), "sum [{rows}, {cols}]");
            let e = rel_err(&host(gy), &host(wy.clone()), 1e-6);
            assert!(e < 1e-5, "add_rms_norm [{rows}, {cols}] plane={plane}: {e:e}");
            // the trait method on 3-D input
            let x3 = x.reshape([1, rows, cols]);
            let (_, ty) = B::add_rms_norm(x3, r.reshape([1, rows, cols]), w, 1e-6);
            assert!(rel_err(&host(ty), &host(wy), 1e-6) < 1e-5);
        }
    }
    hearth_backend::cube::set_plane_reductions(true);
    let x = Tensor::<B, 2>::ones([2, 3], dev);
    let w = Tensor::<B, 1>::ones([3], dev);
    assert!(matches!(
        B::k_add_rms_norm(x.clone(), Tensor::ones([2, 4], dev), w, 1e-6),
        Err(BackendError::ShapeMismatch { op: "add_rms_norm", .. })
    ));
    assert!(B::k_add_rms_norm(x.clone(), x, Tensor::ones([4], dev), 1e-6).is_err());
}

/// q/k/v in one launch and gate/up/SiLU in one launch against the separate matvecs.
fn fused_packed<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(10);
    for format in PackedFormat::ALL {
        for _ in 0..3 {
            let k = format.block_len() * (1 + rng.below(if format.block_len() > 32 { 4 } else { 40 }));
            let m = 1 + rng.below(4);
            let ns = [1 + rng.below(70), 1 + rng.below(30), 1 + rng.below(30)];
            let ws: Vec<PackedMatrix<B>> = ns
                .iter()
                .map(|&n| B::upload_packed(format, &gguf_bytes(format, &weights(&mut rng, n * k)), n, k, dev).unwrap())
                .collect();
            let x = tensor::<B, 2>(rng.vec(m * k), [m, k], dev);
            // a different launch shape for the fused kernels each round (all compute the same)
            let shapes = matvec_shapes();
            hearth_backend::cube::set_matvec_shape(Some(shapes[rng.below(shapes.len())]));
            let got = B::k_matvec3(x.clone(), [&ws[0], &ws[1], &ws[2]]).unwrap();
            let via_trait = B::packed_matmul3(x.clone(), [&ws[0], &ws[1], &ws[2]]).unwrap();
            for ((g, t), w) in got.into_iter().zip(via_trait).zip(&ws) {
                let want = host(B::k_matvec(x.clone(), w).unwrap());
                let g = host(g);
                assert_eq!(g.len(), m * w.rows());
                assert!(
                    rel_err(&g, &want, 1e-6) < 1e-6,
                    "{format:?} matvec3 m{m} n{} k{k}",
                    w.rows()
                );
                assert!(rel_err(&host(t), &g, 1e-6) < 1e-6, "trait packed_matmul3");
            }
            // gate/up: same shape
            let up = B::upload_packed(
                format,
                &gguf_bytes(format, &weights(&mut rng, ns[0] * k)),
                ns[0],
                k,
                dev,
            )
            .unwrap();
            let x8 = x.clone() * 4.0;
            let got = host(B::k_silu(x8.clone(), &ws[0], &up).unwrap());
            hearth_backend::cube::set_matvec_shape(None);
            let g = B::k_matvec(x8.clone(), &ws[0]).unwrap();
            let u = B::k_matvec(x8.clone(), &up).unwrap();
            let want = host(ops::silu_mul(g, u));
            assert!(
                rel_err(&got, &want, 1e-6) < 1e-5,
                "{format:?} silu m{m} n{} k{k}",
                ns[0]
            );
            assert!(
                rel_err(&host(B::packed_matmul_silu(x8, &ws[0], &up).unwrap()), &got, 1e-6) < 1e-6,
                "trait packed_matmul_silu"
            );
            // mismatched gate/up is an error, never a panic
            assert!(
                matches!(
                    B::packed_matmul_silu(x.clone(), &ws[0], &ws[1]),
                    Err(BackendError::ShapeMismatch { .. })
                ) || ns[0] == ns[1]
            );
        }
    }
    // too many rows for the fused kernels: a typed error (the trait falls back)
    let w = B::upload_packed(
        PackedFormat::Q8_0,
        &gguf_bytes(PackedFormat::Q8_0, &[0.5; 64]),
        2,
        32,
        dev,
    )
    .unwrap();
    let x = Tensor::<B, 2>::ones([5, 32], dev);
    assert!(B::k_matvec3(x.clone(), [&w, &w, &w]).is_err());
    assert_eq!(B::packed_matmul3(x, [&w, &w, &w]).unwrap()[2].dims(), [5, 2]);
}

/// The grouped MoE expert kernels (`cube::moe_experts`: two launches per token) against a
/// float64 host computation (dense f32 experts) and against the expert-by-expert fallback
/// (`ops::moe_experts`, itself made of the matvec kernels tested above): 1–3 tokens, 1–8
/// experts per token, ragged widths, every launch shape; K-quant experts and too many tokens
/// are declined and the trait still computes them; mismatched lengths are typed errors.
fn moe<B: CubeKernels>(dev: &B::Device) {
    let mut rng = Rng::new(23);
    let shapes = matvec_shapes();
    let n_experts = 9;
    // dense f32 experts, ragged widths
    for round in 0..4 {
        let (hid, inter) = (1 + rng.below(300), 1 + rng.below(200));
        let (n, k) = (1 + rng.below(3), [1, 2, 3, 8][round % 4]);
        let host_w: Vec<[Vec<f32>; 3]> = (0..n_experts)
            .map(|_| [rng.vec(inter * hid), rng.vec(inter * hid), rng.vec(hid * inter)])
            .collect();
        // stored row-major [out, in], used as [in, out] views (as the loader keeps them)
        let dev_w: Vec<[Tensor<B, 2>; 3]> = host_w
            .iter()
            .map(|[g, u, d]| {
                [
                    tensor::<B, 2>(g.clone(), [inter, hid], dev).transpose(),
                    tensor::<B, 2>(u.clone(), [inter, hid], dev).transpose(),
                    tensor::<B, 2>(d.clone(), [hid, inter], dev).transpose(),
                ]
            })
            .collect();
        let x = rng.vec(n * hid);
        let (chosen, weights) = route(&mut rng, n, k, n_experts);
        let experts: Vec<Expert<B>> = chosen
            .iter()
            .map(|&e| Expert {
                gate: Weight::Dense(&dev_w[e][0]),
                up: Weight::Dense(&dev_w[e][1]),
                down: Weight::Dense(&dev_w[e][2]),
            })
            .collect();
        // float64 host reference
        let dot = |w: &[f32], row: usize, v: &[f64]| -> f64 {
            v.iter()
                .enumerate()
                .map(|(i, &a)| a * w[row * v.len() + i] as f64)
                .sum()
        };
        let mut want = vec![0.0f32; n * hid];
        for t in 0..n {
            let xt: Vec<f64> = x[t * hid..(t + 1) * hid].iter().map(|&v| v as f64).collect();
            for j in t * k..(t + 1) * k {
                let [g, u, d] = &host_w[chosen[j]];
                let h: Vec<f64> = (0..inter)
                    .map(|r| {
                        let (a, b) = (dot(g, r, &xt), dot(u, r, &xt));
                        a / (1.0 + (-a).exp()) * b
                    })
                    .collect();
                for r in 0..hid {
                    want[t * hid + r] += (weights[j] as f64 * dot(d, r, &h)) as f32;
                }
            }
        }
        let tx = tensor::<B, 2>(x.clone(), [n, hid], dev);
        let shape = shapes[rng.below(shapes.len())];
        hearth_backend::cube::set_matvec_shape(Some(shape));
        let got = host(B::k_moe(tx.clone(), &experts, &weights).expect("the grouped kernels take dense f32 experts"));
        hearth_backend::cube::set_matvec_shape(None);
        let e = rel_err(&got, &want, 1e-3);
        assert!(e < 1e-5, "dense moe n{n} k{k} hid{hid} inter{inter} {shape:?}: {e:e}");
        let fallback = host(ops::moe_experts(tx.clone(), &experts, &weights).unwrap());
        assert!(rel_err(&fallback, &want, 1e-3) < 1e-5, "ops::moe_experts");
        assert!(
            rel_err(&host(B::moe_experts(tx, &experts, &weights).unwrap()), &got, 1e-3) < 1e-6,
            "trait moe_experts"
        );
    }
    // packed experts: the vector formats through the grouped kernels, K-quants declined
    for format in PackedFormat::ALL {
        for round in 0..2 {
            let b = format.block_len();
            let (hid, inter) = (b * (1 + rng.below(6)), b * (1 + rng.below(4)));
            let (n, k) = (1 + rng.below(3), [2, 8][round]);
            let up = |rng: &mut Rng, rows: usize, cols: usize| {
                B::upload_packed(format, &gguf_bytes(format, &weights(rng, rows * cols)), rows, cols, dev).unwrap()
            };
            let ws: Vec<[PackedMatrix<B>; 3]> = (0..n_experts)
                .map(|_| {
                    [
                        up(&mut rng, inter, hid),
                        up(&mut rng, inter, hid),
                        up(&mut rng, hid, inter),
                    ]
                })
                .collect();
            let (chosen, rw) = route(&mut rng, n, k, n_experts);
            let experts: Vec<Expert<B>> = chosen
                .iter()
                .map(|&e| Expert {
                    gate: Weight::Packed(&ws[e][0]),
                    up: Weight::Packed(&ws[e][1]),
                    down: Weight::Packed(&ws[e][2]),
                })
                .collect();
            // small inputs keep silu's gate in its curved range
            let x = tensor::<B, 2>(rng.vec(n * hid), [n, hid], dev) * 0.1;
            let want = host(ops::moe_experts(x.clone(), &experts, &rw).unwrap());
            let got = B::k_moe(x.clone(), &experts, &rw);
            let vector = matches!(format, PackedFormat::F32 | PackedFormat::Q8_0 | PackedFormat::Q4_0);
            assert_eq!(got.is_some(), vector, "{format:?}: grouped kernels taken or declined");
            if let Some(got) = got {
                let e = rel_err(&host(got), &want, 1e-3);
                assert!(e < 1e-5, "{format:?} moe n{n} k{k} hid{hid} inter{inter}: {e:e}");
            }
            let via_trait = host(B::moe_experts(x, &experts, &rw).unwrap());
            assert!(rel_err(&via_trait, &want, 1e-3) < 1e-5, "{format:?} trait moe_experts");
        }
    }
    // declined: more tokens than the matvec kernels take; mixed dense and packed experts
    let w = Tensor::<B, 2>::ones([4, 8], dev).transpose(); // [8, 4]
    let d = Tensor::<B, 2>::ones([8, 4], dev).transpose(); // [4, 8]
    let e = Expert {
        gate: Weight::Dense(&w),
        up: Weight::Dense(&w),
        down: Weight::Dense(&d),
    };
    let x5 = Tensor::<B, 2>::ones([5, 8], dev) * 0.01;
    assert!(B::k_moe(x5.clone(), &[e; 5], &[1.0; 5]).is_none());
    let y = host(B::moe_experts(x5, &[e; 5], &[1.0; 5]).unwrap());
    let h = 0.08f32 / (1.0 + (-0.08f32).exp()) * 0.08;
    assert!(y.iter().all(|v| (v - 4.0 * h).abs() < 1e-6), "{y:?}");
    let p = B::upload_packed(PackedFormat::F32, &[0u8; 4 * 8 * 32], 8, 32, dev).unwrap();
    let mixed = Expert {
        gate: Weight::Packed(&p),
        up: Weight::Packed(&p),
        down: Weight::Dense(&d),
    };
    assert!(B::k_moe(Tensor::ones([1, 8], dev), &[mixed], &[1.0]).is_none());
    // mismatched lengths: typed errors from the trait, never a panic
    let x2 = Tensor::<B, 2>::ones([2, 8], dev);
    for (es, ws) in [
        (&[e; 3][..], &[1.0; 3][..]),
        (&[e; 2][..], &[1.0; 1][..]),
        (&[][..], &[][..]),
    ] {
        assert!(
            matches!(
                B::moe_experts(x2.clone(), es, ws),
                Err(BackendError::ShapeMismatch { op: "moe_experts", .. })
            ),
            "{} experts, {} weights",
            es.len(),
            ws.len()
        );
    }
}

/// `k` distinct experts of `n_experts` per token for `n` tokens, with positive weights.
fn route(rng: &mut Rng, n: usize, k: usize, n_experts: usize) -> (Vec<usize>, Vec<f32>) {
    let mut chosen = Vec::with_capacity(n * k);
    for _ in 0..n {
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let e = rng.below(n_experts);
            if !picked.contains(&e) {
                picked.push(e);
            }
        }
        chosen.extend(picked);
    }
    let weights = (0..n * k).map(|_| 0.1 + 0.45 * (rng.f() + 1.0)).collect();
    (chosen, weights)
}

fn ggml(format: PackedFormat) -> GgmlType {
    match format {
        PackedFormat::F32 => GgmlType::F32,
        PackedFormat::Q8_0 => GgmlType::Q8_0,
        PackedFormat::Q4_0 => GgmlType::Q4_0,
        PackedFormat::Q4_K => GgmlType::Q4_K,
        PackedFormat::Q6_K => GgmlType::Q6_K,
    }
}

fn gguf_bytes(format: PackedFormat, w: &[f32]) -> Vec<u8> {
    match format {
        PackedFormat::F32 => w.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => hearth_quant::quantize_to_vec(ggml(format), w).unwrap(),
    }
}

/// Random weights whose 16-value groups have their own scale and offset, so that the
/// K-quants' sub-block scales and mins differ within a super-block.
fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut w = rng.vec(n);
    for g in w.chunks_mut(16) {
        let (scale, offset) = (0.05 + 2.0 * (rng.f() + 1.0), 0.5 * rng.f());
        for v in g {
            *v = *v * scale + offset;
        }
    }
    w
}

/// `(m, n, k)` products for `format`: activation rows `m` (1, 3, 5, 17 among them: both sides
/// of [`hearth_backend::cube::MATVEC_MAX_ROWS`]), weight rows `n` (odd ones included), `k` a
/// whole number of the format's blocks.
fn packed_cases(format: PackedFormat, rng: &mut Rng) -> Vec<(usize, usize, usize)> {
    let mut cases = if format.block_len() == 32 {
        vec![
            (1, 1, 32),
            (1, 5, 64),
            (3, 17, 96),
            (4, 1, 1056),
            (5, 9, 160),
            (9, 33, 64),
            (17, 7, 224),
            // long rows: the matvecs' unrolled passes (4 vectors per unit) and their remainder
            (2, 5, 4096),
            (1, 3, 3200),
        ]
    } else {
        vec![
            (1, 1, 256),
            (1, 7, 768),
            (3, 17, 512),
            (4, 3, 2304),
            (5, 9, 256),
            (17, 13, 1024),
        ]
    };
    let blocks = if format.block_len() == 32 { 40 } else { 6 };
    for _ in 0..5 {
        let n = 1 + 2 * rng.below(60); // odd
        cases.push((1 + rng.below(18), n, format.block_len() * (1 + rng.below(blocks))));
    }
    cases
}

fn packed<B: HearthBackend>(dev: &B::Device, cube_checks: CubeChecks<B>) {
    let mut rng = Rng::new(6);
    for plane in [true, false] {
        hearth_backend::cube::set_plane_reductions(plane);
        for format in PackedFormat::ALL {
            let mut worst = 0.0f64;
            for (m, n, k) in packed_cases(format, &mut rng) {
                let w = weights(&mut rng, n * k);
                let bytes = gguf_bytes(format, &w);
                // hearth_quant's dequantization is the definition of the format
                let deq = hearth_quant::dequantize_to_vec(ggml(format), &bytes).unwrap();
                assert_eq!(format.dequantize(&bytes, n, k).unwrap(), deq, "{format:?} host dequant");
                let x = rng.vec(m * k);
                let mut wt = vec![0.0f32; k * n];
                for r in 0..n {
                    for c in 0..k {
                        wt[c * n + r] = deq[r * k + c];
                    }
                }
                let (want, mag) = host_matmul(&x, &wt, 1, m, k, n);
                let tx = tensor::<B, 2>(x, [m, k], dev);

                let kernel = B::upload_packed(format, &bytes, n, k, dev).unwrap();
                let got = host(B::packed_matmul(tx.clone(), &kernel).unwrap());
                let fallback = PackedMatrix::<B>::dense_from_bytes(format, &bytes, n, k, dev).unwrap();
                // through hearth's full-f32 matmul: burn's own may run TF32 tensor cores on
                // CUDA (whichever its autotune picks), which this bound cannot hold
                let reference = host(B::matmul(
                    tx.clone(),
                    match fallback.storage() {
                        hearth_backend::PackedStorage::Dense(t) => t.clone(),
                        _ => unreachable!(),
                    },
                ));
                let e = matmul_err(&got, &want, &mag);
                worst = worst.max(e);
                assert!(e <= F32_MATMUL_TOL, "{format:?} m{m} n{n} k{k} plane={plane}: {e:e}");
                assert!(rel_err(&got, &reference, 1e-3) < 5e-3, "{format:?} vs fallback");
                let words = n * k / format.block_len() * format.words_per_block();
                assert_eq!(kernel.device_bytes(), words * 4);
                if format != PackedFormat::F32 {
                    // what packing is for: at most ~2/7 of the f32 bytes on the device
                    assert!(kernel.device_bytes() * 7 <= n * k * 4 * 2, "{format:?} device bytes");
                }
                // the trait's dequantization, both representations
                assert_eq!(host(B::dequantize_packed(&fallback).unwrap()), deq, "fallback dequant");
                assert_eq!(
                    host(B::dequantize_packed(&kernel).unwrap()),
                    deq,
                    "{format:?} device dequant"
                );
                cube_checks(&kernel, tx, &deq, &want, &mag);
            }
            println!("packed {format:?} plane={plane}: worst error {worst:.1e}");
        }
    }
    hearth_backend::cube::set_plane_reductions(true);
}

/// Checks of one packed case that need the concrete cube backend: `(weight, x, dequantized
/// weight, reference product, its magnitudes)`.
type CubeChecks<'a, B> = &'a dyn Fn(&PackedMatrix<B>, Tensor<B, 2>, &[f32], &[f32], &[f64]);

/// `argmax_rows` (the device's greedy tokens with a NaN flag per row) against a host argmax
/// (first index of the maximum, NaN skipped): ragged rows up to a 128k vocabulary, ties
/// (values quantized to a few levels), the maximum in the last position, NaN rows; and the
/// burn-op fallback the same.
fn argmax<B: HearthBackend>(dev: &B::Device) {
    let mut rng = Rng::new(41);
    for (rows, n) in [
        (1, 1),
        (1, 7),
        (3, 1000),
        (2, 4097),
        (1, 128_256),
        (4, 151_936),
        (2, 33),
    ] {
        for case in 0..3 {
            let mut x = rng.vec(rows * n);
            if case == 1 {
                // few distinct values: many ties
                for v in &mut x {
                    *v = (*v * 3.0).round();
                }
            }
            if case == 2 {
                // the maximum last in row 0, NaN in the other rows (and a row of NaN only)
                x[n - 1] = 9.0;
                for r in 1..rows {
                    x[r * n + rng.below(n)] = f32::NAN;
                }
                if rows > 2 {
                    for v in &mut x[2 * n..3 * n] {
                        *v = f32::NAN;
                    }
                }
            }
            let mut want = vec![0i64; 2 * rows];
            for r in 0..rows {
                let row = &x[r * n..(r + 1) * n];
                let mut best: Option<usize> = None;
                for (i, v) in row.iter().enumerate() {
                    if !v.is_nan() && best.is_none_or(|b| *v > row[b]) {
                        best = Some(i);
                    }
                }
                want[r] = best.unwrap_or(0) as i64;
                want[rows + r] = row.iter().any(|v| v.is_nan()) as i64;
            }
            let t = tensor::<B, 2>(x, [rows, n], dev);
            let got = B::argmax_rows(t.clone())
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap();
            assert_eq!(got, want, "argmax_rows [{rows}, {n}] case {case}");
            if case != 2 || rows <= 2 {
                // (burn's argmax of a row of -inf only is not pinned down)
                let fb = hearth_backend::ops::argmax_rows(t)
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap();
                assert_eq!(fb, want, "ops::argmax_rows [{rows}, {n}] case {case}");
            }
        }
    }
    // through `read_ints_later`: the read is started, the device runs on, the values arrive
    let t = tensor::<B, 2>(vec![0.5, -1.0, 2.0, 2.0], [1, 4], dev);
    let pending = B::read_ints_later(B::argmax_rows(t.clone()));
    let _busy = B::matmul(t.clone().reshape([4, 1]), t.clone());
    assert_eq!(pending.wait().unwrap(), vec![2, 0]);
}

fn packed_errors<B: HearthBackend>(dev: &B::Device) {
    let bytes = gguf_bytes(PackedFormat::Q8_0, &[0.5; 64]);
    assert!(matches!(
        B::upload_packed(PackedFormat::Q8_0, &bytes[..60], 1, 64, dev),
        Err(BackendError::PackedShape { .. })
    ));
    assert!(matches!(
        B::upload_packed(PackedFormat::Q4_0, &bytes, 2, 48, dev),
        Err(BackendError::PackedShape { .. })
    ));
    // K-quant rows must be whole 256-value super-blocks
    let kbytes = gguf_bytes(PackedFormat::Q4_K, &[0.5; 256]);
    assert!(matches!(
        B::upload_packed(PackedFormat::Q4_K, &kbytes, 4, 64, dev),
        Err(BackendError::PackedShape { .. })
    ));
    assert!(matches!(
        B::upload_packed(PackedFormat::Q6_K, &kbytes, 1, 256, dev),
        Err(BackendError::PackedShape { .. })
    ));
    let w = B::upload_packed(PackedFormat::Q8_0, &bytes, 2, 32, dev).unwrap();
    let x = Tensor::<B, 2>::ones([1, 31], dev);
    let err = B::packed_matmul(x, &w).unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::ShapeMismatch {
                op: "packed_matmul",
                ..
            }
        ),
        "{err}"
    );
    // the fallback representation still works on a cube backend
    let dense = PackedMatrix::<B>::dense_from_bytes(PackedFormat::Q8_0, &bytes, 2, 32, dev).unwrap();
    let y = host(B::packed_matmul(Tensor::<B, 2>::ones([3, 32], dev), &dense).unwrap());
    assert_eq!(y.len(), 6);
    assert!((y[0] - 16.0).abs() < 1e-2 && (y[5] - 16.0).abs() < 1e-2, "{y:?}");
}

/// `x` rows as the Q8_0 tensor-core matvec sees them: each 32-value block quantized to `i8`
/// with `d = max|x| / 127`, `q = rint(x · (127 / max|x|))` (f32 arithmetic), then `q · d`.
fn block_quantized(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for b in x.chunks(32) {
        let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inv = if amax > 0.0 { 127.0f32 / amax } else { 0.0 };
        let d = amax / 127.0f32;
        out.extend(b.iter().map(|v| (v * inv).round_ties_even() * d));
    }
    out
}

/// The Q8_0 tensor-core matvec (one matrix, q/k/v, gate/up/SiLU) in several launch shapes
/// against host products of the block-quantized `x`. Where the device has no integer tensor
/// cores (`has`: llvmpipe), the same calls must decline them and stay exact.
fn q8_tensor_cores<B: CubeKernels>(dev: &B::Device, has: bool) {
    // this thread's shape and tensor-core switch: the other tests run side by side
    use hearth_backend::cube::{MatvecShape, set_tensor_cores, set_thread_matvec_shape as set_matvec_shape};
    let mut rng = Rng::new(12);
    let mut cases = vec![
        (1, 1, 32),
        (1, 17, 64),
        (2, 33, 4096),
        (4, 5, 224),
        (3, 70, 1056),
        (1, 40, 14336),
    ];
    for _ in 0..4 {
        cases.push((1 + rng.below(4), 1 + rng.below(90), 32 * (1 + rng.below(60))));
    }
    let shapes = [
        "mma=1",
        "mma=1,units=32,unroll=1",
        "mma=1,units=256,unroll=8",
        "mma=1,units=64,unroll=2",
    ];
    set_tensor_cores(true);
    for (m, n, k) in cases {
        let mats: Vec<(Vec<f32>, PackedMatrix<B>)> = (0..3)
            .map(|_| {
                let bytes = gguf_bytes(PackedFormat::Q8_0, &weights(&mut rng, n * k));
                let deq = hearth_quant::dequantize_to_vec(GgmlType::Q8_0, &bytes).unwrap();
                let mut wt = vec![0.0f32; k * n];
                for r in 0..n {
                    for c in 0..k {
                        wt[c * n + r] = deq[r * k + c];
                    }
                }
                (wt, B::upload_packed(PackedFormat::Q8_0, &bytes, n, k, dev).unwrap())
            })
            .collect();
        let x = rng.vec(m * k);
        let xr = if has { block_quantized(&x) } else { x.clone() };
        let refs: Vec<(Vec<f32>, Vec<f64>)> = mats.iter().map(|(wt, _)| host_matmul(&xr, wt, 1, m, k, n)).collect();
        let tol = if has { 1e-5 } else { F32_MATMUL_TOL };
        let tx = tensor::<B, 2>(x, [m, k], dev);
        for spec in shapes {
            set_matvec_shape(Some(MatvecShape::parse(spec).unwrap()));
            let one = host(B::k_matvec(tx.clone(), &mats[0].1).unwrap());
            let e = matmul_err(&one, &refs[0].0, &refs[0].1);
            assert!(e <= tol, "{spec} m{m} n{n} k{k}: {e:e}");
            let three = B::k_matvec3(tx.clone(), [&mats[0].1, &mats[1].1, &mats[2].1]).unwrap();
            for (i, t) in three.into_iter().enumerate() {
                let e = matmul_err(&host(t), &refs[i].0, &refs[i].1);
                assert!(e <= tol, "{spec} matvec3[{i}] m{m} n{n} k{k}: {e:e}");
            }
            let silu = host(B::k_silu(tx.clone(), &mats[0].1, &mats[1].1).unwrap());
            let want: Vec<f32> = refs[0]
                .0
                .iter()
                .zip(&refs[1].0)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let scale: Vec<f64> = refs[0]
                .1
                .iter()
                .zip(&refs[1].1)
                .map(|(g, u)| (g * u).max(1e-30))
                .collect();
            let e = matmul_err(&silu, &want, &scale);
            assert!(e <= 1e-4, "{spec} silu m{m} n{n} k{k}: {e:e}");
        }
    }
    set_matvec_shape(None);
    set_tensor_cores(false);
}

macro_rules! backend_tests {
    ($module:ident, $backend:ty, $runtime:ty) => {
        mod $module {
            use super::*;
            type B = $backend;
            fn dev() -> burn::tensor::Device<B> {
                // exact products everywhere but in the tensor-core test (which turns them on)
                hearth_backend::cube::set_tensor_cores(false);
                Default::default()
            }
            #[test]
            fn device_computes() {
                const { assert!(!<B as HearthBackend>::HOST_KERNELS) };
                let plane = hearth_backend::cube::uses_plane_reductions::<$runtime>(&dev());
                let sizes = hearth_backend::cube::plane_sizes::<$runtime>(&dev());
                println!("{:?}: plane reductions {plane}, plane sizes {sizes:?}", dev());
                // the bandwidth probe behind `hearth bench`'s floor runs and reads something
                let bw = hearth_backend::cube::read_bandwidth::<$runtime>(&dev(), 1 << 24, 2).expect("the probe runs");
                println!("read bandwidth {:.1} GB/s", bw / 1e9);
                assert!(bw.is_finite() && bw > 1e6, "read bandwidth {bw}");
                let a = Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev());
                let b = Tensor::<B, 2>::from_floats([[5.0, 6.0], [7.0, 8.0]], &dev());
                assert_eq!(host(B::matmul(a, b)), vec![19.0, 22.0, 43.0, 50.0]);
            }
            #[test]
            fn open_device_and_dtypes() {
                let kind = BackendKind::from_str(stringify!($module)).unwrap();
                open_device::<B>(kind, &dev(), DType::F32).unwrap();
                // bf16 is storage-only on Vulkan: a typed error, never a panic
                let r = set_compute_dtype::<B>(kind, &dev(), DType::Bf16);
                if kind == BackendKind::Wgpu {
                    assert!(matches!(r, Err(BackendError::DTypeUnsupported { .. })), "{r:?}");
                }
                for d in [DType::F16, DType::Bf16] {
                    println!("{kind} supports {d:?}: {}", device_supports::<B>(&dev(), d));
                }
            }
            #[test]
            fn matmul_2d_is_exact_f32() {
                matmul_2d::<B>(&dev());
            }
            #[test]
            fn matmul_batched_3d_4d() {
                matmul_batched::<B>(&dev());
            }
            #[test]
            fn matmul_bad_shapes_are_errors() {
                let a = Tensor::<B, 2>::ones([2, 3], &dev());
                let b = Tensor::<B, 2>::ones([4, 5], &dev());
                let r = hearth_backend::cube::matmul_f32(a, b);
                assert!(
                    matches!(r, Err(BackendError::ShapeMismatch { op: "matmul", .. })),
                    "{r:?}"
                );
                let x = Tensor::<B, 2>::ones([2, 3], &dev());
                let w = Tensor::<B, 1>::ones([4], &dev());
                assert!(hearth_backend::cube::rms_norm(x, w, 1e-6).is_err());
                let g = Tensor::<B, 2>::ones([2, 3], &dev());
                assert!(hearth_backend::cube::silu_mul(g.clone(), g.reshape([3, 2])).is_err());
            }
            #[test]
            fn rms_norm_matches_fallback() {
                rms_norm::<B>(&dev());
            }
            #[test]
            fn silu_mul_matches_fallback() {
                silu_mul::<B>(&dev());
            }
            #[test]
            fn attention_matches_fallback() {
                attention::<B>(&dev());
            }
            #[test]
            fn packed_matmul_matches_dequantized() {
                packed::<B>(&dev(), &|w, x, deq, want, mag| {
                    // the fused matvec at every M, and the dequantization kernel (bit-exact)
                    let got = host(hearth_backend::cube::packed_matvec(x.clone(), w).unwrap());
                    assert!(matmul_err(&got, want, mag) <= F32_MATMUL_TOL, "matvec");
                    // every launch shape of the vectorised kernels computes the same product
                    if matches!(
                        w.format(),
                        PackedFormat::F32 | PackedFormat::Q8_0 | PackedFormat::Q4_0
                    ) {
                        for shape in matvec_shapes() {
                            hearth_backend::cube::set_matvec_shape(Some(shape));
                            let got = host(hearth_backend::cube::packed_matvec(x.clone(), w).unwrap());
                            hearth_backend::cube::set_matvec_shape(None);
                            let e = matmul_err(&got, want, mag);
                            assert!(e <= F32_MATMUL_TOL, "{:?} matvec {shape:?}: {e:e}", w.format());
                        }
                    }
                    let d = hearth_backend::cube::dequantize_packed(w, burn::tensor::DType::F32).unwrap();
                    assert_eq!(host(d), deq, "device dequantization");
                });
            }
            #[test]
            fn matvec_with_transposed_weight() {
                matvec_transposed::<B>(&dev());
            }
            #[test]
            fn write_at_matches_slice_assign() {
                write_at::<B>(&dev());
            }
            #[test]
            fn rope_matches_fallback() {
                rope::<B>(&dev());
            }
            #[test]
            fn fused_attention_matches_fallback() {
                fused_attention::<B>(&dev());
            }
            #[test]
            fn many_heads_attention_matches_host() {
                many_heads_attention::<B>(&dev());
            }
            #[test]
            fn add_rms_norm_matches_fallback() {
                add_rms_norm::<B>(&dev());
            }
            #[test]
            fn fused_packed_matvecs_match_separate() {
                fused_packed::<B>(&dev());
            }
            #[test]
            fn fused_dense_matvecs_match_host() {
                fused_dense::<B>(&dev());
            }
            #[test]
            fn rope_write_matches_rope_and_slice_assign() {
                rope_write::<B>(&dev());
            }
            #[test]
            fn folded_norms_and_residuals_match_unfused() {
                folded::<B>(&dev());
            }
            #[test]
            fn carried_norm_sums_match_unfused() {
                carried::<B>(&dev());
            }
            #[test]
            fn q8_tensor_cores_match_quantized_x() {
                let dev = dev();
                hearth_backend::cube::set_tensor_cores(true);
                let has = hearth_backend::cube::q8_tensor_cores::<$runtime>(&dev);
                println!("Q8_0 on integer tensor cores: {has}");
                // an H200 has them: the CUDA run must not silently test the fallback
                assert!(has || stringify!($module) != "cuda", "no integer MMA on CUDA");
                q8_tensor_cores::<B>(&dev, has);
            }
            #[test]
            fn moe_experts_match_expert_by_expert() {
                moe::<B>(&dev());
            }
            #[test]
            fn argmax_rows_match_host() {
                argmax::<B>(&dev());
            }
            #[test]
            fn packed_bad_input_is_an_error() {
                packed_errors::<B>(&dev());
            }
        }
    };
}

#[cfg(feature = "wgpu")]
use hearth_backend::Wgpu;
#[cfg(feature = "wgpu")]
backend_tests!(wgpu, Wgpu, burn::backend::wgpu::WgpuRuntime);

#[cfg(feature = "cuda")]
use hearth_backend::Cuda;
#[cfg(feature = "cuda")]
backend_tests!(cuda, Cuda, cubecl::cuda::CudaRuntime);
