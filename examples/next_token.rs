//! Predict the next token of a prompt.
//!
//! ```text
//! cargo run --release --example next_token -- "The capital of France is"
//! cargo run --release --example next_token -- --model models/gpt2 --top-k 10 --json "Hello"
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use gpt2_ndarray::reference::softmax;

/// Print the most likely next tokens of a prompt under a GPT-2.
#[derive(Parser)]
struct Args {
    /// The prompt.
    prompt: String,
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them). Half precision: half the
    /// memory, about twice the decoding speed, logits within the error budget
    /// of docs/half-precision.md.
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
    /// How many candidates to show.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let (dir, model, tokenizer) = common::load_model(args.model, args.dtype)?;
    let loaded = start.elapsed();

    let ids = tokenizer.encode(&args.prompt)?;
    let start = Instant::now();
    let logits = model.next_token_logits(&ids)?;
    let forward = start.elapsed();

    let probs = softmax(logits.view());
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let top: Vec<(u32, String, f32)> = order
        .iter()
        .take(args.top_k)
        .map(|&i| {
            (
                i as u32,
                tokenizer.decode(&[i as u32]).unwrap_or_default(),
                probs[i],
            )
        })
        .collect();

    if args.json {
        let json = serde_json::json!({
            "model": common::shown(&dir),
            "prompt": args.prompt,
            "ids": ids,
            "next": top.iter().map(|(id, text, p)| serde_json::json!({"id": id, "text": text, "prob": p})).collect::<Vec<_>>(),
            "load_ms": loaded.as_secs_f64() * 1e3,
            "forward_ms": forward.as_secs_f64() * 1e3,
        });
        println!("{json}");
        return Ok(());
    }
    println!("model:  {}", common::shown(&dir));
    println!("prompt: {:?} → {} tokens", args.prompt, ids.len());
    for &id in &ids {
        println!("  {id:>6}  {:?}", tokenizer.decode(&[id])?);
    }
    println!("next token:");
    for (rank, (id, text, p)) in top.iter().enumerate() {
        println!(
            "  {:>2}. {:>6}  {:<16} {:>6.2}%",
            rank + 1,
            id,
            format!("{text:?}"),
            p * 100.0
        );
    }
    println!(
        "loaded in {:.0} ms, forward pass of {} tokens in {:.1} ms",
        loaded.as_secs_f64() * 1e3,
        ids.len(),
        forward.as_secs_f64() * 1e3
    );
    Ok(())
}
