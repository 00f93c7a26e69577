//! The `hearth` command: generate, chat, logits, bench.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hearth_backend::{BackendKind, HearthBackend};
use hearth_engine::generate::Finish;
use hearth_engine::{ChatMessage, Engine, Event, GenerateRequest, Prompt, SamplingParams};
use hearth_models::{CausalLm, Decoder, ForwardOptions, HostModel, LoadOptions};
use hearth_quant::kernels::WeightFormat;
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
    /// Convert a GGUF file to the HuggingFace layout.
    Convert(ConvertArgs),
    /// Quantize a HF checkpoint into a GGUF file.
    Quantize(QuantizeArgs),
}

#[derive(Args, Clone)]
struct ConvertArgs {
    /// Input GGUF file.
    #[arg(long)]
    gguf: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype of model.safetensors: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args, Clone)]
struct QuantizeArgs {
    /// HF checkpoint directory.
    #[arg(long, required_unless_present = "synthetic", conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Instead of --model, a random-weight model of a real shape (names as for `bench`),
    /// written without a tokenizer (`tokenizer.ggml.model = "none"`), e.g. to run llama.cpp's
    /// `llama-bench` on the same file as `hearth bench`.
    #[arg(long)]
    synthetic: Option<String>,
    /// GGUF tensor type of the matrices (e.g. q8_0, q4_0, q4_k, q6_k, f16, f32).
    #[arg(long)]
    quant: String,
    /// Output `.gguf` file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// HF checkpoint directory (config.json, *.safetensors, tokenizer.json) or a `.gguf` file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// CPU threads of the kernels and the host forward (`bench`: of the measured part; loading
    /// uses every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Quantize f32/bf16 weights while loading: f32, bf16, f16, q8_0, q4_0, q4_1, q4_k, q6_k
    /// (GPU backends: q8_0, q4_0, q4_k, q6_k, kept packed in device memory).
    #[arg(long)]
    quant: Option<String>,
    /// Dequantize GGUF blocks to f32 on load instead of computing on them packed (reference path).
    #[arg(long)]
    unpacked: bool,
    /// Run burn's tensor-op forward instead of the fused host forward that the CPU backend uses
    /// by default (reference path; GPU backends always run burn's).
    #[arg(long)]
    burn_forward: bool,
    /// Compute dtype of the device forward: f32, f16 (wgpu with shaderFloat16, CUDA) or bf16
    /// (CUDA). Dense weights are stored in it; kernels accumulate in f32. The CPU backend
    /// computes in f32 only.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl ModelArgs {
    fn path(&self) -> Result<&Path> {
        self.model.as_deref().context("--model DIR|FILE.gguf is required")
    }

    /// The host forward of `model` when this backend runs hearth's CPU kernels and
    /// `--burn-forward` was not given.
    fn host_model<B: HearthBackend>(&self, model: &CausalLm<B>) -> Result<Option<HostModel>> {
        if B::HOST_KERNELS && !self.burn_forward {
            let host = HostModel::from_model(model)?;
            // a dedicated pool of spinning workers (`--threads`, default: every core)
            let threads = self.threads.unwrap_or_else(rayon::current_num_threads);
            Ok(Some(host.with_threads(threads)?))
        } else {
            Ok(None)
        }
    }

    fn load_options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            quant: self.quant.as_deref().map(parse_quant).transpose()?,
            unpacked: self.unpacked,
        })
    }
}

fn parse_quant(s: &str) -> Result<WeightFormat> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => WeightFormat::F32,
        "bf16" => WeightFormat::Bf16,
        "f16" => WeightFormat::F16,
        "q8_0" => WeightFormat::Q8_0,
        "q4_0" => WeightFormat::Q4_0,
        "q4_1" => WeightFormat::Q4_1,
        "q4_k" => WeightFormat::Q4_K,
        "q6_k" => WeightFormat::Q6_K,
        other => bail!("unknown --quant `{other}` (f32, bf16, f16, q8_0, q4_0, q4_1, q4_k, q6_k)"),
    })
}

/// Loads only the model (no tokenizer) from a directory or a `.gguf` file.
fn load_model<B: HearthBackend>(path: &Path, dev: &B::Device, opts: &LoadOptions) -> Result<CausalLm<B>> {
    let ctx = || format!("loading {}", path.display());
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let src = hearth_models::gguf::GgufSource::open(path)
            .with_context(ctx)?
            .keep_rope_permutation();
        let cfg = src.config().with_context(ctx)?;
        return CausalLm::load_with(cfg, &src, dev, opts).with_context(ctx);
    }
    let cfg = hearth_models::ModelConfig::from_dir(path).with_context(ctx)?;
    let store = hearth_models::WeightStore::open(path).with_context(ctx)?;
    CausalLm::load_with(cfg, &store, dev, opts).with_context(ctx)
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
    /// Instead of --model, a random-weight model of a real shape: llama-3.2-1b, llama-3.1-8b,
    /// qwen3-30b-a3b, mixtral-8x7b, olmoe-1b-7b, moonlight-16b-a3b.
    #[arg(long)]
    synthetic: Option<String>,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Repeat prefill + decode this many times on the loaded model; the best prefill and the
    /// best decode run count (all decode runs are listed in `decode_runs_tok_s`).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also measure burn's tensor-op forward on the same loaded model (`burn_*` fields).
    #[arg(long)]
    compare_burn: bool,
    /// Decode with every step's logits read back to the host (and the argmax taken there)
    /// before the next step is enqueued. By default the argmax stays on the device and step
    /// n + 1 is enqueued before token n is read back (`Decoder::greedy_steps`).
    #[arg(long)]
    sync_steps: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn model_args(cmd: &Cmd) -> Option<&ModelArgs> {
    match cmd {
        Cmd::Generate(a) => Some(&a.model),
        Cmd::Chat(a) => Some(&a.model),
        Cmd::Logits(a) => Some(&a.model),
        Cmd::Bench(a) => Some(&a.model),
        Cmd::Convert(_) | Cmd::Quantize(_) => None,
    }
}

fn run(cli: Cli) -> Result<()> {
    // tuning knob for measurements: contiguous row spans per thread of each parallel product
    if let Some(n) = std::env::var("HEARTH_TASKS_PER_THREAD")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        hearth_quant::kernels::set_tasks_per_thread(n);
    }
    // tuning knobs: software prefetch distance (bytes) and target cache level
    if let Some(n) = std::env::var("HEARTH_PF_DIST")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        hearth_quant::kernels::set_prefetch_distance(n);
    }
    // A/B knob: the fixed-task split of the parallel products instead of guided scheduling
    if std::env::var_os("HEARTH_MATVEC_STATIC").is_some() {
        hearth_quant::kernels::set_guided_schedule(false);
    }
    let Some(margs) = model_args(&cli.cmd) else {
        return match cli.cmd {
            Cmd::Convert(a) => convert(&a),
            Cmd::Quantize(a) => quantize(&a),
            _ => unreachable!("commands with model args are handled below"),
        };
    };
    // bench loads on every core and measures on its own pool of `--threads`
    if let Some(t) = margs.threads
        && !matches!(cli.cmd, Cmd::Bench(_))
    {
        hearth_backend::set_cpu_threads(t);
    }
    let kind: BackendKind = margs.backend.parse()?;
    kind.ensure_compiled()?;
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => run_on::<hearth_backend::Cpu>(kind, Default::default(), cli.cmd),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => run_on::<hearth_backend::Wgpu>(kind, Default::default(), cli.cmd),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<hearth_backend::Cuda>(kind, Default::default(), cli.cmd),
        #[allow(unreachable_patterns)]
        other => bail!("backend {other} is not compiled into this build"),
    }
}

fn convert(a: &ConvertArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => hearth_models::convert::HfDtype::F32,
        "bf16" => hearth_models::convert::HfDtype::Bf16,
        other => bail!("--dtype must be f32 or bf16, not {other}"),
    };
    hearth_models::convert::gguf_to_hf(&a.gguf, &a.out, dtype)?;
    let file = hearth_quant::gguf::GgufFile::open(&a.gguf).with_context(|| format!("reading {}", a.gguf.display()))?;
    hearth_engine::gguf_tokenizer::write_hf_tokenizer(&file, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn quantize(a: &QuantizeArgs) -> Result<()> {
    let ty = hearth_quant::GgmlType::from_name(&a.quant.to_ascii_uppercase())
        .with_context(|| format!("unknown GGUF type `{}`", a.quant))?;
    match (&a.model, &a.synthetic) {
        (Some(dir), None) => hearth_models::convert::hf_to_gguf(dir, &a.out, ty)?,
        (None, Some(name)) => {
            use hearth_models::{convert, synthetic};
            let (cfg, src) = synthetic::SyntheticSource::new(name, 0)?;
            let tensors: Vec<(String, Option<Vec<usize>>)> = synthetic::tensor_shapes(&cfg, &src)?
                .into_iter()
                .map(|(n, shape)| (n, Some(shape)))
                .collect();
            let export = convert::GgufExportSource {
                name,
                config_file: &format!("synthetic:{name}"),
                tensors: &tensors,
                weights: &src,
                tokenizer_dir: None,
            };
            convert::write_gguf(&cfg, &export, &a.out, ty)?;
        }
        _ => bail!("quantize needs exactly one of --model or --synthetic"),
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn load_engine<B: HearthBackend>(m: &ModelArgs, dev: &B::Device) -> Result<Engine<B>> {
    let path = m.path()?;
    let mut engine =
        Engine::<B>::from_path(path, dev, &m.load_options()?).with_context(|| format!("loading {}", path.display()))?;
    if m.burn_forward {
        engine.set_host_forward(false)?;
    }
    Ok(engine)
}

/// The forward to run: the host forward if there is one, else burn's.
fn decoder<'m, B: HearthBackend>(model: &'m CausalLm<B>, host: &'m Option<HostModel>) -> Decoder<'m, B> {
    match host {
        Some(h) => Decoder::Host(h),
        None => Decoder::Burn(model),
    }
}

const LAST_ONLY: ForwardOptions = ForwardOptions {
    hidden_states: false,
    last_only: true,
};

fn run_on<B: HearthBackend>(kind: BackendKind, dev: B::Device, cmd: Cmd) -> Result<()> {
    let dtype: hearth_backend::DType = model_args(&cmd).map(|m| m.dtype.as_str()).unwrap_or("f32").parse()?;
    hearth_backend::open_device::<B>(kind, &dev, dtype)?;
    match cmd {
        Cmd::Generate(a) => generate::<B>(&dev, &a),
        Cmd::Chat(a) => chat::<B>(&dev, &a),
        Cmd::Logits(a) => logits::<B>(&dev, &a),
        Cmd::Bench(a) => bench::<B>(&dev, &a),
        Cmd::Convert(_) | Cmd::Quantize(_) => unreachable!("handled without a backend"),
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
    let engine = load_engine::<B>(&a.model, dev)?;
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
    let engine = load_engine::<B>(&a.model, dev)?;
    if engine.tokenizer.chat_template.is_none() {
        bail!("{} has no chat template", a.model.path()?.display());
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
    let model = load_model::<B>(a.model.path()?, dev, &a.model.load_options()?)?;
    let host = a.model.host_model(&model)?;
    let dec = decoder(&model, &host);
    let vocab = model.config().vocab_size;
    let steps = a.greedy.unwrap_or(0);
    let mut session = dec.new_session(1, Some(a.tokens.len() + steps + 1));
    let prefill = dec
        .forward(std::slice::from_ref(&a.tokens), &mut session, ForwardOptions::default())?
        .data
        .to_vec();
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
        steps_logits.extend_from_slice(&prefill[(t - 1) * vocab..]);
        for step in 0..n {
            let tok = argmax(&steps_logits[step * vocab..])?;
            ids.push(tok as i64);
            if step + 1 < n {
                let o = dec.forward(&[vec![tok]], &mut session, LAST_ONLY)?;
                steps_logits.extend_from_slice(o.data);
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

/// Warm-up, then `--runs` × (prefill of `--prompt-len` tokens, `--decode` greedy steps) on fresh
/// sessions: prefill tok/s of the first run and decode tok/s of every run.
fn measure<B: HearthBackend>(dec: Decoder<'_, B>, a: &BenchArgs) -> Result<(f64, Vec<f64>)> {
    let vocab = dec.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..a.prompt_len as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    // warm-up (GPU kernels are compiled on first use, some per shape): the measured prompt and
    // a few decode steps past it, so that the prefill's products and the decode attention at
    // this context (split over the keys or not) are built before anything is timed
    let mut warm = dec.new_session(1, Some(a.prompt_len + a.decode + 1));
    let first = argmax(dec.forward(std::slice::from_ref(&prompt), &mut warm, LAST_ONLY)?.data)?;
    let (mut tok, mut synced) = (first, Vec::<u32>::new());
    for _ in 0..a.decode.min(3) {
        tok = argmax(dec.forward(&[vec![tok]], &mut warm, LAST_ONLY)?.data)?;
        synced.push(tok);
    }
    // the device loop warmed up too (its argmax and device-fed embedding kernels)
    let mut warm2 = dec.new_session(1, Some(a.prompt_len + a.decode + 1));
    let first2 = argmax(dec.forward(std::slice::from_ref(&prompt), &mut warm2, LAST_ONLY)?.data)?;
    dec.greedy_steps(first2, synced.len(), &mut warm2, |_| true)?;
    drop(warm2);
    let (mut prefill_tok_s, mut decode) = (0.0, Vec::new());
    for _ in 0..a.runs.max(1) {
        let mut session = dec.new_session(1, Some(a.prompt_len + a.decode + 1));
        let t0 = Instant::now();
        let mut tok = argmax(
            dec.forward(std::slice::from_ref(&prompt), &mut session, LAST_ONLY)?
                .data,
        )?;
        // best run, like decode (the first one also pays first-touch page faults of scratch)
        prefill_tok_s = f64::max(prefill_tok_s, a.prompt_len as f64 / t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        if a.sync_steps {
            // every step's logits read back before the next step is enqueued
            let mut input = vec![vec![tok]];
            for _ in 0..a.decode {
                input[0][0] = tok;
                tok = argmax(dec.forward(&input, &mut session, LAST_ONLY)?.data)?;
            }
        } else {
            // the argmax on the device, step n + 1 enqueued before token n is read back
            dec.greedy_steps(tok, a.decode, &mut session, |_| true)?;
        }
        decode.push(a.decode as f64 / t1.elapsed().as_secs_f64());
    }
    Ok((prefill_tok_s, decode))
}

/// With `HEARTH_PROFILE=1` (device forward): what one decode step costs and where it goes.
/// - the cost of one launch: 1000 tiny burn element-wise ops, 1000 tiny hearth RMSNorm kernels;
/// - host vs device (the scopes off): per step, the time until `forward` returns (the host
///   enqueued every kernel) and until the logits are on the host; the same steps enqueued back
///   to back with one synchronisation at the end (what the device needs per step); the cost of
///   reading back logits that are ready;
/// - per op (hearth_backend::profile scopes, each between two device synchronisations), per
///   decode step.
fn profile_decode<B: HearthBackend>(model: &CausalLm<B>, dev: &B::Device, a: &BenchArgs) -> Result<serde_json::Value> {
    use burn::tensor::Tensor;
    use hearth_backend::profile;
    let sync = || B::sync(dev).map_err(|e| anyhow::anyhow!("device sync: {e:?}"));
    let per_launch_us = |f: &dyn Fn()| -> Result<f64> {
        f();
        sync()?;
        let t0 = Instant::now();
        for _ in 0..1000 {
            f();
        }
        sync()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    let x = Tensor::<B, 2>::ones([1, 64], dev);
    let w = Tensor::<B, 1>::ones([64], dev);
    let burn_op_us = per_launch_us(&|| {
        std::hint::black_box(x.clone().add_scalar(1.0));
    })?;
    let kernel_us = per_launch_us(&|| {
        std::hint::black_box(B::rms_norm(x.clone(), w.clone(), 1e-6));
    })?;
    let steps = 16usize;
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..a.prompt_len as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    // host vs device, without the profile's synchronisations
    let mut cache = model.new_cache(1, Some(a.prompt_len + 3 * steps + 2));
    let run = |cache: &mut _, tok: u32| -> Result<(u32, f64, f64)> {
        let t0 = Instant::now();
        let out = model.forward(&[vec![tok]], cache, LAST_ONLY)?;
        let enq = t0.elapsed().as_secs_f64();
        let v = out
            .logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((argmax(&v)?, enq, t0.elapsed().as_secs_f64()))
    };
    let out = model.forward(std::slice::from_ref(&prompt), &mut cache, LAST_ONLY)?;
    let mut tok = argmax(
        &out.logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    )?;
    let (mut enq, mut total) = (0.0, 0.0);
    // the scopes off: host enqueue vs the whole step as in a plain run
    profile::set_enabled(false);
    for _ in 0..steps {
        let (t, e, s) = run(&mut cache, tok)?;
        tok = t;
        enq += e;
        total += s;
    }
    // the same steps enqueued back to back (nothing read back between them), then one
    // synchronisation: what the device needs per step when the host is never in its way
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(model.forward(&[vec![tok]], &mut cache, LAST_ONLY)?.logits);
    }
    sync()?;
    let pipelined_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    // reading back logits that are ready
    let t0 = Instant::now();
    if let Some(l) = last {
        let _ = l.into_data();
    }
    let readback_us = t0.elapsed().as_secs_f64() * 1e6;
    // per op, synchronised
    profile::set_enabled(true);
    profile::reset();
    let t0 = Instant::now();
    for _ in 0..steps {
        tok = run(&mut cache, tok)?.0;
    }
    let synced_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let ops: Vec<_> = profile::report()
        .into_iter()
        .map(|(name, calls, t)| {
            serde_json::json!({
                "op": name,
                "calls_per_step": calls as f64 / steps as f64,
                "us_per_step": t.as_secs_f64() * 1e6 / steps as f64,
            })
        })
        .collect();
    let v = serde_json::json!({
        "tiny_burn_op_us": burn_op_us,
        "tiny_hearth_kernel_us": kernel_us,
        "step_ms": total * 1e3 / steps as f64,
        "step_host_enqueue_ms": enq * 1e3 / steps as f64,
        "step_ms_pipelined": pipelined_ms,
        "logits_readback_us": readback_us,
        "step_ms_with_per_op_sync": synced_ms,
        "ops": ops,
    });
    eprintln!("profile: {}", serde_json::to_string_pretty(&v)?);
    Ok(v)
}

/// Tokens/s of the packed matrix–vector products of a decode step alone (best of `--runs`).
fn kernels_only(host: &HostModel, a: &BenchArgs) -> Result<f64> {
    let mut s = host.new_session(1, Some(1));
    host.kernels_only_step(&mut s)?;
    let mut best = 0.0f64;
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        for _ in 0..a.decode {
            host.kernels_only_step(&mut s)?;
        }
        best = best.max(a.decode as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Device memory bandwidth (bytes/s), measured now: after 0.2 s of warm-up, the best of 5
/// element-wise passes over a 2²⁸-element tensor of the compute dtype (`y = x + 1`, one read
/// and one write, synchronised by reading one element back). burn's element-wise kernels stream at close to the memory's rate; its
/// reductions do not, so they are not used as the yardstick.
fn device_read_bandwidth<B: HearthBackend>(dev: &B::Device) -> f64 {
    let n = 1usize << 28;
    let x = burn::tensor::Tensor::<B, 1>::ones([n], dev);
    let pass = || {
        let y = x.clone().add_scalar(1.0);
        y.narrow(0, 0, 1).into_scalar()
    };
    // compile the kernel and keep the device busy for a fifth of a second first (a GPU idling
    // between short bursts runs at lower clocks and under-reads)
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < 0.2 {
        std::hint::black_box(pass());
    }
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t0 = Instant::now();
        std::hint::black_box(pass());
        // the tensor has the device's compute dtype (2 bytes per element with --dtype bf16)
        best = best.max((2 * n * x.dtype().size()) as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn bench<B: HearthBackend>(dev: &B::Device, a: &BenchArgs) -> Result<()> {
    let opts = a.model.load_options()?;
    let t_load = Instant::now();
    let (model, name) = match (&a.synthetic, &a.model.model) {
        (Some(name), None) => {
            let (cfg, src) = hearth_models::synthetic::SyntheticSource::new(name, 0)?;
            (
                CausalLm::<B>::load_with(cfg, &src, dev, &opts)?,
                format!("synthetic:{name}"),
            )
        }
        (None, Some(path)) => (load_model::<B>(path, dev, &opts)?, path.display().to_string()),
        _ => bail!("bench needs exactly one of --model or --synthetic"),
    };
    let load_s = t_load.elapsed().as_secs_f64();
    // the load's own peak (before prefill scratch and the measured sessions)
    let load_rss = peak_rss();
    let host = a.model.host_model(&model)?;
    let dec = decoder(&model, &host);
    let cfg = model.config();
    // loading used every core; the measurement runs on `--threads` (default: all)
    let threads = a.model.threads.unwrap_or_else(rayon::current_num_threads).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    // the host forward runs on the host model's own pool of `threads` (called from this thread,
    // which then sleeps); burn's forward on `pool`
    let (prefill_tok_s, decode_runs) = if dec.is_host() {
        measure(dec, a)?
    } else {
        pool.install(|| measure(dec, a))?
    };
    // the device argmax that `greedy_steps` decodes with, against the host's on the same logits
    let argmax_matches = if dec.is_host() {
        None
    } else {
        let vocab = cfg.vocab_size as u32;
        let prompt: Vec<u32> = (0..a.prompt_len.max(1) as u32)
            .map(|i| (i * 7919 + 13) % vocab)
            .collect();
        let mut cache = model.new_cache(1, Some(prompt.len()));
        let logits = model
            .forward(std::slice::from_ref(&prompt), &mut cache, LAST_ONLY)?
            .logits;
        let [rows, _, v] = logits.dims();
        let on_device = B::argmax_rows(logits.clone().reshape([rows, v]))
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let host = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let same = on_device == [argmax(&host)? as i64, 0];
        if !same {
            eprintln!("warning: the device argmax {on_device:?} differs from the host's on the same logits");
        }
        Some(same)
    };
    let profile = if hearth_backend::profile::enabled() && !dec.is_host() {
        Some(profile_decode::<B>(&model, dev, a)?)
    } else {
        None
    };
    let kernels_tok_s = match &host {
        Some(h) => Some(kernels_only(h, a)?),
        None => None,
    };
    let burn_runs = if a.compare_burn && dec.is_host() {
        Some(pool.install(|| measure(Decoder::Burn(&model), a))?)
    } else {
        None
    };
    let rss = peak_rss();
    let bytes = model.decode_weight_bytes();
    let resident = model.weight_bytes();
    // the measured sessions' KV cache (host forward: f32, prompt + decode positions)
    let kv_bytes = host
        .as_ref()
        .map(|h| h.new_session(1, Some(a.prompt_len + a.decode + 1)).cache_bytes());
    let best = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
    let decode_tok_s = best(&decode_runs);
    // bandwidth of this machine, measured now, after the model's peak RSS was recorded
    // on a device: the better of burn's element-wise pass and hearth's read-only stream (the
    // floor must not flatter: the faster yardstick wins)
    let (bw, elementwise_bw, stream_bw) = if B::HOST_KERNELS {
        (
            Some(hearth_quant::kernels::measure_read_bandwidth(1 << 30, threads)),
            None,
            None,
        )
    } else {
        let e = device_read_bandwidth::<B>(dev);
        let s = B::read_bandwidth(dev, 1 << 30);
        (Some(s.map_or(e, |s| s.max(e))), Some(e), s)
    };
    let pct = |tok_s: f64| bw.map(|b| 100.0 * tok_s * bytes as f64 / b);
    let line = serde_json::json!({
        "model": name,
        "arch": cfg.arch.model_type(),
        "backend": a.model.backend,
        "forward": if dec.is_host() { "host" } else { "burn" },
        "quant": a.model.quant,
        "threads": threads,
        "load_s": load_s,
        "prompt_tokens": a.prompt_len,
        "decode_tokens": a.decode,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
        "decode_runs_tok_s": decode_runs,
        "decode_loop": if a.sync_steps || dec.is_host() { "synced" } else { "device argmax, one step ahead" },
        "device_argmax_matches_host": argmax_matches,
        "weight_bytes_per_token": bytes,
        "read_bandwidth_gb_s": bw.map(|b| b / 1e9),
        "elementwise_bandwidth_gb_s": elementwise_bw.map(|b| b / 1e9),
        "stream_read_bandwidth_gb_s": stream_bw.map(|b| b / 1e9),
        "floor_tok_s": bw.map(|b| b / bytes as f64),
        "pct_of_floor": pct(decode_tok_s),
        "kernels_only_tok_s": kernels_tok_s,
        "kernels_only_pct_of_floor": kernels_tok_s.and_then(pct),
        "burn_prefill_tok_s": burn_runs.as_ref().map(|r| r.0),
        "burn_decode_tok_s": burn_runs.as_ref().map(|r| best(&r.1)),
        "burn_pct_of_floor": burn_runs.as_ref().and_then(|r| pct(best(&r.1))),
        "profile": profile,
        "peak_rss_bytes": rss,
        "weight_bytes_resident": resident,
        "kv_cache_bytes": kv_bytes,
        "peak_rss_over_weights_and_kv": rss.map(|r| r as f64 / (resident + kv_bytes.unwrap_or(0)) as f64),
        "load_peak_rss_bytes": load_rss,
        "load_peak_rss_over_weights": load_rss.map(|r| r as f64 / resident as f64),
    });
    println!("{line}");
    Ok(())
}
