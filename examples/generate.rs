//! Generate text from a prompt, streaming it token by token.
//!
//! ```text
//! cargo run --release --example generate -- "In the beginning God created"
//! cargo run --release --example generate -- --sample --temperature 0.8 --top-k 40 --top-p 0.95 \
//!     --repetition-penalty 1.2 --seed 7 --max-new-tokens 60 "And the LORD said unto Moses"
//! ```

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use gpt2_ndarray::generate::{GenerateOptions, Generation};

/// Continue a prompt with a GPT-2, printing the text as it is generated.
#[derive(Parser)]
struct Args {
    /// The prompt.
    prompt: String,
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 40)]
    max_new_tokens: usize,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    sample: bool,
    /// Sampling temperature (> 0; with --sample).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Keep the k most likely tokens (with --sample).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep tokens up to this cumulative probability (with --sample).
    #[arg(long)]
    top_p: Option<f32>,
    /// Penalise repeated tokens (1 = off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the text contains this (repeatable).
    #[arg(long = "stop")]
    stop_strings: Vec<String>,
    /// Keep going after <|endoftext|>.
    #[arg(long)]
    ignore_eos: bool,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (_, model, tokenizer) = common::load_model(args.model)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        do_sample: args.sample,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_at_end_of_text: !args.ignore_eos,
        stop_strings: args.stop_strings,
    };
    let prompt = tokenizer.encode(&args.prompt)?;

    let start = Instant::now();
    let mut generation = Generation::new(&model, &tokenizer, &prompt, options)?;
    let prefill = start.elapsed();
    print!("{}", args.prompt);
    let start = Instant::now();
    for step in &mut generation {
        print!("{}", step?.text);
        std::io::stdout().flush()?;
    }
    println!("{}", generation.finish_text());
    let decode = start.elapsed();
    let n = generation.generated().len();
    eprintln!(
        "[{} | prompt {} tokens in {:.0} ms | {n} new tokens in {:.2} s = {:.1} tokens/s]",
        generation
            .stop_reason()
            .map_or("stopped".into(), |r| r.to_string()),
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        decode.as_secs_f64(),
        n as f64 / decode.as_secs_f64()
    );
    Ok(())
}
