//! Generate text from a prompt, streaming it token by token.
//!
//! ```text
//! cargo run --release --example generate -- "In the beginning God created"
//! cargo run --release --example generate -- --sample --temperature 0.8 --top-k 40 --top-p 0.95 \
//!     --repetition-penalty 1.2 --seed 7 --max-new-tokens 60 "And the LORD said unto Moses"
//! # one prompt per line, decoded 8 at a time, one JSON line per prompt
//! cargo run --release --example generate -- --prompts prompts.txt --batch-size 8 --json
//! ```

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use gpt2_ndarray::generate::{BatchGeneration, GenerateOptions, Generation};
use gpt2_ndarray::{Gpt2, Tokenizer};
use serde_json::json;

/// Continue a prompt with a GPT-2, printing the text as it is generated.
#[derive(Parser)]
struct Args {
    /// The prompt (or --prompts FILE).
    #[arg(required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// Generate for every line of this file (empty lines skipped), as batches.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// With --prompts: sequences decoded together in one batch (≥ 1).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// With --prompts: one JSON line per prompt on stdout
    /// (`{"prompt", "text", "ids", "stop_reason"}`); the progress bar and the
    /// throughput go to stderr.
    #[arg(long)]
    json: bool,
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them). Half precision: half the
    /// memory, about twice the decoding speed, logits within the error budget
    /// of docs/half-precision.md.
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
    /// Keep the key/value cache as f32, f16 or bf16: half precision halves
    /// its memory (75.5 MB per sequence at 1024 positions of GPT-2 small in
    /// f32), rounding each key and value (docs/half-precision.md).
    #[arg(long, default_value = "f32")]
    kv_cache: gpt2_ndarray::checkpoint::Dtype,
    /// Run each prompt through the model at most this many tokens at a time
    /// (less memory for a long prompt, a slower prefill; default: at once).
    #[arg(long)]
    prefill_chunk: Option<usize>,
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
    let (_, model, tokenizer) = common::load_model(args.model.clone(), args.dtype)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        do_sample: args.sample,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_at_end_of_text: !args.ignore_eos,
        stop_strings: args.stop_strings.clone(),
        kv_cache: args.kv_cache,
        prefill_chunk: args.prefill_chunk,
    };
    if let Some(path) = &args.prompts {
        return generate_file(&model, &tokenizer, path, &args, options);
    }
    let prompt_text = args.prompt.clone().unwrap_or_default();
    let prompt = tokenizer.encode(&prompt_text)?;

    let start = Instant::now();
    let mut generation = Generation::new(&model, &tokenizer, &prompt, options)?;
    let prefill = start.elapsed();
    print!("{prompt_text}");
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

/// `--prompts FILE`: every line a prompt, decoded `--batch-size` at a time
/// (each batch one [`BatchGeneration`]); the results in the file's order, as
/// text or as JSON lines; a progress bar on a terminal; throughput at the end.
fn generate_file(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    path: &std::path::Path,
    args: &Args,
    options: GenerateOptions,
) -> Result<()> {
    ensure!(
        args.batch_size >= 1,
        "--batch-size is 0: at least one prompt per batch"
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prompts from {}", path.display()))?;
    let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        !prompts.is_empty(),
        "{} has no prompts (one per line)",
        path.display()
    );
    let encoded = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            tokenizer
                .encode(p)
                .with_context(|| format!("prompt {}", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;

    // On stderr, so beside the JSON lines too; hidden whenever stderr is not
    // a terminal. Each result is written with the bar suspended.
    let bar = common::progress((prompts.len() * options.max_new_tokens) as u64);
    bar.set_message("tokens");
    let start = Instant::now();
    let mut generated_tokens = 0;
    let mut stdout = std::io::stdout().lock();
    for (chunk, (texts, ids)) in prompts
        .chunks(args.batch_size)
        .zip(encoded.chunks(args.batch_size))
        .enumerate()
    {
        let first = chunk * args.batch_size;
        let mut batch = BatchGeneration::new(model, tokenizer, ids, options.clone())
            .with_context(|| format!("the batch of prompts {}..", first + 1))?;
        let mut outputs = vec![String::new(); ids.len()];
        let mut counts = vec![0usize; ids.len()];
        for steps in batch.by_ref() {
            let steps = steps?;
            for step in &steps {
                outputs[step.index].push_str(&step.text);
                counts[step.index] += 1;
                if step.stop.is_some() {
                    // What it did not use of its token budget.
                    bar.inc((options.max_new_tokens - counts[step.index]) as u64);
                }
            }
            bar.inc(steps.len() as u64);
        }
        for (b, prompt) in texts.iter().enumerate() {
            outputs[b].push_str(&batch.finish_text(b));
            let new_ids = batch.generated(b);
            generated_tokens += new_ids.len();
            let reason = batch
                .stop_reason(b)
                .map_or("stopped".into(), |r| format!("{r:?}"));
            bar.suspend(|| -> Result<()> {
                if args.json {
                    let line = json!({"prompt": prompt, "text": outputs[b], "ids": new_ids, "stop_reason": reason});
                    writeln!(stdout, "{line}")?;
                } else {
                    writeln!(stdout, "{prompt}{}\n[{reason}]\n", outputs[b])?;
                }
                Ok(())
            })?;
        }
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompts in batches of {} | {generated_tokens} new tokens in {secs:.2} s = {:.1} tokens/s]",
        prompts.len(),
        args.batch_size,
        generated_tokens as f64 / secs
    );
    Ok(())
}
