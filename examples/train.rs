//! Fine-tune a GPT-2 on a text file: the training loop of `gpt2_ndarray::train`.
//!
//! ```text
//! cargo run --release --example train -- --model DIR --data FILE --out DIR \
//!     --steps N --batch B --seq T --lr LR --warmup W --weight-decay WD --grad-clip C \
//!     [--val-every K] [--log-json FILE] [--beta1 0.9] [--beta2 0.999] [--eps 1e-8] \
//!     [--dtype f32|f16|bf16] [--threads N]
//! ```
//!
//! The data order is fixed (row `r` of step `k` starts at token `((k·B + r)·T) mod (N − T − 1)`),
//! so `python_ref/train_ref.py` can replay a run in PyTorch. The output directory is a GPT-2
//! directory (`model.safetensors`, `config.json`, the tokenizer's files) that this crate and
//! `transformers` load.

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::{Parser, ValueEnum};
use gpt2_ndarray::checkpoint::Dtype;
use gpt2_ndarray::train::{self, AdamWConfig, TrainConfig, Trainer};
use gpt2_ndarray::{Gpt2, Tokenizer};

#[derive(Clone, Copy, ValueEnum)]
enum SaveDtype {
    F32,
    F16,
    Bf16,
}

/// Fine-tune a GPT-2 directory on a text file and save the result as a GPT-2 directory.
#[derive(Parser)]
struct Args {
    /// The Hugging Face GPT-2 directory to start from.
    #[arg(long)]
    model: PathBuf,
    /// The text to train on (UTF-8), tokenized whole.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the trained model (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long)]
    steps: usize,
    /// Sequences per step.
    #[arg(long)]
    batch: usize,
    /// Tokens per sequence (at most the model's n_positions).
    #[arg(long)]
    seq: usize,
    /// Peak learning rate (warm-up to it, then cosine down to a tenth of it).
    #[arg(long, allow_hyphen_values = true)]
    lr: f64,
    /// Steps of linear warm-up (fewer than --steps).
    #[arg(long)]
    warmup: usize,
    /// AdamW's decoupled weight decay, on weights of two or more dimensions only.
    #[arg(long, allow_hyphen_values = true)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, allow_hyphen_values = true)]
    grad_clip: f32,
    /// Every K steps, the loss on the last 10% of the tokens (then not trained on).
    #[arg(long)]
    val_every: Option<usize>,
    /// Write one JSON object per step: {"step", "loss", "lr", "grad_norm"}.
    #[arg(long)]
    log_json: Option<PathBuf>,
    /// AdamW's β₁.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    beta1: f64,
    /// AdamW's β₂.
    #[arg(long, default_value_t = 0.999, allow_hyphen_values = true)]
    beta2: f64,
    /// AdamW's ε.
    #[arg(long, default_value_t = 1e-8, allow_hyphen_values = true)]
    eps: f64,
    /// The saved weights' dtype (default: the input model's).
    #[arg(long, value_enum)]
    dtype: Option<SaveDtype>,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timing: also write the wall time of every step, in seconds, to this JSON file.
    #[arg(long)]
    bench_json: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = args.threads {
        ensure!(n >= 1, "--threads must be at least 1");
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start the thread pool")?;
    pool.install(|| run(args))
}

fn run(args: Args) -> Result<()> {
    // Everything is checked before anything is written.
    train::check_output_dir(&args.out)?;
    let model = Gpt2::from_dir(&args.model)?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let config = TrainConfig {
        steps: args.steps,
        batch: args.batch,
        seq: args.seq,
        lr: args.lr,
        warmup: args.warmup,
        grad_clip: args.grad_clip,
        adamw: AdamWConfig {
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
        },
        val_every: args.val_every,
    };
    config.validate(&model)?;
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("cannot read {}", args.data.display()))?;
    ensure!(!text.is_empty(), "{} is empty", args.data.display());
    let tokens = tokenizer.encode(&text)?;
    let dtype = match args.dtype {
        Some(SaveDtype::F32) => Dtype::F32,
        Some(SaveDtype::F16) => Dtype::F16,
        Some(SaveDtype::Bf16) => Dtype::BF16,
        None => train::input_dtype(&model),
    };
    let mut trainer = Trainer::new(model, &tokens, config)
        .with_context(|| format!("cannot train on {}", args.data.display()))?;
    let mut log = match &args.log_json {
        Some(path) => {
            Some(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        }
        None => None,
    };

    let (b, t, steps) = (args.batch, args.seq, args.steps);
    eprintln!(
        "{} tokens ({} to train on), {steps} steps of {b} × {t} tokens",
        tokens.len(),
        trainer.train_tokens()
    );
    let bar = common::progress(steps as u64);
    let mut seconds = Vec::with_capacity(steps);
    let mut first_loss = None;
    let mut last_loss = f32::NAN;
    for k in 0..steps {
        if trainer.validation_due(k) {
            report_validation(&trainer, k, &bar)?;
        }
        let start = Instant::now();
        let s = trainer.step()?;
        let dt = start.elapsed().as_secs_f64();
        seconds.push(dt);
        first_loss.get_or_insert(s.loss);
        last_loss = s.loss;
        if let Some(log) = &mut log {
            let line = serde_json::json!({
                "step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm
            });
            writeln!(log, "{line}")?;
        }
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tokens/s",
            s.loss,
            s.lr,
            (b * t) as f64 / dt
        ));
        bar.inc(1);
    }
    if trainer.validation_due(steps) {
        report_validation(&trainer, steps, &bar)?;
    }
    bar.finish_and_clear();
    if let Some(mut log) = log {
        log.flush()?;
    }
    let total: f64 = seconds.iter().sum();
    if let Some(path) = &args.bench_json {
        let json = serde_json::json!({
            "batch": b, "seq": t, "threads": rayon::current_num_threads(),
            "step_seconds": seconds,
        });
        std::fs::write(path, json.to_string() + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    train::save_model_dir(&trainer.model, &args.model, &args.out, dtype)?;
    println!(
        "loss {:.4} → {last_loss:.4} in {steps} steps, {:.0} tokens/s; saved ({dtype}) in {}",
        first_loss.unwrap_or(f32::NAN),
        (steps * b * t) as f64 / total,
        common::shown(&args.out)
    );
    Ok(())
}

/// Print the validation loss before step `k` (`k = steps`: after the last).
fn report_validation(trainer: &Trainer, k: usize, bar: &indicatif::ProgressBar) -> Result<()> {
    if let Some(loss) = trainer.validation_loss()? {
        bar.suspend(|| println!("step {k}: validation loss {loss:.4}"));
    }
    Ok(())
}
