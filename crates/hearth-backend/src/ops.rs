//! Fallback implementations of [`crate::HearthBackend`]'s operations, written with plain burn
//! ops. They run on every backend and are the reference that fused kernels are tested against.

use crate::{BackendError, Expert, HearthBackend, NormSums, PreNorm, Weight};
use burn::tensor::{Tensor, activation, backend::Backend};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// let dev = Default::default();
/// let x = Tensor::<hearth_backend::Cpu, 1>::from_floats([1.0, -1.0], &dev);
/// let w = Tensor::from_floats([2.0, 2.0], &dev);
/// let y = hearth_backend::ops::rms_norm(x, w, 0.0).into_data().to_vec::<f32>().unwrap();
/// assert_eq!(y, vec![2.0, -2.0]);
/// # }
/// ```
pub fn rms_norm<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
    let inv = (ms + eps).sqrt().recip();
    let dims = x.dims();
    let mut wshape = [1usize; D];
    wshape[D - 1] = dims[D - 1];
    x * inv * weight.reshape(wshape)
}

/// [`HearthBackend::argmax_rows`] in burn ops: for `x: [rows, n]`, each row's first index of
/// its largest non-NaN value, then one NaN flag (0 or 1) per row.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// let x = Tensor::<hearth_backend::Cpu, 2>::from_floats([[2.0, 5.0, 5.0]], &Default::default());
/// let out = hearth_backend::ops::argmax_rows(x).into_data().convert::<i64>().to_vec::<i64>().unwrap();
/// assert_eq!(out, vec![1, 0]);
/// # }
/// ```
pub fn argmax_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1, burn::tensor::Int> {
    let [rows, _] = x.dims();
    let nan = x.clone().is_nan();
    let flags = nan.clone().any_dim(1).int().reshape([rows]);
    let idx = x.mask_fill(nan, f32::NEG_INFINITY).argmax(1).reshape([rows]);
    Tensor::cat(vec![idx, flags], 0)
}

/// SwiGLU gate `silu(gate) · up` with burn ops.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// let dev = Default::default();
/// let g = Tensor::<hearth_backend::Cpu, 1>::from_floats([0.0, 1.0], &dev);
/// let u = Tensor::from_floats([5.0, 2.0], &dev);
/// let y = hearth_backend::ops::silu_mul(g, u).into_data().to_vec::<f32>().unwrap();
/// assert_eq!(y[0], 0.0);
/// assert!((y[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
/// # }
/// ```
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    activation::silu(gate) * up
}

/// Grouped-query attention with an additive mask, without materialising repeated K/V heads.
///
/// Query heads of one KV group are folded into the sequence axis (`[B, Hkv, g·T, D]`) so a
/// single batched matmul per KV head serves the whole group.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// type B = hearth_backend::Cpu;
/// let dev = Default::default();
/// // one query, two keys, the second masked out: the output is the first value
/// let q = Tensor::<B, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
/// let k = Tensor::<B, 4>::from_floats([[[[1.0, 0.0], [0.0, 1.0]]]], &dev);
/// let v = Tensor::<B, 4>::from_floats([[[[5.0], [7.0]]]], &dev);
/// let mask = Tensor::<B, 3>::from_floats([[[0.0, f32::NEG_INFINITY]]], &dev);
/// let o = hearth_backend::ops::gqa_attention(q, k, v, mask, 1.0);
/// assert_eq!(o.into_data().to_vec::<f32>().unwrap(), vec![5.0]);
/// # }
/// ```
pub fn gqa_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 3>,
    scale: f64,
) -> Tensor<B, 4> {
    gqa_attention_with(q, k, v, mask, scale, Tensor::matmul)
}

/// [`gqa_attention`] with the two batched products computed by `matmul` (e.g.
/// [`crate::HearthBackend::matmul`], exact f32 on CUDA).
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// type B = hearth_backend::Cpu;
/// let dev = Default::default();
/// let q = Tensor::<B, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
/// let k = Tensor::<B, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
/// let v = Tensor::<B, 4>::from_floats([[[[5.0]]]], &dev);
/// let mask = Tensor::<B, 3>::zeros([1, 1, 1], &dev);
/// let o = hearth_backend::ops::gqa_attention_with(q, k, v, mask, 1.0, Tensor::matmul);
/// assert_eq!(o.into_data().to_vec::<f32>().unwrap(), vec![5.0]);
/// # }
/// ```
pub fn gqa_attention_with<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 3>,
    scale: f64,
    matmul: impl Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, d] = q.dims();
    let [_, hkv, s, _] = k.dims();
    let dv = v.dims()[3];
    let g = h / hkv;
    let q = q.reshape([b, hkv, g * t, d]);
    let mask = if g == 1 {
        mask.unsqueeze_dim::<4>(1)
    } else {
        mask.unsqueeze_dim::<4>(1).repeat_dim(1, g).reshape([b, 1, g * t, s])
    };
    let scores = matmul(q, k.swap_dims(2, 3)) * scale + mask;
    let probs = activation::softmax(scores, 3);
    matmul(probs, v).reshape([b, h, t, dv])
}

/// Rotary embedding of the first `rope_dim` dims of each head of `x: [B, H, T, D]`, with
/// `cos`/`sin: [B, 1, T, rope_dim]` (the table's values per position); dims `rope_dim..D` pass
/// through. Rotate-half pairs `(i, i + rope_dim/2)`; with `interleaved`, the pairs `(2i, 2i+1)`
/// are first gathered into rotate-half order (the output is in rotate-half order, as
/// transformers' DeepSeek code does). `rope_dim` must be even and at most `D`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// type B = hearth_backend::Cpu;
/// let dev = Default::default();
/// let x = Tensor::<B, 4>::from_floats([[[[1.0, 0.0, 5.0]]]], &dev);
/// let (c, s) = (1f32.cos(), 1f32.sin());
/// let cos = Tensor::<B, 4>::from_floats([[[[c, c]]]], &dev);
/// let sin = Tensor::<B, 4>::from_floats([[[[s, s]]]], &dev);
/// let y = hearth_backend::ops::rope(x, &cos, &sin, 2, false).into_data().to_vec::<f32>().unwrap();
/// assert!((y[0] - c).abs() < 1e-6 && (y[1] - s).abs() < 1e-6 && y[2] == 5.0);
/// # }
/// ```
pub fn rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    rope_dim: usize,
    interleaved: bool,
) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let rotate = |x: Tensor<B, 4>| {
        let r = rope_dim;
        let x = if interleaved {
            x.reshape([b * h, t, r / 2, 2]).swap_dims(2, 3).reshape([b, h, t, r])
        } else {
            x
        };
        let x1 = x.clone().narrow(3, 0, r / 2);
        let x2 = x.clone().narrow(3, r / 2, r / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    };
    if rope_dim == d {
        return rotate(x);
    }
    let rot = x.clone().narrow(3, 0, rope_dim);
    let pass = x.narrow(3, rope_dim, d - rope_dim);
    Tensor::cat(vec![rotate(rot), pass], 3)
}

/// Residual add followed by RMSNorm: returns `(x + r, rms_norm(x + r, weight, eps))`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// type B = hearth_backend::Cpu;
/// let dev = Default::default();
/// let x = Tensor::<B, 2>::from_floats([[1.0, -2.0]], &dev);
/// let r = Tensor::<B, 2>::from_floats([[0.0, 1.0]], &dev);
/// let w = Tensor::<B, 1>::from_floats([2.0, 2.0], &dev);
/// let (s, y) = hearth_backend::ops::add_rms_norm(x, r, w, 0.0);
/// assert_eq!(s.into_data().to_vec::<f32>().unwrap(), vec![1.0, -1.0]);
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![2.0, -2.0]);
/// # }
/// ```
pub fn add_rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    r: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let s = x + r;
    let y = rms_norm(s.clone(), weight, eps);
    (s, y)
}

/// `dst.slice_assign(offset..offset + src.dims(), src)`: the fallback of
/// [`crate::HearthBackend::write_at`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// let dev = Default::default();
/// let dst = Tensor::<hearth_backend::Cpu, 4>::zeros([1, 2, 1, 1], &dev);
/// let y = hearth_backend::ops::write_at(dst, Tensor::ones([1, 1, 1, 1], &dev), [0, 1, 0, 0]);
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0]);
/// # }
/// ```
pub fn write_at<B: Backend>(dst: Tensor<B, 4>, src: Tensor<B, 4>, offset: [usize; 4]) -> Tensor<B, 4> {
    let d = src.dims();
    let r = |i: usize| offset[i]..offset[i] + d[i];
    dst.slice_assign([r(0), r(1), r(2), r(3)], src)
}

/// [`HearthBackend::norm_matmul3`] unfused: [`HearthBackend::rms_norm`], then one
/// [`HearthBackend::matmul3`] / [`HearthBackend::packed_matmul3`] when the three weights are of
/// one kind, else three products.
///
/// Errors: those of [`HearthBackend::packed_matmul`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, PreNorm, Weight, ops};
/// let dev = Default::default();
/// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
/// let h = Tensor::<Cpu, 2>::from_floats([[1.0, -1.0]], &dev);
/// let [q, _, _] = ops::norm_matmul3(h, PreNorm { weight: &g, eps: 0.0 }, [Weight::Dense(&w); 3]).unwrap();
/// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![0.0]);
/// # }
/// ```
pub fn norm_matmul3<B: HearthBackend>(
    h: Tensor<B, 2>,
    norm: PreNorm<B>,
    w: [Weight<B>; 3],
) -> Result<[Tensor<B, 2>; 3], BackendError> {
    let x = B::rms_norm(h, norm.weight.clone(), norm.eps);
    products3(x, w)
}

/// `[x · w₀, x · w₁, x · w₂]`: one [`HearthBackend::matmul3`] / [`HearthBackend::packed_matmul3`]
/// when the three weights are of one kind, else three products.
fn products3<B: HearthBackend>(x: Tensor<B, 2>, w: [Weight<B>; 3]) -> Result<[Tensor<B, 2>; 3], BackendError> {
    match w {
        [Weight::Dense(a), Weight::Dense(b), Weight::Dense(c)] => Ok(B::matmul3(x, [a, b, c])),
        [Weight::Packed(a), Weight::Packed(b), Weight::Packed(c)] => B::packed_matmul3(x, [a, b, c]),
        [a, b, c] => Ok([a.product(x.clone())?, b.product(x.clone())?, c.product(x)?]),
    }
}

/// `silu(x · gate) · (x · up)`: [`HearthBackend::matmul_silu`] /
/// [`HearthBackend::packed_matmul_silu`], or two products and [`HearthBackend::silu_mul`].
fn products_silu<B: HearthBackend>(
    x: Tensor<B, 2>,
    gate: Weight<B>,
    up: Weight<B>,
) -> Result<Tensor<B, 2>, BackendError> {
    match (gate, up) {
        (Weight::Dense(g), Weight::Dense(u)) => Ok(B::matmul_silu(x, g, u)),
        (Weight::Packed(g), Weight::Packed(u)) => B::packed_matmul_silu(x, g, u),
        (g, u) => Ok(B::silu_mul(g.product(x.clone())?, u.product(x)?)),
    }
}

/// [`HearthBackend::norm_matmul_silu`] unfused: [`HearthBackend::rms_norm`], then
/// [`HearthBackend::matmul_silu`] / [`HearthBackend::packed_matmul_silu`] (or two products and
/// [`HearthBackend::silu_mul`] for mixed weights).
///
/// Errors: those of [`HearthBackend::packed_matmul_silu`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, PreNorm, Weight, ops};
/// let dev = Default::default();
/// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
/// let y = ops::norm_matmul_silu(Tensor::zeros([1, 2], &dev), PreNorm { weight: &g, eps: 1e-6 }, Weight::Dense(&w), Weight::Dense(&w));
/// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![0.0]);
/// # }
/// ```
pub fn norm_matmul_silu<B: HearthBackend>(
    h: Tensor<B, 2>,
    norm: PreNorm<B>,
    gate: Weight<B>,
    up: Weight<B>,
) -> Result<Tensor<B, 2>, BackendError> {
    let x = B::rms_norm(h, norm.weight.clone(), norm.eps);
    products_silu(x, gate, up)
}

/// [`HearthBackend::matmul_add`] unfused: the product, then the addition.
///
/// Errors: those of [`HearthBackend::packed_matmul`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, Weight, ops};
/// let dev = Default::default();
/// let w = Tensor::<Cpu, 2>::ones([2, 1], &dev);
/// let y = ops::matmul_add(Tensor::ones([1, 2], &dev), Weight::Dense(&w), Tensor::zeros([1, 1], &dev));
/// assert_eq!(y.unwrap().into_data().to_vec::<f32>().unwrap(), vec![2.0]);
/// # }
/// ```
pub fn matmul_add<B: HearthBackend>(
    x: Tensor<B, 2>,
    w: Weight<B>,
    residual: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, BackendError> {
    Ok(residual + w.product(x)?)
}

/// [`HearthBackend::sums_norm`] with burn ops: `x ⊙ weight`, and each row's `Σx²` (in f32)
/// added to `sums` at `slot`.
///
/// Errors: [`BackendError::ShapeMismatch`] for a slot or row count the buffer does not have, or
/// a weight that is not `[K]`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, NormSums, ops};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
/// let g = Tensor::<Cpu, 1>::ones([2], &dev);
/// ops::sums_norm(Tensor::<Cpu, 2>::from_floats([[1.0, 2.0]], &dev), &g, &sums, 0).unwrap();
/// assert_eq!(sums.slot(0).into_data().to_vec::<f32>().unwrap(), vec![5.0]);
/// # }
/// ```
pub fn sums_norm<B: HearthBackend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    sums: &NormSums<B>,
    slot: usize,
) -> Result<Tensor<B, 2>, BackendError> {
    let [m, k] = x.dims();
    sums.check("sums_norm", slot, m)?;
    if weight.dims() != [k] {
        return Err(BackendError::ShapeMismatch {
            op: "sums_norm",
            reason: format!("x is [{m}, {k}], the norm weight {:?}", weight.dims()),
        });
    }
    let xf = x.clone().cast(burn::tensor::DType::F32);
    sums.add(slot, xf.powi_scalar(2).sum_dim(1).reshape([m]));
    Ok(x * weight.clone().reshape([1, k]))
}

/// [`HearthBackend::matmul_add_sums`] unfused: [`HearthBackend::matmul_add`], then
/// [`HearthBackend::sums_norm`] of its output with the next norm's weight.
///
/// Errors: those of both.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, NormSums, Weight, ops};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
/// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([1], &dev));
/// let (h, _) = ops::matmul_add_sums(Tensor::ones([1, 2], &dev), Weight::Dense(&w), Tensor::zeros([1, 1], &dev), &g, &sums, 0).unwrap();
/// assert_eq!(h.into_data().to_vec::<f32>().unwrap(), vec![2.0]);
/// assert_eq!(sums.slot(0).into_data().to_vec::<f32>().unwrap(), vec![4.0]);
/// # }
/// ```
pub fn matmul_add_sums<B: HearthBackend>(
    x: Tensor<B, 2>,
    w: Weight<B>,
    residual: Tensor<B, 2>,
    next: &Tensor<B, 1>,
    sums: &NormSums<B>,
    slot: usize,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>), BackendError> {
    sums.check("matmul_add_sums", slot, x.dims()[0])?;
    let h = B::matmul_add(x, w, residual)?;
    let hg = B::sums_norm(h.clone(), next, sums, slot)?;
    Ok((h, hg))
}

/// `RMSNorm(h)` from `hg = h ⊙ g` and the sums of squares of `h` in `sums` at `slot`:
/// `hg / sqrt(Σh² / K + eps)` with burn ops (the input of a block that does not take
/// [`HearthBackend::sums_matmul3`]).
///
/// Errors: [`BackendError::ShapeMismatch`] for a slot or row count the buffer does not have.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, HearthBackend, NormSums, ops};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
/// let g = Tensor::<Cpu, 1>::ones([2], &dev);
/// let hg = Cpu::sums_norm(Tensor::from_floats([[1.0, -1.0]], &dev), &g, &sums, 0).unwrap();
/// let y = ops::sums_normed(hg, &sums, 0, 0.0).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![1.0, -1.0]);
/// # }
/// ```
pub fn sums_normed<B: Backend>(
    hg: Tensor<B, 2>,
    sums: &NormSums<B>,
    slot: usize,
    eps: f64,
) -> Result<Tensor<B, 2>, BackendError> {
    let [m, k] = hg.dims();
    sums.check("sums_normed", slot, m)?;
    let inv = (sums.slot(slot) / k as f64 + eps).sqrt().recip();
    Ok(hg.clone() * inv.reshape([m, 1]).cast(hg.dtype()))
}

/// [`HearthBackend::sums_matmul3`] unfused: [`sums_normed`], then the three products.
///
/// Errors: those of [`sums_normed`] and [`HearthBackend::packed_matmul3`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, HearthBackend, NormSums, Weight, ops};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
/// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
/// let hg = Cpu::sums_norm(Tensor::from_floats([[1.0, -1.0]], &dev), &g, &sums, 0).unwrap();
/// let [q, _, _] = ops::sums_matmul3(hg, &sums, 0, 0.0, [Weight::Dense(&w); 3]).unwrap();
/// assert_eq!(q.into_data().to_vec::<f32>().unwrap(), vec![0.0]);
/// # }
/// ```
pub fn sums_matmul3<B: HearthBackend>(
    hg: Tensor<B, 2>,
    sums: &NormSums<B>,
    slot: usize,
    eps: f64,
    w: [Weight<B>; 3],
) -> Result<[Tensor<B, 2>; 3], BackendError> {
    products3(sums_normed(hg, sums, slot, eps)?, w)
}

/// [`HearthBackend::sums_matmul_silu`] unfused: [`sums_normed`], then the gated products.
///
/// Errors: those of [`sums_normed`] and [`HearthBackend::packed_matmul_silu`].
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, HearthBackend, NormSums, Weight, ops};
/// let dev = Default::default();
/// let sums = NormSums::<Cpu>::zeroed(1, 1, &dev);
/// let (w, g) = (Tensor::<Cpu, 2>::ones([2, 1], &dev), Tensor::<Cpu, 1>::ones([2], &dev));
/// let hg = Cpu::sums_norm(Tensor::zeros([1, 2], &dev), &g, &sums, 0).unwrap();
/// let y = ops::sums_matmul_silu(hg, &sums, 0, 1e-6, Weight::Dense(&w), Weight::Dense(&w)).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0]);
/// # }
/// ```
pub fn sums_matmul_silu<B: HearthBackend>(
    hg: Tensor<B, 2>,
    sums: &NormSums<B>,
    slot: usize,
    eps: f64,
    gate: Weight<B>,
    up: Weight<B>,
) -> Result<Tensor<B, 2>, BackendError> {
    products_silu(sums_normed(hg, sums, slot, eps)?, gate, up)
}

/// [`HearthBackend::moe_experts`] expert by expert: for each token `t` of `x: [n, K]` and each of
/// its experts `j` (`experts[t·k .. (t + 1)·k]`, `k = experts.len() / n`),
/// `wⱼ · downⱼ(silu(gateⱼ · xₜ) ⊙ upⱼ · xₜ)` with [`HearthBackend::matmul_silu`] /
/// [`HearthBackend::packed_matmul_silu`] and the down product, summed per token.
///
/// Errors: [`BackendError::ShapeMismatch`] (`op: "moe_experts"`) when there are no tokens or
/// experts, the experts and weights differ in number or the experts do not divide evenly among
/// the tokens; those of the products.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use burn::tensor::Tensor;
/// use hearth_backend::{Cpu, Expert, Weight, ops};
/// let dev = Default::default();
/// let (gu, d) = (Tensor::<Cpu, 2>::ones([2, 3], &dev), Tensor::<Cpu, 2>::ones([3, 2], &dev));
/// let e = Expert { gate: Weight::Dense(&gu), up: Weight::Dense(&gu), down: Weight::Dense(&d) };
/// let y = ops::moe_experts(Tensor::zeros([1, 2], &dev), &[e, e], &[0.5, 0.5]).unwrap();
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![0.0; 2]);
/// # }
/// ```
pub fn moe_experts<B: HearthBackend>(
    x: Tensor<B, 2>,
    experts: &[Expert<B>],
    weights: &[f32],
) -> Result<Tensor<B, 2>, BackendError> {
    let [n, _] = x.dims();
    if n == 0 || experts.is_empty() || experts.len() != weights.len() || !experts.len().is_multiple_of(n) {
        return Err(BackendError::ShapeMismatch {
            op: "moe_experts",
            reason: format!(
                "{n} tokens, {} experts, {} routing weights (each token needs the same number of experts)",
                experts.len(),
                weights.len()
            ),
        });
    }
    let k = experts.len() / n;
    let mut rows = Vec::with_capacity(n);
    for t in 0..n {
        let xt = x.clone().slice(t..t + 1);
        let mut acc: Option<Tensor<B, 2>> = None;
        for (e, &w) in experts[t * k..(t + 1) * k].iter().zip(&weights[t * k..(t + 1) * k]) {
            let h = products_silu(xt.clone(), e.gate, e.up)?;
            let y = e.down.product(h)?.mul_scalar(w);
            acc = Some(match acc {
                Some(a) => a + y,
                None => y,
            });
        }
        rows.push(acc.expect("k ≥ 1"));
    }
    Ok(Tensor::cat(rows, 0))
}
