//! One interface over both forwards: burn's tensor ops ([`CausalLm::forward`], every backend,
//! the reference) and the host forward ([`HostModel`], CPU). Generation loops and benchmarks
//! hold a [`Decoder`] and a [`DecodeSession`] and never care which one runs.

use super::{HostModel, HostSession, host_err};
use crate::config::ModelConfig;
use crate::decoder::{CausalLm, ForwardOptions};
use crate::error::ModelError;
use hearth_attention::{ContiguousKvCache, KvCache};
use hearth_backend::HearthBackend;

/// Which forward runs a model.
///
/// ```no_run
/// use hearth_models::{CausalLm, ForwardOptions, host::{Decoder, HostModel}};
/// type B = hearth_backend::Cpu;
/// let model = CausalLm::<B>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
/// let host = HostModel::from_model(&model).unwrap();
/// for dec in [Decoder::Burn(&model), Decoder::Host(&host)] {
///     let mut s = dec.new_session(1, Some(32));
///     let logits = dec.forward(&[vec![1, 2]], &mut s, ForwardOptions { last_only: true, ..Default::default() }).unwrap();
///     assert_eq!(logits.data.len(), logits.vocab);
/// }
/// ```
pub enum Decoder<'m, B: HearthBackend> {
    /// burn tensor ops on `B`'s device.
    Burn(&'m CausalLm<B>),
    /// The fused host forward.
    Host(&'m HostModel),
}

impl<B: HearthBackend> Clone for Decoder<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: HearthBackend> Copy for Decoder<'_, B> {}

/// The KV cache and buffers of one [`Decoder`].
pub enum DecodeSession<B: HearthBackend> {
    /// burn path: a device KV cache and the last logits copied to the host.
    Burn {
        /// The cache.
        cache: ContiguousKvCache<B>,
        /// Logits of the last forward.
        logits: Vec<f32>,
    },
    /// Host path.
    Host(Box<HostSession>),
}

/// Logits of one forward, `[rows, len, vocab]` row-major, in a buffer the session reuses.
pub struct Logits<'s> {
    /// The values (writable, so samplers can process them in place).
    pub data: &'s mut [f32],
    /// Batch rows.
    pub rows: usize,
    /// Positions per row (1 with `last_only`).
    pub len: usize,
    /// Vocabulary size.
    pub vocab: usize,
}

impl<B: HearthBackend> Decoder<'_, B> {
    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Decoder::Burn(m) => m.config(),
            Decoder::Host(m) => m.config(),
        }
    }

    /// Bytes of weights one decode step reads.
    pub fn decode_weight_bytes(&self) -> usize {
        match self {
            Decoder::Burn(m) => m.decode_weight_bytes(),
            Decoder::Host(m) => m.decode_weight_bytes(),
        }
    }

    /// Whether this is the host forward.
    pub fn is_host(&self) -> bool {
        matches!(self, Decoder::Host(_))
    }

    /// A fresh session for `rows` sequences of up to `capacity` tokens (`None` = the model's
    /// `max_position_embeddings`).
    pub fn new_session(&self, rows: usize, capacity: Option<usize>) -> DecodeSession<B> {
        match self {
            Decoder::Burn(m) => DecodeSession::Burn {
                cache: m.new_cache(rows, capacity),
                logits: Vec::new(),
            },
            Decoder::Host(m) => DecodeSession::Host(Box::new(m.new_session(rows, capacity))),
        }
    }

    /// Runs one chunk (as [`CausalLm::forward`]) and returns its logits. `opts.hidden_states`
    /// is ignored: use the model's own `forward` for hidden states.
    pub fn forward<'s>(
        &self,
        tokens: &[Vec<u32>],
        session: &'s mut DecodeSession<B>,
        opts: ForwardOptions,
    ) -> Result<Logits<'s>, ModelError> {
        let opts = ForwardOptions {
            hidden_states: false,
            ..opts
        };
        match (self, session) {
            (Decoder::Burn(m), DecodeSession::Burn { cache, logits }) => {
                let out = m.forward(tokens, cache, opts)?;
                let [rows, len, vocab] = out.logits.dims();
                *logits = out
                    .logits
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| host_err("logits", format!("{e:?}")))?;
                Ok(Logits {
                    data: logits,
                    rows,
                    len,
                    vocab,
                })
            }
            (Decoder::Host(m), DecodeSession::Host(s)) => {
                let out = m.forward(tokens, s, opts)?;
                let [rows, len, vocab] = out.dims;
                Ok(Logits {
                    data: out.logits,
                    rows,
                    len,
                    vocab,
                })
            }
            _ => Err(host_err("session", "the session was created by the other forward")),
        }
    }
}

impl<B: HearthBackend> Decoder<'_, B> {
    /// `steps` greedy decode steps of a one-row session after `first` (the token the last
    /// forward chose), calling `on_token` with each new token in order until it returns
    /// `false`; returns the tokens produced (`steps` of them unless stopped).
    ///
    /// On the burn forward every step's argmax stays on the device and feeds the next step
    /// there ([`CausalLm::forward_device_ids`]); step `n + 1` is enqueued *before* step `n`'s
    /// token is read back ([`HearthBackend::read_ints_later`]), so on a GPU the device works
    /// through step `n + 1` while the host reads token `n` and enqueues step `n + 2`, instead of
    /// idling between steps. So the session holds one token more than returned when stopped
    /// early (the step enqueued past the stop), and ties between equal logits are broken by the
    /// device's argmax. The host forward runs plain steps.
    ///
    /// Errors: those of [`Self::forward`]; NaN logits (a typed error naming the step); a
    /// session with more than one row ([`ModelError::EmptyInput`]).
    ///
    /// ```no_run
    /// use hearth_models::{CausalLm, host::Decoder};
    /// type B = hearth_backend::Cpu;
    /// let model = CausalLm::<B>::from_dir("ckpt".as_ref(), &Default::default()).unwrap();
    /// let dec = Decoder::Burn(&model);
    /// let mut s = dec.new_session(1, Some(64));
    /// let out = dec.greedy_steps(1, 16, &mut s, |_| true).unwrap();
    /// assert_eq!(out.len(), 16);
    /// ```
    pub fn greedy_steps(
        &self,
        first: u32,
        steps: usize,
        session: &mut DecodeSession<B>,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, ModelError> {
        let last = ForwardOptions {
            hidden_states: false,
            last_only: true,
        };
        let mut out = Vec::with_capacity(steps);
        if steps == 0 {
            return Ok(out);
        }
        match (self, session) {
            (Decoder::Burn(m), DecodeSession::Burn { cache, .. }) => {
                if cache.rows() != 1 {
                    return Err(ModelError::EmptyInput("greedy_steps runs one-row sessions".into()));
                }
                // [token, NaN flag] of the step's last logits, on the device
                let argmax = |l: burn::tensor::Tensor<B, 3>| {
                    let [rows, _, vocab] = l.dims();
                    B::argmax_rows(l.reshape([rows, vocab]))
                };
                let mut found = argmax(m.forward(&[vec![first]], cache, last)?.logits);
                let mut pending = B::read_ints_later(found.clone());
                for n in 0..steps {
                    // the next step first, fed on the device: it runs while token n comes back
                    let next = if n + 1 < steps {
                        let ids = found.clone().narrow(0, 0, 1);
                        Some(argmax(m.forward_device_ids(ids, cache, last)?.logits))
                    } else {
                        None
                    };
                    let got = pending.wait().map_err(|e| host_err("argmax", e))?;
                    let (tok, nan) = match got[..] {
                        [tok, nan] => (tok as u32, nan != 0),
                        _ => return Err(host_err("argmax", format!("{} values read back", got.len()))),
                    };
                    if nan {
                        return Err(host_err("logits", format!("NaN logits at decode step {n}")));
                    }
                    out.push(tok);
                    if !on_token(tok) {
                        break;
                    }
                    match next {
                        Some(nx) => {
                            pending = B::read_ints_later(nx.clone());
                            found = nx;
                        }
                        None => break,
                    }
                }
            }
            (dec, session) => {
                let mut tok = first;
                for _ in 0..steps {
                    let l = dec.forward(&[vec![tok]], session, last)?;
                    tok = host_argmax(l.data)?;
                    out.push(tok);
                    if !on_token(tok) {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The first index of the largest value; NaN is an error.
fn host_argmax(v: &[f32]) -> Result<u32, ModelError> {
    let mut best: Option<usize> = None;
    for (i, x) in v.iter().enumerate() {
        if x.is_nan() {
            return Err(host_err("logits", format!("NaN logit at token {i}")));
        }
        if best.is_none_or(|b| *x > v[b]) {
            best = Some(i);
        }
    }
    best.map(|b| b as u32).ok_or_else(|| host_err("logits", "empty logits"))
}

impl<B: HearthBackend> DecodeSession<B> {
    /// Positions each row can hold.
    pub fn capacity(&self) -> usize {
        match self {
            DecodeSession::Burn { cache, .. } => cache.capacity(),
            DecodeSession::Host(s) => s.capacity(),
        }
    }

    /// Tokens cached for `row`.
    pub fn seq_len(&self, row: usize) -> usize {
        match self {
            DecodeSession::Burn { cache, .. } if row < cache.rows() => cache.seq_len(row),
            DecodeSession::Burn { .. } => 0,
            DecodeSession::Host(s) => s.seq_len(row),
        }
    }

    /// Forgets a row's tokens so it can serve a new sequence.
    pub fn reset_row(&mut self, row: usize) {
        match self {
            DecodeSession::Burn { cache, .. } if row < cache.rows() => cache.reset_row(row),
            DecodeSession::Burn { .. } => {}
            DecodeSession::Host(s) => s.reset_row(row),
        }
    }
}
