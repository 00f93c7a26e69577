//! Sampling parameters, processor kinds and their validation.

use crate::SampleError;

/// One stage of the logits-processing chain.
///
/// The chain runs stages in [`ProcessorKind::DEFAULT_ORDER`] unless
/// [`SamplingParams::order`] overrides it. Stages whose parameter is off are skipped.
///
/// ```
/// use hearth_sample::ProcessorKind;
/// assert_eq!(ProcessorKind::DEFAULT_ORDER[0], ProcessorKind::LogitBias);
/// assert_eq!(*ProcessorKind::DEFAULT_ORDER.last().unwrap(), ProcessorKind::Typical);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessorKind {
    /// Add `logit_bias` to the given token ids (OpenAI `logit_bias`).
    LogitBias,
    /// transformers `RepetitionPenaltyLogitsProcessor` over prompt + generated tokens.
    RepetitionPenalty,
    /// OpenAI presence and frequency penalties over generated tokens.
    PresenceFrequencyPenalty,
    /// transformers `NoRepeatNGramLogitsProcessor` over prompt + generated tokens.
    NoRepeatNgram,
    /// transformers `NoBadWordsLogitsProcessor` (`bad_words_ids`).
    BannedSequences,
    /// transformers `MinNewTokensLengthLogitsProcessor`: ban EOS until `min_new_tokens`.
    MinNewTokens,
    /// Divide logits by `temperature` (skipped when greedy).
    Temperature,
    /// Keep the `top_k` best tokens (skipped when greedy).
    TopK,
    /// Nucleus filtering (skipped when greedy).
    TopP,
    /// Min-p filtering (skipped when greedy).
    MinP,
    /// Locally typical filtering (skipped when greedy).
    Typical,
}

impl ProcessorKind {
    /// The documented default order: biases and penalties first, then bans, then the
    /// warpers in transformers' order (temperature, top-k, top-p, min-p, typical).
    ///
    /// Bans run after additive processors so nothing can lift a banned token back from `-inf`.
    ///
    /// ```
    /// use hearth_sample::ProcessorKind::*;
    /// let order = hearth_sample::ProcessorKind::DEFAULT_ORDER;
    /// let pos = |k| order.iter().position(|&x| x == k).unwrap();
    /// assert!(pos(RepetitionPenalty) < pos(Temperature));
    /// assert!(pos(TopK) < pos(TopP) && pos(TopP) < pos(MinP));
    /// ```
    pub const DEFAULT_ORDER: [ProcessorKind; 11] = [
        ProcessorKind::LogitBias,
        ProcessorKind::RepetitionPenalty,
        ProcessorKind::PresenceFrequencyPenalty,
        ProcessorKind::NoRepeatNgram,
        ProcessorKind::BannedSequences,
        ProcessorKind::MinNewTokens,
        ProcessorKind::Temperature,
        ProcessorKind::TopK,
        ProcessorKind::TopP,
        ProcessorKind::MinP,
        ProcessorKind::Typical,
    ];

    /// Whether this stage is a warper (skipped under greedy decoding, like transformers).
    ///
    /// ```
    /// use hearth_sample::ProcessorKind;
    /// assert!(ProcessorKind::TopP.is_warper());
    /// assert!(!ProcessorKind::RepetitionPenalty.is_warper());
    /// ```
    pub fn is_warper(self) -> bool {
        matches!(
            self,
            ProcessorKind::Temperature
                | ProcessorKind::TopK
                | ProcessorKind::TopP
                | ProcessorKind::MinP
                | ProcessorKind::Typical
        )
    }
}

/// Per-request sampling configuration.
///
/// `Default` is greedy decoding (temperature 0) with every processor off and seed 0.
///
/// ```
/// use hearth_sample::SamplingParams;
/// let p = SamplingParams { temperature: 0.8, top_k: Some(40), top_p: Some(0.95), seed: 7, ..Default::default() };
/// assert!(p.validate().is_ok());
/// assert!(SamplingParams::default().is_greedy());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` means greedy (argmax), which also skips all warpers.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (exactly `k`; ties broken by lower token id).
    pub top_k: Option<usize>,
    /// Nucleus sampling mass in `(0, 1]` (`1.0` is a no-op).
    pub top_p: Option<f32>,
    /// Min-p in `[0, 1]`: drop tokens with `p < min_p * p_max` (`0.0` is a no-op).
    pub min_p: Option<f32>,
    /// Locally typical sampling mass in `(0, 1]` (`1.0` is a no-op).
    pub typical_p: Option<f32>,
    /// transformers repetition penalty (> 0; `1.0` is a no-op), over prompt + generated tokens.
    pub repetition_penalty: Option<f32>,
    /// OpenAI presence penalty: subtracted once from each token generated at least once.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted `count` times for each generated token.
    pub frequency_penalty: f32,
    /// Ban any token that would repeat an n-gram of this size (prompt + generated).
    pub no_repeat_ngram_size: Option<usize>,
    /// Additive biases by token id; duplicate ids add up; `-inf` bans a token.
    pub logit_bias: Vec<(u32, f32)>,
    /// EOS ids are banned until this many tokens have been generated.
    pub min_new_tokens: usize,
    /// End-of-sequence ids (used by [`ProcessorKind::MinNewTokens`]).
    pub eos_token_ids: Vec<u32>,
    /// Banned token sequences (transformers `bad_words_ids`).
    pub banned_sequences: Vec<Vec<u32>>,
    /// RNG seed; the draw for a step depends only on `(seed, step)` and the logits.
    pub seed: u64,
    /// Return this many most likely tokens (after processing) with log-probabilities.
    pub top_logprobs: usize,
    /// Custom processor order. Listed kinds run first, in the given order; kinds not
    /// listed run afterwards in default relative order. `None` = [`ProcessorKind::DEFAULT_ORDER`].
    pub order: Option<Vec<ProcessorKind>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            typical_p: None,
            repetition_penalty: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            no_repeat_ngram_size: None,
            logit_bias: Vec::new(),
            min_new_tokens: 0,
            eos_token_ids: Vec::new(),
            banned_sequences: Vec::new(),
            seed: 0,
            top_logprobs: 0,
            order: None,
        }
    }
}

impl SamplingParams {
    /// Check every field; the first problem found is returned as a typed error.
    ///
    /// ```
    /// use hearth_sample::{SampleError, SamplingParams};
    /// let p = SamplingParams { top_p: Some(1.5), ..Default::default() };
    /// assert_eq!(p.validate(), Err(SampleError::InvalidTopP(1.5)));
    /// ```
    pub fn validate(&self) -> Result<(), SampleError> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(SampleError::InvalidTemperature(t));
        }
        if self.top_k == Some(0) {
            return Err(SampleError::InvalidTopK);
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(SampleError::InvalidTopP(p));
        }
        if let Some(p) = self.min_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(SampleError::InvalidMinP(p));
        }
        if let Some(p) = self.typical_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(SampleError::InvalidTypicalP(p));
        }
        if let Some(r) = self.repetition_penalty
            && !(r.is_finite() && r > 0.0)
        {
            return Err(SampleError::InvalidRepetitionPenalty(r));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !value.is_finite() {
                return Err(SampleError::InvalidPenalty { name, value });
            }
        }
        for &(token, bias) in &self.logit_bias {
            if bias.is_nan() || bias == f32::INFINITY {
                return Err(SampleError::InvalidLogitBias { token, bias });
            }
        }
        if self.no_repeat_ngram_size == Some(0) {
            return Err(SampleError::InvalidNoRepeatNgramSize);
        }
        if let Some(index) = self.banned_sequences.iter().position(|s| s.is_empty()) {
            return Err(SampleError::EmptyBannedSequence { index });
        }
        if let Some(order) = &self.order {
            for (i, k) in order.iter().enumerate() {
                if order[..i].contains(k) {
                    return Err(SampleError::DuplicateProcessor(*k));
                }
            }
        }
        Ok(())
    }

    /// `true` when `temperature == 0.0` (argmax decoding).
    ///
    /// ```
    /// use hearth_sample::SamplingParams;
    /// assert!(!SamplingParams { temperature: 1.0, ..Default::default() }.is_greedy());
    /// ```
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The effective processor order (custom order first, then the remaining kinds in
    /// default order). Includes disabled kinds; they are skipped at run time.
    ///
    /// ```
    /// use hearth_sample::{ProcessorKind, SamplingParams};
    /// let p = SamplingParams { order: Some(vec![ProcessorKind::TopK]), ..Default::default() };
    /// let order = p.effective_order();
    /// assert_eq!(order[0], ProcessorKind::TopK);
    /// assert_eq!(order.len(), ProcessorKind::DEFAULT_ORDER.len());
    /// ```
    pub fn effective_order(&self) -> Vec<ProcessorKind> {
        let mut out: Vec<ProcessorKind> = Vec::with_capacity(ProcessorKind::DEFAULT_ORDER.len());
        if let Some(order) = &self.order {
            for &k in order {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        for k in ProcessorKind::DEFAULT_ORDER {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }
}
