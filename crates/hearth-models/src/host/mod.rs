//! The host-native forward of CPU models: the whole decoder step on plain `f32` buffers.
//!
//! [`HostModel`] is built from a loaded [`CausalLm`] and shares its packed weights
//! (`Arc<HostWeight>`, and the embedding rows on host backends); norms, biases and the MLA
//! up-projections are copied into plain vectors. A [`HostSession`] owns everything a sequence
//! batch needs between steps: the KV cache (`[row, kv_head, capacity, dim]` per layer,
//! allocated once), the RoPE cos/sin table (filled once per position), and scratch buffers that
//! grow to the largest chunk seen and are then reused, so a decode step allocates nothing of its
//! own. Every projection, the LM head included, runs on the packed kernels
//! (`hearth_quant::kernels::matmul`); RMSNorm + residual add, RoPE, SwiGLU and attention over the
//! cache (online softmax, parallel over query heads) are fused loops in [`ops`]. The families are
//! the same as [`CausalLm`]'s: biases, q/k norms (per head and full), sliding windows, MoE
//! (routing through `hearth_moe` exactly as the burn path, grouped by expert, shared experts and
//! their gate, load statistics) and MLA (the absorbed form over the latent cache).
//!
//! ```no_run
//! use hearth_models::{CausalLm, ForwardOptions, host::HostModel};
//! let model = CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
//! let host = HostModel::from_model(&model).unwrap();
//! let mut session = host.new_session(1, Some(64));
//! let out = host.forward(&[vec![1, 2, 3]], &mut session, ForwardOptions { last_only: true, ..Default::default() }).unwrap();
//! assert_eq!(out.logits.len(), model.config().vocab_size);
//! ```

pub mod ops;
mod pool;
mod runner;

pub use runner::{DecodeSession, Decoder, Logits};

use crate::config::{MlaConfig, ModelConfig, QkNorm};
use crate::decoder::{Attention, CausalLm, Embedding, Ffn, ForwardOptions};
use crate::error::ModelError;
use crate::layers::{HostWeight, Linear, LinearWeight, Mlp, RmsNorm};
use crate::mla::QueryProj;
use burn::tensor::{Tensor, backend::Backend};
use hearth_attention::{CacheError, RopeLayout, RopeScaling};
use hearth_backend::HearthBackend;
use hearth_moe::{LoadStats, RouterSpec};
use hearth_quant::kernels::{self, WeightFormat};
use ops::{
    MAX_GROUP, add_rms_norm, attend_group, axpy, dot, online_softmax, rms_norm, rms_norm_in_place, rope, silu_mul,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Below this many multiply-adds an attention pass runs on the calling thread (a parallel region
/// costs a few µs of fork/join and wake-ups, about this much work on one core).
const PAR_MIN_WORK: usize = 1 << 18;

fn host_err(field: &str, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Config {
        file: "<host forward>".into(),
        field: field.into(),
        reason: reason.to_string(),
    }
}

fn host_vec<B: Backend, const D: usize>(t: &Tensor<B, D>, what: &str) -> Result<Vec<f32>, ModelError> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| host_err(what, format!("{e:?}")))
}

/// Grows `v` to at least `n` elements (never shrinks) and returns its first `n`.
fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// A projection on the packed kernels: `y = x · Wᵀ + b` for `n` rows of `x`.
#[derive(Clone, Debug)]
struct HostLinear {
    w: Arc<HostWeight>,
    bias: Option<Vec<f32>>,
}

impl HostLinear {
    fn new<B: HearthBackend>(l: &Linear<B>) -> Result<Self, ModelError> {
        let w = match &l.weight {
            LinearWeight::Host(w) => w.clone(),
            // (`HostWeight::bytes` may be a `Vec<u8>` or a wrapper built from one)
            #[allow(clippy::useless_conversion)]
            LinearWeight::Device(t) => {
                // `[in, out]` device tensor → `[out, in]` f32 rows
                let [inp, out] = t.dims();
                let v = host_vec(t, "linear weight")?;
                let mut rows = vec![0.0f32; v.len()];
                for i in 0..inp {
                    for o in 0..out {
                        rows[o * inp + i] = v[i * out + o];
                    }
                }
                Arc::new(HostWeight {
                    format: WeightFormat::F32,
                    bytes: bytemuck::cast_slice(&rows).to_vec().into(),
                    rows: out,
                    cols: inp,
                })
            }
            // device blocks → dequantized `[out, in]` f32 rows (the host kernels run f32)
            #[allow(clippy::useless_conversion)]
            LinearWeight::Packed(p) => {
                let t = B::dequantize_packed(p).map_err(|e| host_err("linear weight", e))?;
                let v = host_vec(&t, "linear weight")?;
                Arc::new(HostWeight {
                    format: WeightFormat::F32,
                    bytes: bytemuck::cast_slice(&v).to_vec().into(),
                    rows: p.rows(),
                    cols: p.cols(),
                })
            }
        };
        let expected =
            w.format.row_bytes(w.cols).map_err(|e| host_err("linear weight", e))? * w.format.stored_rows(w.rows);
        if w.bytes.len() != expected {
            return Err(host_err(
                "linear weight",
                format!("{} bytes for {}×{} {:?}", w.bytes.len(), w.rows, w.cols, w.format),
            ));
        }
        let bias = l.bias.as_ref().map(|b| host_vec(b, "linear bias")).transpose()?;
        Ok(Self { w, bias })
    }

    fn rows(&self) -> usize {
        self.w.rows
    }

    fn cols(&self) -> usize {
        self.w.cols
    }

    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), ModelError> {
        let (rows, cols) = (self.w.rows, self.w.cols);
        let y = &mut y[..n * rows];
        kernels::matmul(self.w.format, &self.w.bytes, rows, cols, &x[..n * cols], n, y)
            .map_err(|e| host_err("packed matmul", e))?;
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(rows) {
                for (y, b) in row.iter_mut().zip(b) {
                    *y += b;
                }
            }
        }
        Ok(())
    }
}

/// Runs projections of the same input `x` (`n` rows): for one row (decode) as one
/// [`kernels::matvec_many`] pass (activations quantized once, one fork/join for all), for more
/// rows concurrently, each with its own parallelism.
fn forward_many<const K: usize>(lins: [(&HostLinear, &mut [f32]); K], x: &[f32], n: usize) -> Result<(), ModelError> {
    if n == 1 && lins.iter().all(|(l, _)| l.cols() == lins[0].0.cols()) {
        let cols = lins[0].0.cols();
        let mut lins = lins;
        {
            // an array, not a Vec: the decode step allocates nothing of its own
            let mut jobs = lins.each_mut().map(|(l, y)| kernels::MatvecJob {
                fmt: l.w.format,
                weight: &l.w.bytes,
                y: &mut y[..l.rows()],
            });
            kernels::matvec_many(&mut jobs, cols, &x[..cols]).map_err(|e| host_err("packed matvec", e))?;
        }
        for (l, y) in lins {
            if let Some(b) = &l.bias {
                y[..l.rows()].iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        return Ok(());
    }
    let mut lins = lins;
    forward_rest(&mut lins, x, n)
}

fn forward_rest(lins: &mut [(&HostLinear, &mut [f32])], x: &[f32], n: usize) -> Result<(), ModelError> {
    match lins {
        [] => Ok(()),
        [(a, ya)] => a.forward(x, n, ya),
        [(a, ya), rest @ ..] => {
            let (ra, rr) = rayon::join(|| a.forward(x, n, ya), || forward_rest(rest, x, n));
            ra.and(rr)
        }
    }
}

#[derive(Clone, Debug)]
struct Norm {
    w: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new<B: HearthBackend>(n: &RmsNorm<B>) -> Result<Self, ModelError> {
        Ok(Self {
            w: host_vec(&n.weight, "norm weight")?,
            eps: n.eps as f32,
        })
    }
}

struct HostMlp {
    gate: HostLinear,
    up: HostLinear,
    down: HostLinear,
}

impl HostMlp {
    fn new<B: HearthBackend>(m: &Mlp<B>) -> Result<Self, ModelError> {
        Ok(Self {
            gate: HostLinear::new(&m.gate)?,
            up: HostLinear::new(&m.up)?,
            down: HostLinear::new(&m.down)?,
        })
    }

    fn inter(&self) -> usize {
        self.gate.rows()
    }

    /// `y = down(silu(gate(x)) · up(x))` for `n` rows; `g`, `u` are `n × inter` scratch.
    fn forward(&self, x: &[f32], n: usize, g: &mut [f32], u: &mut [f32], y: &mut [f32]) -> Result<(), ModelError> {
        let i = self.inter();
        let (g, u) = (&mut g[..n * i], &mut u[..n * i]);
        forward_many([(&self.gate, &mut *g), (&self.up, &mut *u)], x, n)?;
        silu_mul(g, u);
        self.down.forward(g, n, y)
    }
}

struct HostMha {
    q: HostLinear,
    k: HostLinear,
    v: HostLinear,
    o: HostLinear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    qk_norm: QkNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_dim: usize,
    layout: RopeLayout,
    scale: f32,
}

struct HostMla {
    q_direct: Option<HostLinear>,
    q_lora: Option<(HostLinear, Norm, HostLinear)>,
    kv_a: HostLinear,
    kv_norm: Norm,
    /// `[H, nope, rank]`.
    w_uk: Vec<f32>,
    /// `[H, rank, v]`.
    w_uv: Vec<f32>,
    o: HostLinear,
    dims: MlaConfig,
    heads: usize,
    layout: RopeLayout,
    scale: f32,
}

enum HostAttn {
    Mha(HostMha),
    Mla(HostMla),
}

impl HostAttn {
    /// KV cache stream shape: `(heads, key width, value width)`.
    fn kv_shape(&self) -> (usize, usize, usize) {
        match self {
            HostAttn::Mha(a) => (a.kv_heads, a.head_dim, a.head_dim),
            HostAttn::Mla(a) => (1, a.dims.kv_lora_rank, a.dims.qk_rope_head_dim),
        }
    }
}

struct HostMoe {
    gate: HostLinear,
    correction_bias: Option<Vec<f32>>,
    spec: RouterSpec,
    experts: Vec<HostMlp>,
    shared: Option<HostMlp>,
    shared_gate: Option<HostLinear>,
    stats: Arc<Mutex<LoadStats>>,
}

enum HostFfn {
    Dense(HostMlp),
    Moe(Box<HostMoe>),
}

struct HostLayer {
    input_norm: Norm,
    attn: HostAttn,
    post_norm: Norm,
    ffn: HostFfn,
    window: Option<usize>,
}

/// A decoder running entirely on host buffers and hearth's packed CPU kernels (see the
/// [module docs](self)). Immutable after construction and `Sync`: share `&HostModel` between
/// threads, one [`HostSession`] per sequence batch.
pub struct HostModel {
    cfg: ModelConfig,
    embed: Arc<HostWeight>,
    layers: Vec<HostLayer>,
    norm: Norm,
    lm_head: HostLinear,
    pool: Option<Arc<pool::SpinPool>>,
    decode_weight_bytes: usize,
    /// Identifies this model's sessions.
    id: u64,
}

static NEXT_MODEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl HostModel {
    /// Builds the host forward of a loaded model, sharing its packed weights. Device-resident
    /// weights (GPU backends) are copied to host f32 rows.
    ///
    /// ```no_run
    /// # use hearth_models::{CausalLm, host::HostModel};
    /// # let model = CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// let host = HostModel::from_model(&model)?;
    /// assert_eq!(host.decode_weight_bytes(), model.decode_weight_bytes());
    /// # Ok::<(), hearth_models::ModelError>(())
    /// ```
    pub fn from_model<B: HearthBackend>(m: &CausalLm<B>) -> Result<Self, ModelError> {
        let cfg = m.cfg.clone();
        let embed = match &m.embed {
            Embedding::Host(e) => e.clone(),
            Embedding::Device(t) => {
                let v = host_vec(t, "embedding")?;
                Arc::new(HostWeight {
                    format: WeightFormat::F32,
                    bytes: bytemuck::cast_slice(&v).to_vec().into(),
                    rows: cfg.vocab_size,
                    cols: cfg.hidden_size,
                })
            }
        };
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let attn = match &l.attn {
                Attention::Mha(a) => HostAttn::Mha(HostMha {
                    q: HostLinear::new(&a.q)?,
                    k: HostLinear::new(&a.k)?,
                    v: HostLinear::new(&a.v)?,
                    o: HostLinear::new(&a.o)?,
                    q_norm: a.q_norm.as_ref().map(Norm::new).transpose()?,
                    k_norm: a.k_norm.as_ref().map(Norm::new).transpose()?,
                    qk_norm: a.qk_norm,
                    heads: a.heads,
                    kv_heads: a.kv_heads,
                    head_dim: a.head_dim,
                    rope_dim: a.rope_dim,
                    layout: a.rope_layout,
                    scale: a.scale as f32,
                }),
                Attention::Mla(a) => {
                    let (q_direct, q_lora) = match &a.q {
                        QueryProj::Direct(p) => (Some(HostLinear::new(p)?), None),
                        QueryProj::LowRank { a, norm, b } => {
                            (None, Some((HostLinear::new(a)?, Norm::new(norm)?, HostLinear::new(b)?)))
                        }
                    };
                    HostAttn::Mla(HostMla {
                        q_direct,
                        q_lora,
                        kv_a: HostLinear::new(&a.kv_a)?,
                        kv_norm: Norm::new(&a.kv_norm)?,
                        w_uk: host_vec(&a.w_uk, "w_uk")?,
                        w_uv: host_vec(&a.w_uv, "w_uv")?,
                        o: HostLinear::new(&a.o)?,
                        dims: a.dims.clone(),
                        heads: a.heads,
                        layout: a.rope_layout,
                        scale: a.scale as f32,
                    })
                }
            };
            let ffn = match &l.ffn {
                Ffn::Dense(mlp) => HostFfn::Dense(HostMlp::new(mlp)?),
                Ffn::Moe(moe) => HostFfn::Moe(Box::new(HostMoe {
                    gate: HostLinear::new(&moe.gate)?,
                    correction_bias: moe.correction_bias.clone(),
                    spec: moe.spec.clone(),
                    experts: moe.experts.iter().map(HostMlp::new).collect::<Result<_, _>>()?,
                    shared: moe.shared.as_ref().map(HostMlp::new).transpose()?,
                    shared_gate: moe.shared_gate.as_ref().map(HostLinear::new).transpose()?,
                    stats: moe.stats.clone(),
                })),
            };
            layers.push(HostLayer {
                input_norm: Norm::new(&l.input_norm)?,
                attn,
                post_norm: Norm::new(&l.post_norm)?,
                ffn,
                window: l.window,
            });
        }
        if embed.rows != cfg.vocab_size || embed.cols != cfg.hidden_size {
            return Err(host_err("embedding", "size does not match vocab_size × hidden_size"));
        }
        Ok(Self {
            embed,
            layers,
            norm: Norm::new(&m.norm)?,
            lm_head: HostLinear::new(&m.lm_head)?,
            pool: None,
            decode_weight_bytes: m.decode_weight_bytes(),
            id: NEXT_MODEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cfg,
        })
    }

    /// Runs this model's forwards on a dedicated pool of `threads` threads (default: the global
    /// rayon pool, see `hearth_backend::set_cpu_threads`). The pool's workers spin instead of
    /// sleeping while a forward is in flight (and for a few ms after), so the many short
    /// parallel regions of a decode step start without wake-up latency; they park when idle.
    ///
    /// ```no_run
    /// # use hearth_models::{CausalLm, host::HostModel};
    /// # let model = CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// let host = HostModel::from_model(&model)?.with_threads(2)?;
    /// assert_eq!(host.threads(), 2);
    /// # Ok::<(), hearth_models::ModelError>(())
    /// ```
    pub fn with_threads(mut self, threads: usize) -> Result<Self, ModelError> {
        let pool = pool::SpinPool::new(threads).map_err(|e| host_err("threads", e))?;
        self.pool = Some(Arc::new(pool));
        Ok(self)
    }

    /// Runs `f` on this model's pool (see [`Self::with_threads`]; without one, on the current
    /// rayon pool): forwards called inside `f`, e.g. a whole decode loop, then run without a
    /// hand-off to the pool per call (which costs a wake-up, and rayon's injector one small
    /// allocation per 63 calls).
    ///
    /// ```no_run
    /// # use hearth_models::{CausalLm, ForwardOptions, host::HostModel};
    /// # let model = CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// let host = HostModel::from_model(&model)?.with_threads(2)?;
    /// let mut s = host.new_session(1, Some(64));
    /// let opts = ForwardOptions { last_only: true, ..Default::default() };
    /// host.install(|| -> Result<(), hearth_models::ModelError> {
    ///     let mut tok = 1;
    ///     for _ in 0..16 {
    ///         let out = host.forward(&[vec![tok]], &mut s, opts)?;
    ///         tok = out.logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    ///     }
    ///     Ok(())
    /// })?;
    /// # Ok::<(), hearth_models::ModelError>(())
    /// ```
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.run(f)
    }

    /// Threads the forward runs on.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.threads())
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Bytes of weights one decode step reads (as [`CausalLm::decode_weight_bytes`]).
    pub fn decode_weight_bytes(&self) -> usize {
        self.decode_weight_bytes
    }

    /// Per-layer expert load statistics (`None` for dense layers); shared with the
    /// [`CausalLm`] this model was built from.
    pub fn moe_stats(&self) -> Vec<Option<LoadStats>> {
        self.layers
            .iter()
            .map(|l| match &l.ffn {
                HostFfn::Moe(m) => Some(m.stats.lock().expect("stats lock").clone()),
                HostFfn::Dense(_) => None,
            })
            .collect()
    }

    /// A session (KV cache, RoPE table, scratch) for `rows` sequences of up to `capacity` tokens
    /// (`None` = `max_position_embeddings`). Cache memory is reserved now and touched as it fills.
    pub fn new_session(&self, rows: usize, capacity: Option<usize>) -> HostSession {
        let cap = capacity.unwrap_or(self.cfg.max_position_embeddings);
        let kv = self
            .layers
            .iter()
            .map(|l| {
                let (heads, dk, dv) = l.attn.kv_shape();
                LayerKv {
                    k: vec![0.0; rows * heads * cap * dk],
                    v: vec![0.0; rows * heads * cap * dv],
                    heads,
                    dk,
                    dv,
                    cap,
                }
            })
            .collect();
        let half = self.cfg.rope.dim / 2;
        HostSession {
            model: self.id,
            rows,
            capacity: cap,
            lens: vec![0; rows],
            kv,
            rope: RopeCache {
                half,
                cos: Vec::with_capacity(cap * half),
                sin: Vec::with_capacity(cap * half),
                filled: 0,
                table: None,
                chunk_cos: Vec::new(),
                chunk_sin: Vec::new(),
                use_chunk: false,
            },
            sc: Scratch::default(),
            logits: Vec::new(),
            logits_dims: [0; 3],
            hidden: Vec::new(),
            hidden_count: 0,
        }
    }

    /// Runs only the packed matrix–vector products of one decode step, one after another on
    /// dummy activations: every projection, the first `top_k` experts (plus shared experts) of
    /// each MoE layer, the LM head. Its time is what the kernels alone need per token, the
    /// yardstick for the rest of the step (`hearth bench` reports both).
    ///
    /// ```no_run
    /// # use hearth_models::{CausalLm, host::HostModel};
    /// # let model = CausalLm::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// let host = HostModel::from_model(&model)?;
    /// let mut s = host.new_session(1, Some(1));
    /// let t = std::time::Instant::now();
    /// host.kernels_only_step(&mut s)?;
    /// println!("kernels: {:?} per token", t.elapsed());
    /// # Ok::<(), hearth_models::ModelError>(())
    /// ```
    pub fn kernels_only_step(&self, s: &mut HostSession) -> Result<(), ModelError> {
        self.check_session(s)?;
        self.run(|| {
            let sc = &mut s.sc;
            let mut lins: Vec<&HostLinear> = Vec::new();
            for l in &self.layers {
                match &l.attn {
                    HostAttn::Mha(a) => lins.extend([&a.q, &a.k, &a.v, &a.o]),
                    HostAttn::Mla(a) => {
                        lins.extend(a.q_direct.iter());
                        if let Some((qa, _, qb)) = &a.q_lora {
                            lins.extend([qa, qb]);
                        }
                        lins.extend([&a.kv_a, &a.o]);
                    }
                }
                match &l.ffn {
                    HostFfn::Dense(m) => lins.extend([&m.gate, &m.up, &m.down]),
                    HostFfn::Moe(m) => {
                        lins.push(&m.gate);
                        for e in m.experts.iter().take(m.spec.top_k).chain(m.shared.iter()) {
                            lins.extend([&e.gate, &e.up, &e.down]);
                        }
                        lins.extend(m.shared_gate.iter());
                    }
                }
            }
            lins.push(&self.lm_head);
            let widest = lins.iter().map(|l| l.rows().max(l.cols())).max().unwrap_or(0);
            let x = grow(&mut sc.x, widest);
            x.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = ((i % 7) as f32 - 3.0) * 0.1);
            let y = grow(&mut sc.o, widest);
            for l in lins {
                l.forward(&sc.x[..l.cols()], 1, y)?;
            }
            Ok(())
        })
    }

    fn check_session(&self, s: &HostSession) -> Result<(), ModelError> {
        let fits = s.model == self.id
            && s.kv.len() == self.layers.len()
            && s.kv
                .iter()
                .zip(&self.layers)
                .all(|(kv, l)| (kv.heads, kv.dk, kv.dv) == l.attn.kv_shape())
            && s.rope.half == self.cfg.rope.dim / 2;
        if fits {
            Ok(())
        } else {
            Err(host_err("session", "this session was created by a different model"))
        }
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            // run the whole step on a pool worker: nested parallel loops then fork locally
            None => rayon::scope(|_| f()),
        }
    }

    /// Runs one chunk, exactly like [`CausalLm::forward`]: `tokens[b]` are the next tokens of
    /// session row `b` (rows may differ in length and position). Logits are `[B, T, vocab]`
    /// (padding slots of shorter rows are zero) or `[B, 1, vocab]` with `last_only`; hidden states
    /// (if asked for) are `num_layers + 1` tensors `[B, T, hidden]`, the last after the final norm.
    /// Advances the session. Allocates nothing once the session has seen a chunk this large.
    pub fn forward<'s>(
        &self,
        tokens: &[Vec<u32>],
        s: &'s mut HostSession,
        opts: ForwardOptions,
    ) -> Result<HostOutput<'s>, ModelError> {
        self.check_session(s)?;
        if tokens.is_empty() || tokens.iter().any(Vec::is_empty) {
            return Err(ModelError::EmptyInput(
                "every batch row needs at least one token".into(),
            ));
        }
        for row in tokens {
            if let Some((position, &id)) = row
                .iter()
                .enumerate()
                .find(|(_, id)| **id as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    position,
                    vocab: self.cfg.vocab_size,
                });
            }
        }
        if tokens.len() != s.rows {
            return Err(CacheError::BatchMismatch {
                expected: s.rows,
                got: tokens.len(),
            }
            .into());
        }
        for (row, (t, &p)) in tokens.iter().zip(&s.lens).enumerate() {
            if p + t.len() > s.capacity {
                return Err(CacheError::Full {
                    row,
                    needed: p + t.len(),
                    capacity: s.capacity,
                }
                .into());
            }
        }
        self.run(|| self.forward_inner(tokens, s, opts))?;
        Ok(HostOutput {
            logits: &mut s.logits[..s.logits_dims.iter().product::<usize>()],
            dims: s.logits_dims,
            hidden: &s.hidden,
            hidden_count: s.hidden_count,
        })
    }

    fn forward_inner(&self, tokens: &[Vec<u32>], s: &mut HostSession, opts: ForwardOptions) -> Result<(), ModelError> {
        let hid = self.cfg.hidden_size;
        let (b, t) = (tokens.len(), tokens.iter().map(Vec::len).max().unwrap_or(0));
        let HostSession {
            lens,
            kv,
            rope: rope_cache,
            sc,
            logits,
            logits_dims,
            hidden,
            hidden_count,
            ..
        } = s;
        sc.tok_row.clear();
        sc.tok_pos.clear();
        let mut key_len = 0;
        for (r, row) in tokens.iter().enumerate() {
            for j in 0..row.len() {
                sc.tok_row.push(r);
                sc.tok_pos.push(lens[r] + j);
            }
            key_len = key_len.max(lens[r] + row.len());
        }
        let n = sc.tok_row.len();
        rope_cache.prepare(&self.cfg, key_len, &sc.tok_pos)?;

        let x = grow(&mut sc.x, n * hid);
        for (xr, &id) in x.chunks_exact_mut(hid).zip(tokens.iter().flatten()) {
            self.embed.row_f32(id as usize, xr);
        }
        let n_layers = self.layers.len();
        *hidden_count = 0;
        if opts.hidden_states {
            let len = (n_layers + 1) * b * t * hid;
            hidden.clear();
            hidden.resize(len, 0.0);
            *hidden_count = n_layers + 1;
            put_padded(&mut hidden[..b * t * hid], x, tokens, t, hid);
        }
        {
            let h = grow(&mut sc.h, n * hid);
            let w = self.layers.first().map_or(&self.norm, |l| &l.input_norm);
            for (xr, hr) in sc.x[..n * hid].chunks_exact(hid).zip(h.chunks_exact_mut(hid)) {
                rms_norm(xr, &w.w, w.eps, hr);
            }
        }
        for (li, layer) in self.layers.iter().enumerate() {
            grow(&mut sc.o, n * hid);
            match &layer.attn {
                HostAttn::Mha(a) => self.mha(a, &mut kv[li], layer.window, n, sc, rope_cache)?,
                HostAttn::Mla(a) => self.mla(a, &mut kv[li], layer.window, n, sc, rope_cache)?,
            }
            fused_add_norm(
                &mut sc.x[..n * hid],
                &sc.o[..n * hid],
                &layer.post_norm,
                &mut sc.h[..n * hid],
                hid,
            );
            match &layer.ffn {
                HostFfn::Dense(m) => {
                    let i = m.inter();
                    grow(&mut sc.g, n * i);
                    grow(&mut sc.u, n * i);
                    m.forward(&sc.h[..n * hid], n, &mut sc.g, &mut sc.u, &mut sc.o[..n * hid])?;
                }
                HostFfn::Moe(m) => self.moe(m, li, n, sc)?,
            }
            let next = self.layers.get(li + 1).map_or(&self.norm, |l| &l.input_norm);
            fused_add_norm(&mut sc.x[..n * hid], &sc.o[..n * hid], next, &mut sc.h[..n * hid], hid);
            if opts.hidden_states && li + 1 != n_layers {
                let at = (li + 1) * b * t * hid;
                put_padded(&mut hidden[at..at + b * t * hid], &sc.x[..n * hid], tokens, t, hid);
            }
        }
        for (len, row) in lens.iter_mut().zip(tokens) {
            *len += row.len();
        }
        if opts.hidden_states {
            let at = n_layers * b * t * hid;
            put_padded(&mut hidden[at..at + b * t * hid], &sc.h[..n * hid], tokens, t, hid);
        }
        let v = self.cfg.vocab_size;
        if opts.last_only {
            let xl: &[f32] = if n == b {
                &sc.h[..n * hid]
            } else {
                let last = grow(&mut sc.last, b * hid);
                let mut end = 0;
                for (r, row) in tokens.iter().enumerate() {
                    end += row.len();
                    last[r * hid..(r + 1) * hid].copy_from_slice(&sc.h[(end - 1) * hid..end * hid]);
                }
                &sc.last[..b * hid]
            };
            let out = grow(logits, b * v);
            self.lm_head.forward(xl, b, out)?;
            *logits_dims = [b, 1, v];
        } else {
            let out = grow(logits, b * t * v);
            if n == b * t {
                self.lm_head.forward(&sc.h[..n * hid], n, out)?;
            } else {
                let mut off = 0;
                for (r, row) in tokens.iter().enumerate() {
                    let nr = row.len();
                    let dst = &mut out[r * t * v..(r + 1) * t * v];
                    self.lm_head
                        .forward(&sc.h[off * hid..(off + nr) * hid], nr, &mut dst[..nr * v])?;
                    dst[nr * v..].fill(0.0);
                    off += nr;
                }
            }
            *logits_dims = [b, t, v];
        }
        Ok(())
    }

    fn mha(
        &self,
        a: &HostMha,
        kv: &mut LayerKv,
        window: Option<usize>,
        n: usize,
        sc: &mut Scratch,
        rc: &RopeCache,
    ) -> Result<(), ModelError> {
        let (h, hkv, d) = (a.heads, a.kv_heads, a.head_dim);
        let hid = a.q.cols();
        let hn = &sc.h[..n * hid];
        let q = grow(&mut sc.q, n * h * d);
        let k = grow(&mut sc.k, n * hkv * d);
        let v = grow(&mut sc.v, n * hkv * d);
        forward_many([(&a.q, &mut *q), (&a.k, &mut *k), (&a.v, &mut *v)], hn, n)?;
        match (a.qk_norm, &a.q_norm, &a.k_norm) {
            (QkNorm::Full, Some(qn), Some(kn)) => {
                q.chunks_exact_mut(h * d)
                    .for_each(|r| rms_norm_in_place(r, &qn.w, qn.eps));
                k.chunks_exact_mut(hkv * d)
                    .for_each(|r| rms_norm_in_place(r, &kn.w, kn.eps));
            }
            (QkNorm::PerHead, Some(qn), Some(kn)) => {
                q.chunks_exact_mut(d).for_each(|r| rms_norm_in_place(r, &qn.w, qn.eps));
                k.chunks_exact_mut(d).for_each(|r| rms_norm_in_place(r, &kn.w, kn.eps));
            }
            (QkNorm::None, _, _) => {}
            _ => return Err(host_err("qk_norm", "q/k norm weights missing")),
        }
        let rd = a.rope_dim;
        let cap = kv.cap;
        for i in 0..n {
            let (cos, sin) = rc.at(i, sc.tok_pos[i]);
            for hd in q[i * h * d..(i + 1) * h * d].chunks_exact_mut(d) {
                rope(&mut hd[..rd], cos, sin, a.layout);
            }
            for hd in k[i * hkv * d..(i + 1) * hkv * d].chunks_exact_mut(d) {
                rope(&mut hd[..rd], cos, sin, a.layout);
            }
            let (r, p) = (sc.tok_row[i], sc.tok_pos[i]);
            for j in 0..hkv {
                let at = ((r * hkv + j) * cap + p) * d;
                kv.k[at..at + d].copy_from_slice(&k[(i * hkv + j) * d..(i * hkv + j + 1) * d]);
                kv.v[at..at + d].copy_from_slice(&v[(i * hkv + j) * d..(i * hkv + j + 1) * d]);
            }
        }
        let g = h / hkv;
        let (kc, vc) = (&kv.k, &kv.v);
        let (q, tok_row, tok_pos) = (&sc.q[..n * h * d], &sc.tok_row, &sc.tok_pos);
        let att = grow(&mut sc.att, n * h * d);
        let span = tok_pos[..n].iter().copied().max().unwrap_or(0) + 1;
        let keys_read = window.map_or(span, |w| w.min(span));
        let scale = a.scale;
        // one task per (token, KV head): the group's query heads read each key once
        let (gs, per_kv) = if g <= MAX_GROUP { (g, hkv) } else { (1, h) };
        for_each_chunk(att, gs * d, keys_read * d * 2 * gs, |idx, out| {
            let (i, j) = (idx / per_kv, idx % per_kv);
            let (r, p) = (tok_row[i], tok_pos[i]);
            let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
            let kvh = if gs == g { j } else { j / g };
            let base = (r * hkv + kvh) * cap * d;
            let (keys, vals) = (&kc[base..base + cap * d], &vc[base..base + cap * d]);
            let qs = &q[idx * gs * d..(idx + 1) * gs * d];
            attend_group(qs, keys, vals, d, d, lo, p + 1, scale, out);
        });
        a.o.forward(&sc.att[..n * h * d], n, &mut sc.o)
    }

    fn mla(
        &self,
        a: &HostMla,
        kv: &mut LayerKv,
        window: Option<usize>,
        n: usize,
        sc: &mut Scratch,
        rc: &RopeCache,
    ) -> Result<(), ModelError> {
        let MlaConfig {
            kv_lora_rank: r,
            qk_nope_head_dim: nope,
            qk_rope_head_dim: rd,
            v_head_dim: vd,
            ..
        } = a.dims;
        let h = a.heads;
        let qd = nope + rd;
        let hid = a.kv_a.cols();
        let hn = &sc.h[..n * hid];
        let q = grow(&mut sc.q, n * h * qd);
        let ckv = grow(&mut sc.k, n * (r + rd));
        let (rq, rk) = rayon::join(
            || match (&a.q_direct, &a.q_lora) {
                (Some(p), _) => p.forward(hn, n, q),
                (None, Some((pa, norm, pb))) => {
                    let qa = grow(&mut sc.qa, n * pa.rows());
                    pa.forward(hn, n, qa)?;
                    qa.chunks_exact_mut(pa.rows())
                        .for_each(|row| rms_norm_in_place(row, &norm.w, norm.eps));
                    pb.forward(qa, n, q)
                }
                (None, None) => Err(host_err("q_proj", "MLA layer without a query projection")),
            },
            || a.kv_a.forward(hn, n, ckv),
        );
        rq.and(rk)?;
        let cap = kv.cap;
        for i in 0..n {
            let (cos, sin) = rc.at(i, sc.tok_pos[i]);
            let row = &mut ckv[i * (r + rd)..(i + 1) * (r + rd)];
            let (lat, kr) = row.split_at_mut(r);
            rms_norm_in_place(lat, &a.kv_norm.w, a.kv_norm.eps);
            rope(kr, cos, sin, a.layout);
            let at = sc.tok_row[i] * cap + sc.tok_pos[i];
            kv.k[at * r..(at + 1) * r].copy_from_slice(lat);
            kv.v[at * rd..(at + 1) * rd].copy_from_slice(kr);
            for hd in q[i * h * qd..(i + 1) * h * qd].chunks_exact_mut(qd) {
                rope(&mut hd[nope..], cos, sin, a.layout);
            }
        }
        // absorbed query: q_lat[h] = q_nope[h] · W_uk[h]
        let q = &sc.q[..n * h * qd];
        let qlat = grow(&mut sc.qlat, n * h * r);
        for_each_chunk(qlat, r, nope * r, |idx, out| {
            let hh = idx % h;
            out.fill(0.0);
            let qn = &q[idx * qd..idx * qd + nope];
            let uk = &a.w_uk[hh * nope * r..(hh + 1) * nope * r];
            for (j, &c) in qn.iter().enumerate() {
                axpy(out, c, &uk[j * r..(j + 1) * r]);
            }
        });
        let (lat, krot) = (&kv.k, &kv.v);
        let (qlat, tok_row, tok_pos) = (&sc.qlat[..n * h * r], &sc.tok_row, &sc.tok_pos);
        let olat = grow(&mut sc.olat, n * h * r);
        let span = tok_pos[..n].iter().copied().max().unwrap_or(0) + 1;
        let scale = a.scale;
        for_each_chunk(
            olat,
            r,
            window.map_or(span, |w| w.min(span)) * (2 * r + rd),
            |idx, out| {
                let i = idx / h;
                let (row, p) = (tok_row[i], tok_pos[i]);
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let (lat, krot) = (
                    &lat[row * cap * r..(row + 1) * cap * r],
                    &krot[row * cap * rd..(row + 1) * cap * rd],
                );
                let (ql, qr) = (&qlat[idx * r..(idx + 1) * r], &q[idx * qd + nope..(idx + 1) * qd]);
                online_softmax(
                    lo,
                    p + 1,
                    out,
                    |s| (dot(ql, &lat[s * r..(s + 1) * r]) + dot(qr, &krot[s * rd..(s + 1) * rd])) * scale,
                    |s| &lat[s * r..(s + 1) * r],
                );
            },
        );
        // values: o[h] = o_lat[h] · W_uv[h]
        let olat = &sc.olat[..n * h * r];
        let att = grow(&mut sc.att, n * h * vd);
        for_each_chunk(att, vd, r * vd, |idx, out| {
            let hh = idx % h;
            out.fill(0.0);
            let uv = &a.w_uv[hh * r * vd..(hh + 1) * r * vd];
            for (c, &w) in olat[idx * r..(idx + 1) * r].iter().enumerate() {
                axpy(out, w, &uv[c * vd..(c + 1) * vd]);
            }
        });
        a.o.forward(&sc.att[..n * h * vd], n, &mut sc.o)
    }

    fn moe(&self, m: &HostMoe, layer: usize, n: usize, sc: &mut Scratch) -> Result<(), ModelError> {
        let hid = m.gate.cols();
        let ne = m.experts.len();
        let hn = &sc.h[..n * hid];
        let router = grow(&mut sc.router, n * ne);
        m.gate.forward(hn, n, router)?;
        let routing = m
            .spec
            .route_into(router, n, m.correction_bias.as_deref(), &mut sc.routing)
            .map_err(|source| ModelError::Moe { layer, source })?;
        let counts = grow(&mut sc.counts, ne);
        counts.fill(0);
        for &e in routing.topk_experts() {
            counts[e] += 1;
        }
        m.stats
            .lock()
            .expect("stats lock")
            .record_counts(counts)
            .map_err(|source| ModelError::Moe { layer, source })?;
        sc.groups.clear();
        sc.assign.clear();
        for g in routing.expert_groups() {
            let start = sc.assign.len();
            sc.assign
                .extend(g.tokens.iter().copied().zip(g.weights.iter().copied()));
            sc.groups.push((g.expert, start, sc.assign.len()));
        }
        let total = sc.assign.len();
        let ei = m.experts.first().map_or(0, HostMlp::inter);
        let xg = grow(&mut sc.xg, total * hid);
        for (xr, &(tok, _)) in xg.chunks_exact_mut(hid).zip(&sc.assign) {
            xr.copy_from_slice(&hn[tok * hid..(tok + 1) * hid]);
        }
        grow(&mut sc.hg, total * ei);
        grow(&mut sc.ug, total * ei);
        grow(&mut sc.yg, total * hid);
        let si = m.shared.as_ref().map_or(0, HostMlp::inter);
        grow(&mut sc.g, n * si);
        grow(&mut sc.u, n * si);
        grow(&mut sc.so, n * hid);
        grow(&mut sc.sgate, n);
        if n == 1 && total <= MAX_FUSED_EXPERTS && m.fusable() {
            moe_decode_fused(m, sc, total, hid, ei)?;
        } else {
            self.moe_grouped(m, n, hid, ei, total, sc)?;
        }
        let out = &mut sc.o[..n * hid];
        out.fill(0.0);
        for (yr, &(tok, w)) in sc.yg[..total * hid].chunks_exact(hid).zip(&sc.assign) {
            axpy(&mut out[tok * hid..(tok + 1) * hid], w, yr);
        }
        if m.shared.is_some() {
            for (o, s) in out.iter_mut().zip(&sc.so[..n * hid]) {
                *o += s;
            }
        }
        Ok(())
    }

    /// The MoE block's experts for a chunk of tokens: each routed expert on its gathered rows
    /// (experts in parallel, each a few parallel products) and the shared expert beside them.
    fn moe_grouped(
        &self,
        m: &HostMoe,
        n: usize,
        hid: usize,
        ei: usize,
        total: usize,
        sc: &mut Scratch,
    ) -> Result<(), ModelError> {
        let hn = &sc.h[..n * hid];
        let (routed, shared) = rayon::join(
            || {
                run_groups(
                    &m.experts,
                    &sc.groups,
                    0,
                    &sc.xg[..total * hid],
                    &mut sc.hg[..total * ei],
                    &mut sc.ug[..total * ei],
                    &mut sc.yg[..total * hid],
                )
            },
            || -> Result<(), ModelError> {
                if let Some(sh) = &m.shared {
                    sh.forward(hn, n, &mut sc.g, &mut sc.u, &mut sc.so)?;
                    if let Some(gate) = &m.shared_gate {
                        gate.forward(hn, n, &mut sc.sgate)?;
                        for (row, &gl) in sc.so[..n * hid].chunks_exact_mut(hid).zip(&sc.sgate[..n]) {
                            let s = 1.0 / (1.0 + (-gl).exp());
                            row.iter_mut().for_each(|v| *v *= s);
                        }
                    }
                }
                Ok(())
            },
        );
        routed.and(shared)
    }
}

/// Routed experts per token up to which a decode step runs the fused path.
const MAX_FUSED_EXPERTS: usize = 16;

impl HostMoe {
    /// Whether [`moe_decode_fused`] applies: no biases in the experts.
    fn fusable(&self) -> bool {
        let plain = |e: &HostMlp| e.gate.bias.is_none() && e.up.bias.is_none() && e.down.bias.is_none();
        self.experts.iter().all(plain)
            && self.shared.as_ref().is_none_or(plain)
            && self.shared_gate.as_ref().is_none_or(|g| g.bias.is_none())
    }
}

/// One token's MoE experts in two parallel passes instead of a few per expert: the gate and
/// up projections of every routed expert (and of the shared expert and its gate) on the one
/// input (`matvec_many`), SwiGLU, then every down projection on its own input (`matvec_each`).
/// The same products as [`HostModel::moe_grouped`], bit for bit.
fn moe_decode_fused(m: &HostMoe, sc: &mut Scratch, total: usize, hid: usize, ei: usize) -> Result<(), ModelError> {
    let err = |e| host_err("packed matvec", e);
    let hn = &sc.h[..hid];
    let si = m.shared.as_ref().map_or(0, HostMlp::inter);
    {
        let dummy = || kernels::MatvecJob {
            fmt: WeightFormat::F32,
            weight: &[],
            y: &mut [],
        };
        let mut jobs: [kernels::MatvecJob<'_>; 2 * MAX_FUSED_EXPERTS + 3] = std::array::from_fn(|_| dummy());
        let mut c = 0;
        fn job<'a>(l: &'a HostLinear, y: &'a mut [f32]) -> kernels::MatvecJob<'a> {
            kernels::MatvecJob {
                fmt: l.w.format,
                weight: &l.w.bytes,
                y,
            }
        }
        let (mut hs, mut us) = (
            sc.hg[..total * ei].chunks_exact_mut(ei),
            sc.ug[..total * ei].chunks_exact_mut(ei),
        );
        for &(e, _, _) in &sc.groups {
            let x = &m.experts[e];
            jobs[c] = job(&x.gate, hs.next().expect("one row per routed expert"));
            jobs[c + 1] = job(&x.up, us.next().expect("one row per routed expert"));
            c += 2;
        }
        if let Some(sh) = &m.shared {
            jobs[c] = job(&sh.gate, &mut sc.g[..si]);
            jobs[c + 1] = job(&sh.up, &mut sc.u[..si]);
            c += 2;
            if let Some(g) = &m.shared_gate {
                jobs[c] = job(g, &mut sc.sgate[..1]);
                c += 1;
            }
        }
        kernels::matvec_many(&mut jobs[..c], hid, hn).map_err(err)?;
    }
    silu_mul(&mut sc.hg[..total * ei], &sc.ug[..total * ei]);
    if si > 0 {
        silu_mul(&mut sc.g[..si], &sc.u[..si]);
    }
    {
        let dummy = || kernels::MatvecInputJob {
            fmt: WeightFormat::F32,
            weight: &[],
            x: &[],
            y: &mut [],
        };
        let mut jobs: [kernels::MatvecInputJob<'_>; MAX_FUSED_EXPERTS + 1] = std::array::from_fn(|_| dummy());
        let mut c = 0;
        for ((&(e, _, _), x), y) in sc
            .groups
            .iter()
            .zip(sc.hg[..total * ei].chunks_exact(ei))
            .zip(sc.yg[..total * hid].chunks_exact_mut(hid))
        {
            let d = &m.experts[e].down;
            jobs[c] = kernels::MatvecInputJob {
                fmt: d.w.format,
                weight: &d.w.bytes,
                x,
                y,
            };
            c += 1;
        }
        match &m.shared {
            // one pass when the shared expert's width matches (its down reads `si` values)
            Some(sh) if si == ei => {
                jobs[c] = kernels::MatvecInputJob {
                    fmt: sh.down.w.format,
                    weight: &sh.down.w.bytes,
                    x: &sc.g[..si],
                    y: &mut sc.so[..hid],
                };
                kernels::matvec_each(&mut jobs[..c + 1], ei).map_err(err)?;
            }
            Some(sh) => {
                kernels::matvec_each(&mut jobs[..c], ei).map_err(err)?;
                sh.down.forward(&sc.g[..si], 1, &mut sc.so[..hid])?;
            }
            None => kernels::matvec_each(&mut jobs[..c], ei).map_err(err)?,
        }
    }
    if let (Some(_), Some(_)) = (&m.shared, &m.shared_gate) {
        let s = 1.0 / (1.0 + (-sc.sgate[0]).exp());
        sc.so[..hid].iter_mut().for_each(|v| *v *= s);
    }
    Ok(())
}

/// Runs the experts of `groups` (rows `groups[0].1 - base ..` of the gathered buffers) in
/// parallel by recursive halving; each expert's MLP runs on its rows.
fn run_groups(
    experts: &[HostMlp],
    groups: &[(usize, usize, usize)],
    base: usize,
    xg: &[f32],
    hg: &mut [f32],
    ug: &mut [f32],
    yg: &mut [f32],
) -> Result<(), ModelError> {
    match groups {
        [] => Ok(()),
        [(e, a, b)] => experts[*e].forward(xg, b - a, hg, ug, yg),
        _ => {
            let mid = groups.len() / 2;
            let split = groups[mid].1 - base;
            let hid = xg.len() / (groups[groups.len() - 1].2 - base);
            let ei = hg.len() / (groups[groups.len() - 1].2 - base);
            let (xa, xb) = xg.split_at(split * hid);
            let (ha, hb) = hg.split_at_mut(split * ei);
            let (ua, ub) = ug.split_at_mut(split * ei);
            let (ya, yb) = yg.split_at_mut(split * hid);
            let (ra, rb) = rayon::join(
                || run_groups(experts, &groups[..mid], base, xa, ha, ua, ya),
                || run_groups(experts, &groups[mid..], groups[mid].1, xb, hb, ub, yb),
            );
            ra.and(rb)
        }
    }
}

/// `x += delta; h = RMSNorm(x)` row by row.
fn fused_add_norm(x: &mut [f32], delta: &[f32], norm: &Norm, h: &mut [f32], hid: usize) {
    for ((xr, dr), hr) in x
        .chunks_exact_mut(hid)
        .zip(delta.chunks_exact(hid))
        .zip(h.chunks_exact_mut(hid))
    {
        add_rms_norm(xr, dr, &norm.w, norm.eps, hr);
    }
}

/// Copies compact token rows `src` (`Σ len` rows) into the padded `[B, T, hid]` layout `dst`.
fn put_padded(dst: &mut [f32], src: &[f32], tokens: &[Vec<u32>], t: usize, hid: usize) {
    let mut off = 0;
    for (r, row) in tokens.iter().enumerate() {
        let nr = row.len();
        dst[r * t * hid..(r * t + nr) * hid].copy_from_slice(&src[off * hid..(off + nr) * hid]);
        off += nr;
    }
}

/// Calls `f(index, chunk)` for every `chunk`-sized piece of `out`, in parallel when the total
/// work (`cost` multiply-adds per piece) is worth it.
fn for_each_chunk(out: &mut [f32], chunk: usize, cost: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if chunk == 0 {
        return;
    }
    let tasks = out.len() / chunk;
    if rayon::current_num_threads() <= 1 || tasks * cost < PAR_MIN_WORK {
        out.chunks_exact_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        let min = (PAR_MIN_WORK / 4 / cost.max(1)).max(1);
        out.par_chunks_exact_mut(chunk)
            .enumerate()
            .with_min_len(min)
            .for_each(|(i, c)| f(i, c));
    }
}

/// One layer's cache: `[rows, heads, capacity, dk]` keys and `[rows, heads, capacity, dv]` values
/// (an MLA layer: one "head" of latents and one of RoPE keys).
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    dk: usize,
    dv: usize,
    cap: usize,
}

/// cos/sin per position of the model's RoPE table, filled up to the longest sequence so far.
struct RopeCache {
    half: usize,
    /// `[filled, half]`, reserved for the session capacity.
    cos: Vec<f32>,
    sin: Vec<f32>,
    filled: usize,
    table: Option<hearth_attention::RopeTable>,
    /// Dynamic NTK past its original context: per-token values of this chunk.
    chunk_cos: Vec<f32>,
    chunk_sin: Vec<f32>,
    use_chunk: bool,
}

impl RopeCache {
    fn prepare(&mut self, cfg: &ModelConfig, key_len: usize, tok_pos: &[usize]) -> Result<(), ModelError> {
        let err = |e: hearth_attention::rope::RopeError| ModelError::Config {
            file: "config.json".into(),
            field: "rope_scaling".into(),
            reason: e.to_string(),
        };
        if let RopeScaling::Dynamic { original_max, .. } = cfg.rope.scaling
            && key_len > original_max
        {
            // dynamic NTK recomputes the frequencies from the current length, as transformers does
            let table = cfg.rope.table(key_len).map_err(err)?;
            let h = self.half;
            grow(&mut self.chunk_cos, tok_pos.len() * h);
            grow(&mut self.chunk_sin, tok_pos.len() * h);
            for (i, &p) in tok_pos.iter().enumerate() {
                for (j, f) in table.inv_freq.iter().enumerate() {
                    let a = p as f64 * f;
                    self.chunk_cos[i * h + j] = (a.cos() * table.attention_scaling) as f32;
                    self.chunk_sin[i * h + j] = (a.sin() * table.attention_scaling) as f32;
                }
            }
            self.use_chunk = true;
            return Ok(());
        }
        self.use_chunk = false;
        if self.table.is_none() {
            self.table = Some(cfg.rope.table(0).map_err(err)?);
        }
        let table = self.table.as_ref().expect("table set above");
        while self.filled < key_len {
            let p = self.filled as f64;
            for f in &table.inv_freq {
                self.cos.push(((p * f).cos() * table.attention_scaling) as f32);
                self.sin.push(((p * f).sin() * table.attention_scaling) as f32);
            }
            self.filled += 1;
        }
        Ok(())
    }

    /// cos and sin (`half` each) for token `i` of the chunk at absolute position `pos`.
    fn at(&self, i: usize, pos: usize) -> (&[f32], &[f32]) {
        let h = self.half;
        if self.use_chunk {
            (&self.chunk_cos[i * h..(i + 1) * h], &self.chunk_sin[i * h..(i + 1) * h])
        } else {
            (&self.cos[pos * h..(pos + 1) * h], &self.sin[pos * h..(pos + 1) * h])
        }
    }
}

/// Reused buffers of one session; each grows to the largest chunk and stays.
#[derive(Default)]
struct Scratch {
    tok_row: Vec<usize>,
    tok_pos: Vec<usize>,
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    last: Vec<f32>,
    // MLA
    qa: Vec<f32>,
    qlat: Vec<f32>,
    olat: Vec<f32>,
    // MoE
    router: Vec<f32>,
    routing: hearth_moe::RoutingBuffers,
    counts: Vec<u64>,
    groups: Vec<(usize, usize, usize)>,
    assign: Vec<(usize, f32)>,
    xg: Vec<f32>,
    hg: Vec<f32>,
    ug: Vec<f32>,
    yg: Vec<f32>,
    so: Vec<f32>,
    sgate: Vec<f32>,
}

/// The per-batch state of a [`HostModel`]: KV cache, RoPE table, scratch and output buffers.
/// Create with [`HostModel::new_session`]; rows may sit at different positions.
pub struct HostSession {
    model: u64,
    rows: usize,
    capacity: usize,
    lens: Vec<usize>,
    kv: Vec<LayerKv>,
    rope: RopeCache,
    sc: Scratch,
    logits: Vec<f32>,
    logits_dims: [usize; 3],
    hidden: Vec<f32>,
    hidden_count: usize,
}

impl HostSession {
    /// Sequences (batch rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions each row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens cached for `row` (0 for a row that does not exist).
    pub fn seq_len(&self, row: usize) -> usize {
        self.lens.get(row).copied().unwrap_or(0)
    }

    /// Forgets a row's tokens so it can serve a new sequence.
    pub fn reset_row(&mut self, row: usize) {
        if let Some(l) = self.lens.get_mut(row) {
            *l = 0;
        }
    }

    /// Bytes held by the KV cache (reserved; pages are touched as the cache fills).
    pub fn cache_bytes(&self) -> usize {
        self.kv.iter().map(|l| (l.k.len() + l.v.len()) * 4).sum()
    }
}

/// What [`HostModel::forward`] returns: views into the session's buffers.
pub struct HostOutput<'s> {
    /// `[B, T, vocab]` (or `[B, 1, vocab]` with `last_only`), row-major; writable so that
    /// samplers can process it in place.
    pub logits: &'s mut [f32],
    /// Shape of `logits`.
    pub dims: [usize; 3],
    hidden: &'s [f32],
    hidden_count: usize,
}

impl HostOutput<'_> {
    /// Number of hidden states returned (`num_layers + 1` when asked for, else 0).
    pub fn num_hidden_states(&self) -> usize {
        self.hidden_count
    }

    /// Hidden state `l` as `[B, T, hidden]` (0 = embeddings; the last is after the final norm).
    pub fn hidden_state(&self, l: usize) -> Option<&[f32]> {
        if l >= self.hidden_count {
            return None;
        }
        let per = self.hidden.len() / self.hidden_count;
        Some(&self.hidden[l * per..(l + 1) * per])
    }
}
