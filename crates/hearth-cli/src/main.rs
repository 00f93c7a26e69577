//! The `hearth` command: generate, chat, logits, bench.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hearth_backend::{BackendKind, HearthBackend};
use hearth_engine::generate::Finish;
use hearth_engine::{ChatMessage, Engine, Event, GenerateRequest, Prompt, SamplingParams};
use hearth_models::ForwardOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "hearth", version, about = "Run large language models with hearth")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Interactive chat using the checkpoint's chat template.
    Chat(ChatArgs),
    /// Write prefill (and greedy per-step) logits to a safetensors file.
    Logits(LogitsArgs),
    /// Measure prefill and decode speed; prints one JSON line.
    Bench(BenchArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// HF checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Compute backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// CPU threads for hearth's kernels.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Maximum new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k.
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p (nucleus) mass.
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p.
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (transformers semantics).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of the counter-based sampler RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Args, Clone)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print a per-layer expert load table (MoE models) after generation.
    #[arg(long)]
    moe_stats: bool,
}

#[derive(Args, Clone)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Optional system prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args, Clone)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    tokens: Vec<u32>,
    /// Also decode N greedy tokens one at a time through the KV cache.
    #[arg(long)]
    greedy: Option<usize>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    decode: usize,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn model_args(cmd: &Cmd) -> &ModelArgs {
    match cmd {
        Cmd::Generate(a) => &a.model,
        Cmd::Chat(a) => &a.model,
        Cmd::Logits(a) => &a.model,
        Cmd::Bench(a) => &a.model,
    }
}

fn run(cli: Cli) -> Result<()> {
    let margs = model_args(&cli.cmd);
    if let Some(t) = margs.threads {
        hearth_backend::set_cpu_threads(t);
    }
    let kind: BackendKind = margs.backend.parse()?;
    kind.ensure_compiled()?;
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => run_on::<hearth_backend::Cpu>(Default::default(), cli.cmd),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run_on::<hearth_backend::Wgpu>(Default::default(), cli.cmd),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<hearth_backend::Cuda>(Default::default(), cli.cmd),
        #[allow(unreachable_patterns)]
        other => bail!("backend {other} is not compiled into this build"),
    }
}

fn load_engine<B: HearthBackend>(dir: &Path, dev: &B::Device) -> Result<Engine<B>> {
    Engine::<B>::from_dir(dir, dev).with_context(|| format!("loading {}", dir.display()))
}

fn run_on<B: HearthBackend>(dev: B::Device, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Generate(a) => generate::<B>(&dev, &a),
        Cmd::Chat(a) => chat::<B>(&dev, &a),
        Cmd::Logits(a) => logits::<B>(&dev, &a),
        Cmd::Bench(a) => bench::<B>(&dev, &a),
    }
}

/// Streams one request's text to `out`; returns the finish reason and generated token count.
fn stream<B: HearthBackend>(engine: &Engine<B>, req: GenerateRequest, out: &mut impl Write) -> Result<(Finish, usize)> {
    for ev in engine.generate(req)? {
        match ev? {
            Event::Token { text, .. } => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Done { finish, usage, tail } => {
                out.write_all(tail.as_bytes())?;
                out.flush()?;
                return Ok((finish, usage.completion_tokens));
            }
        }
    }
    bail!("generation ended without a Done event")
}

fn generate<B: HearthBackend>(dev: &B::Device, a: &GenerateArgs) -> Result<()> {
    let engine = load_engine::<B>(&a.model.model, dev)?;
    let req = GenerateRequest {
        prompt: Prompt::Text(a.prompt.clone()),
        params: a.sampling.params(),
        max_new_tokens: a.sampling.max_tokens,
        stop_strings: a.sampling.stop.clone(),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(a.prompt.as_bytes())?;
    let t0 = Instant::now();
    let (finish, n) = stream(&engine, req, &mut stdout)?;
    let dt = t0.elapsed().as_secs_f64();
    writeln!(stdout)?;
    eprintln!(
        "[{n} tokens in {dt:.2}s, {:.1} tok/s, finish: {finish:?}]",
        n as f64 / dt
    );
    if a.moe_stats {
        let stats: Vec<_> = engine.model.moe_stats().into_iter().flatten().collect();
        if stats.is_empty() {
            eprintln!("(dense model: no expert statistics)");
        } else {
            eprintln!("{}", hearth_moe::format_table(&stats));
        }
    }
    Ok(())
}

fn chat<B: HearthBackend>(dev: &B::Device, a: &ChatArgs) -> Result<()> {
    let engine = load_engine::<B>(&a.model.model, dev)?;
    if engine.tokenizer.chat_template.is_none() {
        bail!(
            "{} has no chat_template in tokenizer_config.json",
            a.model.model.display()
        );
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::new("system", s.clone()));
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let req = GenerateRequest {
            prompt: Prompt::Chat(messages.clone()),
            params: a.sampling.params(),
            max_new_tokens: a.sampling.max_tokens,
            stop_strings: a.sampling.stop.clone(),
        };
        let mut reply = Vec::new();
        let mut tee = Tee {
            a: &mut stdout,
            b: &mut reply,
        };
        stream(&engine, req, &mut tee)?;
        writeln!(stdout)?;
        messages.push(ChatMessage::new(
            "assistant",
            String::from_utf8_lossy(&reply).into_owned(),
        ));
    }
    Ok(())
}

struct Tee<'a, A: Write, B: Write> {
    a: &'a mut A,
    b: &'a mut B,
}

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.a.write_all(buf)?;
        self.b.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.a.flush()
    }
}

fn host<B: HearthBackend>(t: burn::tensor::Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

fn argmax(v: &[f32]) -> Result<u32> {
    let mut best: Option<usize> = None;
    for (i, x) in v.iter().enumerate() {
        if x.is_nan() {
            bail!("NaN logit at token {i}");
        }
        if best.is_none_or(|b| *x > v[b]) {
            best = Some(i);
        }
    }
    best.map(|b| b as u32).context("empty logits")
}

fn logits<B: HearthBackend>(dev: &B::Device, a: &LogitsArgs) -> Result<()> {
    if a.tokens.is_empty() {
        bail!("--tokens needs at least one id");
    }
    let model = hearth_models::CausalLm::<B>::from_dir(&a.model.model, dev)?;
    let vocab = model.config().vocab_size;
    let steps = a.greedy.unwrap_or(0);
    let mut cache = model.new_cache(1, Some(a.tokens.len() + steps + 1));
    let out = model.forward(std::slice::from_ref(&a.tokens), &mut cache, ForwardOptions::default())?;
    let prefill = host(out.logits);
    let t = a.tokens.len();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = vec![(
        "logits".into(),
        safetensors::Dtype::F32,
        vec![t, vocab],
        bytemuck::cast_slice(&prefill).to_vec(),
    )];
    if let Some(n) = a.greedy {
        let mut ids: Vec<i64> = Vec::with_capacity(n);
        let mut steps_logits: Vec<f32> = Vec::with_capacity(n * vocab);
        let mut last = prefill[(t - 1) * vocab..].to_vec();
        for step in 0..n {
            let tok = argmax(&last)?;
            ids.push(tok as i64);
            steps_logits.extend_from_slice(&last);
            if step + 1 < n {
                let o = model.forward(
                    &[vec![tok]],
                    &mut cache,
                    ForwardOptions {
                        hidden_states: false,
                        last_only: true,
                    },
                )?;
                last = host(o.logits);
            }
        }
        tensors.push((
            "greedy_ids".into(),
            safetensors::Dtype::I64,
            vec![n],
            bytemuck::cast_slice(&ids).to_vec(),
        ));
        tensors.push((
            "greedy_step_logits".into(),
            safetensors::Dtype::F32,
            vec![n, vocab],
            bytemuck::cast_slice(&steps_logits).to_vec(),
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, dt, shape, data)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, None, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn bench<B: HearthBackend>(dev: &B::Device, a: &BenchArgs) -> Result<()> {
    let model = hearth_models::CausalLm::<B>::from_dir(&a.model.model, dev)?;
    let cfg = model.config();
    let vocab = cfg.vocab_size as u32;
    let prompt: Vec<u32> = (0..a.prompt_len as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut cache = model.new_cache(1, Some(a.prompt_len + a.decode + 1));
    let t0 = Instant::now();
    let out = model.forward(
        &[prompt],
        &mut cache,
        ForwardOptions {
            hidden_states: false,
            last_only: true,
        },
    )?;
    let mut last = host(out.logits);
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..a.decode {
        let tok = argmax(&last)?;
        let o = model.forward(
            &[vec![tok]],
            &mut cache,
            ForwardOptions {
                hidden_states: false,
                last_only: true,
            },
        )?;
        last = host(o.logits);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "model": a.model.model.display().to_string(),
        "arch": cfg.arch.model_type(),
        "backend": a.model.backend,
        "prompt_tokens": a.prompt_len,
        "decode_tokens": a.decode,
        "prefill_tok_s": a.prompt_len as f64 / prefill_s,
        "decode_tok_s": a.decode as f64 / decode_s,
    });
    println!("{line}");
    Ok(())
}
