//! The per-request [`Sampler`]: runs the processor chain and draws a token.

use std::collections::HashMap;

use crate::kernels::{self, CHUNK, fast_exp, rank};
use crate::{ProcessorKind, SampleError, SamplingParams, rng};

/// Result of one sampling step.
///
/// ```
/// use hearth_sample::{Sampler, SamplingParams};
/// let mut s = Sampler::new(SamplingParams { top_logprobs: 2, ..Default::default() }).unwrap();
/// let out = s.sample(&mut [0.0, 3.0, 1.0], &[], 0, 0).unwrap();
/// assert_eq!(out.token, 1);
/// assert_eq!(out.top_logprobs[0].0, 1);
/// assert!(out.logprob < 0.0 && (out.logprob - out.top_logprobs[0].1).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The drawn token id.
    pub token: u32,
    /// Natural-log probability of `token` under the processed distribution.
    pub logprob: f32,
    /// Up to `top_logprobs` most likely tokens after processing, best first (ties by lower id),
    /// with log-probabilities. Tokens removed by processing (`-inf`) are never listed, so the
    /// list can be shorter than requested.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Per-request sampler: validated parameters, incremental token counts and scratch buffers.
///
/// `sample` processes the logits in place (removed tokens become `-inf`) and draws a token.
/// The categorical draw uses the uniform number `philox4x32_10(key = seed, counter = step)`,
/// so it depends only on the seed, the step and the processed logits; never on batch
/// composition, call order or threads.
///
/// ```
/// use hearth_sample::{Sampler, SamplingParams};
/// let params = SamplingParams { temperature: 0.8, top_k: Some(2), seed: 1, ..Default::default() };
/// let mut a = Sampler::new(params.clone()).unwrap();
/// let mut b = Sampler::new(params).unwrap();
/// let logits = vec![0.5f32, 2.0, 1.9, -1.0];
/// let ta = a.sample(&mut logits.clone(), &[3, 1], 1, 5).unwrap().token;
/// let tb = b.sample(&mut logits.clone(), &[3, 1], 1, 5).unwrap().token;
/// assert_eq!(ta, tb);
/// assert!(ta == 1 || ta == 2); // top-k 2
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    order: Vec<ProcessorKind>,
    // Incremental history (only maintained when a penalty needs counts).
    history: Vec<u32>,
    hist_n_prompt: usize,
    all_counts: HashMap<u32, u32>,
    gen_counts: HashMap<u32, u32>,
    // Candidate state: when `has_cands`, `cands` holds every finite logit, sorted by rank,
    // and all other logits are -inf.
    has_cands: bool,
    cands: Vec<(f32, u32)>,
    // Scratch.
    exps: Vec<f32>,
    chunk_sums: Vec<f64>,
    tmp: Vec<(f32, u32)>,
    buckets: Vec<f64>,
}

const NB: usize = 1024;
/// Buckets per nat for the dense top-p histogram (8 per octave).
const BUCKET_SCALE: f32 = 8.0 / std::f32::consts::LN_2;

#[inline]
fn bucket(m: f32, l: f32) -> usize {
    (((m - l) * BUCKET_SCALE) as usize).min(NB - 1)
}

impl Sampler {
    /// Validate `params` and build a sampler for one request.
    ///
    /// ```
    /// use hearth_sample::{SampleError, Sampler, SamplingParams};
    /// assert!(Sampler::new(SamplingParams::default()).is_ok());
    /// let bad = SamplingParams { top_k: Some(0), ..Default::default() };
    /// assert_eq!(Sampler::new(bad).unwrap_err(), SampleError::InvalidTopK);
    /// ```
    pub fn new(params: SamplingParams) -> Result<Sampler, SampleError> {
        params.validate()?;
        let order = params.effective_order();
        Ok(Sampler {
            params,
            order,
            history: Vec::new(),
            hist_n_prompt: 0,
            all_counts: HashMap::new(),
            gen_counts: HashMap::new(),
            has_cands: false,
            cands: Vec::new(),
            exps: Vec::new(),
            chunk_sums: Vec::new(),
            tmp: Vec::new(),
            buckets: Vec::new(),
        })
    }

    /// The validated parameters.
    ///
    /// ```
    /// use hearth_sample::{Sampler, SamplingParams};
    /// let s = Sampler::new(SamplingParams { seed: 9, ..Default::default() }).unwrap();
    /// assert_eq!(s.params().seed, 9);
    /// ```
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Run the processor chain on `logits` in place without drawing a token.
    /// Removed tokens are set to `-inf`. Arguments as in [`Sampler::sample`].
    ///
    /// ```
    /// use hearth_sample::{Sampler, SamplingParams};
    /// let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: Some(2), ..Default::default() }).unwrap();
    /// let mut logits = [1.0f32, 3.0, 2.0, 0.0];
    /// s.process(&mut logits, &[], 0).unwrap();
    /// assert_eq!(logits, [f32::NEG_INFINITY, 3.0, 2.0, f32::NEG_INFINITY]);
    /// ```
    pub fn process(
        &mut self,
        logits: &mut [f32],
        prompt_and_generated: &[u32],
        n_prompt: usize,
    ) -> Result<(), SampleError> {
        self.has_cands = false;
        self.cands.clear();
        let m = kernels::checked_max(logits)?;
        if m == f32::NEG_INFINITY {
            return Err(SampleError::AllLogitsMasked);
        }
        let vocab = logits.len();
        self.check_ids(vocab, prompt_and_generated, n_prompt)?;
        self.update_history(prompt_and_generated, n_prompt);
        let greedy = self.params.is_greedy();
        for i in 0..self.order.len() {
            let kind = self.order[i];
            if greedy && kind.is_warper() {
                continue;
            }
            self.apply(kind, logits, prompt_and_generated, n_prompt);
        }
        if self.has_cands {
            if self.cands.is_empty() {
                return Err(SampleError::AllLogitsMasked);
            }
            if let Some(c) = self.cands.iter().find(|c| c.0 == f32::INFINITY) {
                return Err(SampleError::PositiveInfiniteLogit { index: c.1 as usize });
            }
        }
        Ok(())
    }

    /// Process `logits` in place (see [`Sampler::process`]) and draw a token.
    ///
    /// * `prompt_and_generated`: all token ids of this request so far; the first `n_prompt`
    ///   are the prompt.
    /// * `step`: index of the token being generated (0 for the first new token); together
    ///   with the seed it selects the random number.
    ///
    /// Greedy (`temperature == 0`) returns the arg-max (lowest id on ties).
    ///
    /// ```
    /// use hearth_sample::{Sampler, SamplingParams};
    /// // Repetition penalty 2 halves the seen token 0's logit: 3.0 -> 1.5 < 2.0.
    /// let mut s = Sampler::new(SamplingParams { repetition_penalty: Some(2.0), ..Default::default() }).unwrap();
    /// let out = s.sample(&mut [3.0, 2.0], &[0], 1, 0).unwrap();
    /// assert_eq!(out.token, 1);
    /// ```
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt_and_generated: &[u32],
        n_prompt: usize,
        step: u64,
    ) -> Result<Sampled, SampleError> {
        self.process(logits, prompt_and_generated, n_prompt)?;
        let greedy = self.params.is_greedy();
        let n_top = self.params.top_logprobs;
        let u = if greedy {
            0.0
        } else {
            rng::uniform(self.params.seed, step)
        };
        if self.has_cands {
            let m = self.cands[0].0;
            self.exps.clear();
            self.exps.extend(self.cands.iter().map(|c| fast_exp(c.0 - m)));
            let z: f64 = self.exps.iter().map(|&e| f64::from(e)).sum();
            let ln_z = z.ln();
            let pick = if greedy { 0 } else { walk(&self.exps, u * z) };
            let (l, token) = self.cands[pick];
            let lp = |l: f32| (f64::from(l - m) - ln_z) as f32;
            let top = self.cands.iter().take(n_top).map(|&(l, t)| (t, lp(l))).collect();
            return Ok(Sampled {
                token,
                logprob: lp(l),
                top_logprobs: top,
            });
        }
        let m = kernels::checked_max(logits)?;
        if m == f32::NEG_INFINITY {
            return Err(SampleError::AllLogitsMasked);
        }
        let z = kernels::exp_shifted(logits, m, &mut self.exps, &mut self.chunk_sums);
        let ln_z = z.ln();
        let token = if greedy {
            logits.iter().position(|&v| v == m).unwrap_or(0)
        } else {
            let target = u * z;
            let mut cum = 0.0f64;
            let mut found = None;
            for (c, &s) in self.chunk_sums.iter().enumerate() {
                if cum + s > target {
                    let start = c * CHUNK;
                    let end = (start + CHUNK).min(logits.len());
                    let mut acc = cum;
                    for (i, &e) in self.exps[start..end].iter().enumerate() {
                        acc += f64::from(e);
                        if acc > target {
                            found = Some(start + i);
                            break;
                        }
                    }
                    if found.is_some() {
                        break;
                    }
                }
                cum += s;
            }
            found.unwrap_or_else(|| last_positive(&self.exps))
        };
        let lp = |l: f32| (f64::from(l - m) - ln_z) as f32;
        let mut top = Vec::new();
        if n_top > 0 {
            kernels::top_k_into(logits, n_top, &mut self.tmp);
            top = self.tmp.iter().map(|&(l, t)| (t, lp(l))).collect();
        }
        Ok(Sampled {
            token: token as u32,
            logprob: lp(logits[token]),
            top_logprobs: top,
        })
    }

    fn check_ids(&self, vocab: usize, ids: &[u32], n_prompt: usize) -> Result<(), SampleError> {
        if n_prompt > ids.len() {
            return Err(SampleError::PromptLengthOutOfRange {
                n_prompt,
                len: ids.len(),
            });
        }
        let out_of_range = |token: u32| SampleError::TokenOutOfRange {
            token,
            vocab_size: vocab,
        };
        if let Some(&mx) = ids.iter().max()
            && mx as usize >= vocab
        {
            return Err(out_of_range(mx));
        }
        for &(t, _) in &self.params.logit_bias {
            if t as usize >= vocab {
                return Err(out_of_range(t));
            }
        }
        for s in &self.params.banned_sequences {
            if let Some(&t) = s.iter().find(|&&t| t as usize >= vocab) {
                return Err(out_of_range(t));
            }
        }
        Ok(())
    }

    fn update_history(&mut self, ids: &[u32], n_prompt: usize) {
        let need_all = self.params.repetition_penalty.is_some_and(|r| r != 1.0);
        let need_gen = self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0;
        if !(need_all || need_gen) {
            return;
        }
        let h = self.history.len();
        let reuse = self.hist_n_prompt == n_prompt && ids.len() >= h && ids[..h] == self.history[..];
        if !reuse {
            self.history.clear();
            self.all_counts.clear();
            self.gen_counts.clear();
            self.hist_n_prompt = n_prompt;
        }
        let start = self.history.len();
        for (pos, &t) in ids.iter().enumerate().skip(start) {
            if need_all {
                *self.all_counts.entry(t).or_insert(0) += 1;
            }
            if need_gen && pos >= n_prompt {
                *self.gen_counts.entry(t).or_insert(0) += 1;
            }
        }
        self.history.extend_from_slice(&ids[start..]);
    }

    fn apply(&mut self, kind: ProcessorKind, logits: &mut [f32], ids: &[u32], n_prompt: usize) {
        let p = &self.params;
        match kind {
            ProcessorKind::LogitBias => {
                if p.logit_bias.is_empty() {
                    return;
                }
                for &(t, b) in &p.logit_bias {
                    logits[t as usize] += b;
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::RepetitionPenalty => {
                let Some(r) = p.repetition_penalty.filter(|&r| r != 1.0) else {
                    return;
                };
                for &t in self.all_counts.keys() {
                    let s = logits[t as usize];
                    logits[t as usize] = if s < 0.0 { s * r } else { s / r };
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::PresenceFrequencyPenalty => {
                let (pp, fp) = (p.presence_penalty, p.frequency_penalty);
                if pp == 0.0 && fp == 0.0 {
                    return;
                }
                for (&t, &c) in &self.gen_counts {
                    logits[t as usize] -= c as f32 * fp + pp;
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::NoRepeatNgram => {
                let Some(n) = p.no_repeat_ngram_size else {
                    return;
                };
                let len = ids.len();
                if len + 1 < n || len < n {
                    return;
                }
                let prefix = &ids[len - (n - 1)..];
                for w in ids.windows(n) {
                    if w[..n - 1] == *prefix {
                        logits[w[n - 1] as usize] = f32::NEG_INFINITY;
                    }
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::BannedSequences => {
                if p.banned_sequences.is_empty() {
                    return;
                }
                for s in &p.banned_sequences {
                    let (last, prefix) = s.split_last().expect("validated non-empty");
                    if ids.ends_with(prefix) {
                        logits[*last as usize] = f32::NEG_INFINITY;
                    }
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::MinNewTokens => {
                if ids.len() - n_prompt >= p.min_new_tokens {
                    return;
                }
                for &t in &p.eos_token_ids {
                    if let Some(v) = logits.get_mut(t as usize) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                self.refresh_cands(logits);
            }
            ProcessorKind::Temperature => {
                let t = p.temperature;
                if t == 1.0 {
                    return;
                }
                if self.has_cands {
                    for c in &mut self.cands {
                        c.0 /= t;
                        logits[c.1 as usize] = c.0;
                    }
                } else {
                    for v in logits.iter_mut() {
                        *v /= t;
                    }
                }
            }
            ProcessorKind::TopK => {
                let Some(k) = p.top_k else { return };
                if self.has_cands {
                    self.truncate_cands(logits, k);
                } else if k < logits.len() {
                    kernels::top_k_into(logits, k, &mut self.cands);
                    self.enter_cands(logits);
                }
            }
            ProcessorKind::TopP => {
                let Some(top_p) = p.top_p.filter(|&v| v < 1.0) else {
                    return;
                };
                let target = if self.has_cands {
                    let m = self.cands[0].0;
                    let z: f64 = self.cands.iter().map(|c| f64::from(fast_exp(c.0 - m))).sum();
                    f64::from(top_p) * z
                } else {
                    let target = self.dense_top_p_cands(logits, top_p);
                    self.enter_cands(logits);
                    target
                };
                let m = self.cands[0].0;
                let mut cum = 0.0f64;
                let mut keep = 0;
                for c in &self.cands {
                    if cum >= target {
                        break;
                    }
                    keep += 1;
                    cum += f64::from(fast_exp(c.0 - m));
                }
                self.truncate_cands(logits, keep.max(1));
            }
            ProcessorKind::MinP => {
                let Some(min_p) = p.min_p.filter(|&v| v > 0.0) else {
                    return;
                };
                // p < min_p * p_max  <=>  l - l_max < ln(min_p)
                let ln_min_p = min_p.ln();
                if self.has_cands {
                    let m = self.cands[0].0;
                    let n = self.cands.iter().take_while(|c| c.0 - m >= ln_min_p).count();
                    self.truncate_cands(logits, n.max(1));
                } else {
                    let m = kernels::max(logits);
                    self.cands.clear();
                    for (i, &l) in logits.iter().enumerate() {
                        if l - m >= ln_min_p {
                            self.cands.push((l + 0.0, i as u32));
                        }
                    }
                    if self.cands.len() <= logits.len() / 16 {
                        self.cands.sort_unstable_by(rank);
                        self.enter_cands(logits);
                    } else {
                        self.cands.clear();
                        for v in logits.iter_mut() {
                            *v = if *v - m >= ln_min_p { *v } else { f32::NEG_INFINITY };
                        }
                    }
                }
            }
            ProcessorKind::Typical => {
                let Some(mass) = p.typical_p.filter(|&v| v < 1.0) else {
                    return;
                };
                if !self.has_cands {
                    // Typical filtering orders by |surprisal - entropy|, which is not a prefix
                    // of the logit order: it needs every finite logit sorted.
                    self.cands.clear();
                    self.cands.extend(
                        logits
                            .iter()
                            .enumerate()
                            .filter(|(_, v)| v.is_finite())
                            .map(|(i, &v)| (v + 0.0, i as u32)),
                    );
                    self.cands.sort_unstable_by(rank);
                    self.has_cands = true;
                }
                self.typical(logits, mass);
            }
        }
    }

    /// Switch from dense to candidate state: everything outside `cands` becomes -inf.
    fn enter_cands(&mut self, logits: &mut [f32]) {
        logits.fill(f32::NEG_INFINITY);
        for &(l, t) in &self.cands {
            logits[t as usize] = l;
        }
        self.has_cands = true;
    }

    /// After a sparse edit of `logits`, re-read candidate values, drop -inf, re-sort.
    fn refresh_cands(&mut self, logits: &[f32]) {
        if !self.has_cands {
            return;
        }
        for c in &mut self.cands {
            c.0 = logits[c.1 as usize] + 0.0;
        }
        self.cands.retain(|c| c.0 > f32::NEG_INFINITY);
        self.cands.sort_unstable_by(rank);
    }

    fn truncate_cands(&mut self, logits: &mut [f32], n: usize) {
        if n < self.cands.len() {
            for &(_, t) in &self.cands[n..] {
                logits[t as usize] = f32::NEG_INFINITY;
            }
            self.cands.truncate(n);
        }
    }

    /// Candidates for dense top-p: a superset of the kept prefix, sorted by rank.
    /// Returns the mass target `top_p * sum(exp(l - max))` over the whole row.
    fn dense_top_p_cands(&mut self, logits: &[f32], top_p: f32) -> f64 {
        let m = kernels::max(logits);
        let z = kernels::exp_shifted(logits, m, &mut self.exps, &mut self.chunk_sums);
        let target = f64::from(top_p) * z;
        // Fast path: peaked distributions reach the mass within a few hundred tokens; try
        // growing streaming top-k selections while they stay small next to the vocabulary.
        let mut k = 256;
        loop {
            kernels::top_k_into(logits, k.min(logits.len()), &mut self.cands);
            let head: f64 = self.cands.iter().map(|c| f64::from(self.exps[c.1 as usize])).sum();
            if head >= target || k >= logits.len() {
                return target;
            }
            k *= 8;
            if k > logits.len() / 8 {
                break;
            }
        }
        // Histogram of mass by distance from the max (8 buckets per octave); every token in a
        // bucket before the crossing bucket is kept, every token after it is removed.
        self.buckets.clear();
        self.buckets.resize(NB, 0.0);
        for (&l, &e) in logits.iter().zip(&self.exps) {
            self.buckets[bucket(m, l)] += f64::from(e);
        }
        let mut cum = 0.0;
        let mut cut = NB - 1;
        for (b, &s) in self.buckets.iter().enumerate() {
            cum += s;
            if cum >= target {
                cut = b;
                break;
            }
        }
        self.cands.clear();
        for (i, &l) in logits.iter().enumerate() {
            if l > f32::NEG_INFINITY && bucket(m, l) <= cut {
                self.cands.push((l + 0.0, i as u32));
            }
        }
        self.cands.sort_unstable_by(rank);
        target
    }

    /// transformers `TypicalLogitsWarper` (min_tokens_to_keep = 1) on the candidate list.
    fn typical(&mut self, logits: &mut [f32], mass: f32) {
        let m = f64::from(self.cands[0].0);
        let z: f64 = self.cands.iter().map(|c| (f64::from(c.0) - m).exp()).sum();
        let lse = m + z.ln();
        let mut ent = 0.0f64;
        for c in &self.cands {
            let lp = f64::from(c.0) - lse;
            let p = lp.exp();
            if p > 0.0 {
                ent -= p * lp;
            }
        }
        // (shifted score, probability, position in cands)
        let mut order: Vec<(f64, f64, usize)> = self
            .cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let lp = f64::from(c.0) - lse;
                ((-lp - ent).abs(), lp.exp(), i)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
        let mass = f64::from(mass);
        let mut cum = 0.0;
        let mut below = 0;
        for o in &order {
            cum += o.1;
            if cum < mass {
                below += 1;
            } else {
                break;
            }
        }
        let thr = order[below.min(order.len() - 1)].0;
        let first = order[0].2;
        let mut keep = vec![false; self.cands.len()];
        for o in &order {
            keep[o.2] = o.0 <= thr;
        }
        keep[first] = true;
        let mut i = 0;
        self.cands.retain(|c| {
            let k = keep[i];
            i += 1;
            if !k {
                logits[c.1 as usize] = f32::NEG_INFINITY;
            }
            k
        });
    }
}

/// Index of the first element whose running sum exceeds `target` (last positive if none).
fn walk(exps: &[f32], target: f64) -> usize {
    let mut cum = 0.0f64;
    for (i, &e) in exps.iter().enumerate() {
        cum += f64::from(e);
        if cum > target {
            return i;
        }
    }
    last_positive(exps)
}

fn last_positive(exps: &[f32]) -> usize {
    exps.iter().rposition(|&e| e > 0.0).unwrap_or(0)
}
