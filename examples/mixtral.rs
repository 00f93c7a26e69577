//! Generate text with a Mixtral-family (MoE) checkpoint and print per-layer expert load.
//!
//! `cargo run --release --example mixtral` runs with no arguments and no download on hearth's
//! built-in tiny Mixtral; `--model DIR` takes any HF MoE checkpoint hearth supports (Mixtral,
//! Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3).

#[path = "common.rs"]
mod common;

use hearth::backend::Cpu;
use hearth::engine::Engine;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = common::parse("Once upon a time")?;
    let dev = Default::default();
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let dir = common::builtin("tiny-mixtral");
            eprintln!(
                "model: hearth's built-in tiny Mixtral ({}): random weights, 2 layers, 8 experts (top-2); \
                 its text is not meaningful. Pass --model DIR for a real checkpoint.",
                dir.display()
            );
            dir
        }
    };
    let engine = Engine::<Cpu>::from_dir(&dir, &dev)?;
    common::run(&engine, &args)?;
    let stats: Vec<_> = engine.model.moe_stats().into_iter().flatten().collect();
    eprintln!("{}", hearth::moe::format_table(&stats));
    Ok(())
}
