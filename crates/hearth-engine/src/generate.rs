//! The generation loop: prefill, then one token at a time through the KV cache, yielding
//! tokens as they are produced.
//!
//! [`Generation`] is a plain [`Iterator`], so it drives from synchronous code directly and from
//! async code through `spawn_blocking` plus a channel (see the `serve` command).
//!
//! On host backends (the CPU) the model runs through the fused host forward
//! ([`hearth_models::HostModel`]): KV cache, scratch and logits buffers are allocated when a
//! generation starts and reused by every decode step. [`Engine::set_host_forward`] switches back
//! to burn's tensor-op forward (the reference path, and the only one on GPU backends).

use crate::error::EngineError;
use crate::template::ChatMessage;
use crate::tokenizer::{DecodeStream, Tokenizer};
use hearth_backend::HearthBackend;
use hearth_models::{CausalLm, DecodeSession, Decoder, ForwardOptions, HostModel, LoadOptions};
use hearth_sample::{Sampler, SamplingParams, StopStrings};
use std::path::Path;

/// A model with its tokenizer, loaded once and shared by many requests (`&Engine` is all a
/// request needs).
pub struct Engine<B: HearthBackend> {
    /// The model.
    pub model: CausalLm<B>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// EOS ids from config, generation_config and tokenizer_config.
    pub eos_token_ids: Vec<u32>,
    /// The host forward of `model` (sharing its weights), used on host backends.
    host: Option<HostModel>,
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Raw text, encoded with the tokenizer's special tokens (e.g. BOS).
    Text(String),
    /// Messages rendered with the chat template (generation prompt appended).
    Chat(Vec<ChatMessage>),
    /// Token ids as they are.
    Ids(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Input.
    pub prompt: Prompt,
    /// Sampling (default greedy).
    pub params: SamplingParams,
    /// Token budget.
    pub max_new_tokens: usize,
    /// Strings that end generation (never emitted, not even partially).
    pub stop_strings: Vec<String>,
}

impl GenerateRequest {
    /// A greedy request for raw text with a budget of 64 tokens.
    pub fn text(prompt: impl Into<String>) -> Self {
        Self {
            prompt: Prompt::Text(prompt.into()),
            params: SamplingParams::default(),
            max_new_tokens: 64,
            stop_strings: vec![],
        }
    }

    /// Sets the token budget.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An EOS token.
    Eos,
    /// A stop string.
    StopString,
    /// `max_new_tokens` reached.
    MaxTokens,
    /// The KV cache (model context) is full.
    ContextFull,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// One step of a generation stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (may be empty mid-character or while a
    /// possible stop string is held back).
    Token {
        /// Token id.
        id: u32,
        /// New text.
        text: String,
        /// Log-probability after processing.
        logprob: f32,
    },
    /// The end of the stream.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Token counts.
        usage: Usage,
        /// Text held back at the end (a partial stop-string match that never completed).
        tail: String,
    },
}

/// The engine's host forward: on a pool of its own with one worker per thread of the current
/// rayon pool (`hearth_backend::set_cpu_threads` sets that), whose workers spin between the
/// parallel regions of a step instead of sleeping (`HostModel::with_threads`).
fn host_model<B: HearthBackend>(model: &CausalLm<B>) -> Result<HostModel, EngineError> {
    Ok(HostModel::from_model(model)?.with_threads(rayon::current_num_threads())?)
}

impl<B: HearthBackend> Engine<B> {
    /// Loads model and tokenizer from a HF checkpoint directory.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self, EngineError> {
        let model = CausalLm::from_dir(dir, device)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        Self::new(model, tokenizer)
    }

    /// Loads a HF checkpoint directory or a `.gguf` file, with load options.
    pub fn from_path(path: &Path, device: &B::Device, opts: &LoadOptions) -> Result<Self, EngineError> {
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Self::from_gguf_with(path, device, opts);
        }
        let cfg = hearth_models::ModelConfig::from_dir(path)?;
        let store = hearth_models::WeightStore::open(path)?;
        let model = CausalLm::load_with(cfg, &store, device, opts)?;
        Self::new(model, Tokenizer::from_dir(path)?)
    }

    /// Pairs a model with a tokenizer, checking that their vocabularies fit. On host backends
    /// (CPU) generation runs through the fused host forward.
    pub fn new(model: CausalLm<B>, tokenizer: Tokenizer) -> Result<Self, EngineError> {
        let vocab = model.config().vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(EngineError::VocabMismatch {
                tokenizer: tokenizer.vocab_size(),
                model: vocab,
            });
        }
        let mut eos_token_ids = model.config().eos_token_ids.clone();
        if let Some(id) = tokenizer.eos_token_id()
            && !eos_token_ids.contains(&id)
        {
            eos_token_ids.push(id);
        }
        let host = if B::HOST_KERNELS {
            Some(host_model(&model)?)
        } else {
            None
        };
        Ok(Self {
            model,
            tokenizer,
            eos_token_ids,
            host,
        })
    }

    /// Chooses the forward: `true` = the fused host forward ([`HostModel`], built on demand),
    /// `false` = burn's tensor ops on the model's device (the reference path).
    ///
    /// ```no_run
    /// # use hearth_engine::Engine;
    /// let mut engine = Engine::<hearth_backend::Cpu>::from_dir("ckpt".as_ref(), &Default::default())?;
    /// engine.set_host_forward(false)?;
    /// assert!(!engine.decoder().is_host());
    /// # Ok::<(), hearth_engine::EngineError>(())
    /// ```
    pub fn set_host_forward(&mut self, on: bool) -> Result<(), EngineError> {
        self.host = match (on, self.host.take()) {
            (true, Some(h)) => Some(h),
            (true, None) => Some(host_model(&self.model)?),
            (false, _) => None,
        };
        Ok(())
    }

    /// The host forward, if generation uses it.
    pub fn host_model(&self) -> Option<&HostModel> {
        self.host.as_ref()
    }

    /// The forward generation runs: the host forward when enabled, else burn's.
    pub fn decoder(&self) -> Decoder<'_, B> {
        match &self.host {
            Some(h) => Decoder::Host(h),
            None => Decoder::Burn(&self.model),
        }
    }

    /// Token ids of a prompt.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        match prompt {
            Prompt::Text(t) => self.tokenizer.encode(t, true),
            Prompt::Chat(messages) => {
                let tmpl = self
                    .tokenizer
                    .chat_template
                    .as_ref()
                    .ok_or_else(|| EngineError::NoChatTemplate("tokenizer_config.json".into()))?;
                let text = tmpl.render(messages, true)?;
                self.tokenizer.encode(&text, false)
            }
            Prompt::Ids(ids) => Ok(ids.clone()),
        }
    }

    /// Starts a generation; tokens are computed lazily as the iterator is advanced.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation<'_, B>, EngineError> {
        let ids = self.encode_prompt(&req.prompt)?;
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let context = self.model.config().max_position_embeddings;
        if ids.len() >= context {
            return Err(EngineError::PromptTooLong {
                prompt: ids.len(),
                context,
            });
        }
        let mut params = req.params.clone();
        if params.eos_token_ids.is_empty() {
            params.eos_token_ids = self.eos_token_ids.clone();
        }
        let sampler = Sampler::new(params)?;
        let capacity = (ids.len() + req.max_new_tokens).min(context);
        let decoder = self.decoder();
        let mut all = Vec::with_capacity(capacity + 1);
        all.extend_from_slice(&ids);
        Ok(Generation {
            engine: self,
            decoder,
            session: decoder.new_session(1, Some(capacity)),
            sampler,
            stops: StopStrings::new(req.stop_strings.clone()),
            decode: DecodeStream::default(),
            n_prompt: ids.len(),
            pending: ids,
            ids: all,
            max_new: req.max_new_tokens,
            generated: 0,
            done: false,
            finish: None,
        })
    }
}

/// A running generation: an iterator of [`Event`]s ending with one [`Event::Done`].
pub struct Generation<'e, B: HearthBackend> {
    engine: &'e Engine<B>,
    decoder: Decoder<'e, B>,
    session: DecodeSession<B>,
    sampler: Sampler,
    stops: StopStrings,
    decode: DecodeStream,
    ids: Vec<u32>,
    n_prompt: usize,
    pending: Vec<u32>,
    max_new: usize,
    generated: usize,
    done: bool,
    finish: Option<Finish>,
}

impl<B: HearthBackend> Generation<'_, B> {
    fn finish(&mut self, finish: Finish) -> Event {
        self.done = true;
        Event::Done {
            finish,
            usage: Usage {
                prompt_tokens: self.n_prompt,
                completion_tokens: self.generated,
            },
            tail: if finish == Finish::StopString {
                String::new()
            } else {
                self.stops.finish()
            },
        }
    }

    fn step(&mut self) -> Result<Event, EngineError> {
        if let Some(f) = self.finish.take() {
            return Ok(self.finish(f));
        }
        if self.generated >= self.max_new {
            return Ok(self.finish(Finish::MaxTokens));
        }
        if self.ids.len() >= self.session.capacity() {
            return Ok(self.finish(Finish::ContextFull));
        }
        let logits = self.decoder.forward(
            std::slice::from_ref(&self.pending),
            &mut self.session,
            ForwardOptions {
                hidden_states: false,
                last_only: true,
            },
        )?;
        let step = self.generated as u64;
        let s = self.sampler.sample(logits.data, &self.ids, self.n_prompt, step)?;
        self.generated += 1;
        self.ids.push(s.token);
        self.pending.clear();
        self.pending.push(s.token);
        if self.engine.eos_token_ids.contains(&s.token) {
            return Ok(self.finish(Finish::Eos));
        }
        let delta = self.decode.push(&self.engine.tokenizer, s.token)?;
        let (text, hit) = self.stops.push(&delta);
        if hit {
            self.finish = Some(Finish::StopString);
        }
        Ok(Event::Token {
            id: s.token,
            text,
            logprob: s.logprob,
        })
    }

    /// All token ids so far (prompt and generated).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl<B: HearthBackend> Iterator for Generation<'_, B> {
    type Item = Result<Event, EngineError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}
