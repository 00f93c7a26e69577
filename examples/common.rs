//! Argument handling shared by the examples (included with `#[path]`).

use std::path::PathBuf;

/// `--model DIR`, `--prompt TEXT`, `--max-tokens N` and `--backend` from the command line.
pub struct ExampleArgs {
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub max_tokens: usize,
}

pub fn parse(default_prompt: &str) -> Result<ExampleArgs, String> {
    let mut args = std::env::args().skip(1);
    let mut out = ExampleArgs {
        model: None,
        prompt: default_prompt.to_string(),
        max_tokens: 32,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => out.model = Some(PathBuf::from(value()?)),
            "--prompt" => out.prompt = value()?,
            "--max-tokens" => out.max_tokens = value()?.parse().map_err(|e| format!("--max-tokens: {e}"))?,
            "-h" | "--help" => return Err("usage: [--model DIR] [--prompt TEXT] [--max-tokens N]".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

/// The repository's built-in tiny checkpoint `assets/<name>`.
pub fn builtin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(name)
}

/// Streams a generation to stdout and reports speed on stderr.
pub fn run<B: hearth::backend::HearthBackend>(
    engine: &hearth::engine::Engine<B>,
    args: &ExampleArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    use hearth::engine::{Event, GenerateRequest};
    use std::io::Write;
    let req = GenerateRequest::text(args.prompt.clone()).max_new_tokens(args.max_tokens);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    let t0 = std::time::Instant::now();
    for ev in engine.generate(req)? {
        match ev? {
            Event::Token { text, .. } => {
                write!(out, "{text}")?;
                out.flush()?;
            }
            Event::Done { finish, usage, tail } => {
                writeln!(out, "{tail}")?;
                let dt = t0.elapsed().as_secs_f64();
                eprintln!(
                    "[{} tokens in {dt:.2}s ({:.1} tok/s), finish: {finish:?}]",
                    usage.completion_tokens,
                    usage.completion_tokens as f64 / dt
                );
            }
        }
    }
    Ok(())
}
