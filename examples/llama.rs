//! Generate text with a Llama-family checkpoint.
//!
//! `cargo run --release --example llama` runs with no arguments and no download on hearth's
//! built-in tiny Llama; `--model DIR` takes any HF checkpoint (Llama, Mistral, Qwen2/3, ...).

#[path = "common.rs"]
mod common;

use hearth::backend::Cpu;
use hearth::engine::Engine;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::parse("The capital of France is")?;
    let dev = Default::default();
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let dir = common::builtin("tiny-llama");
            eprintln!(
                "model: hearth's built-in tiny Llama ({}): random weights, 2 layers, 512-token vocab; \
                 its text is not meaningful. Pass --model DIR for a real checkpoint.",
                dir.display()
            );
            dir
        }
    };
    let engine = Engine::<Cpu>::from_dir(&dir, &dev)?;
    common::run(&engine, &args)
}
