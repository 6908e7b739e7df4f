//! Write a GPT-2 directory's weights in another dtype: a new model directory
//! with `model.safetensors` in f32, f16 or bf16 (which `transformers` loads),
//! its `config.json` (`dtype` set) and the tokenizer files copied, by
//! `train::save_model_dir` (the writer a training run saves with).
//!
//! ```text
//! cargo run --release --example convert -- --model models/gpt2 --dtype f16 --out models/gpt2-f16
//! ```
//!
//! Loading the result gives exactly what `--dtype f16` gives on the original
//! (`Gpt2::to_dtype`), without converting at every load.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gpt2_ndarray::train::save_model_dir;
use gpt2_ndarray::{Dtype, Gpt2};

/// Convert a GPT-2 directory's weights to another dtype.
#[derive(Parser)]
struct Args {
    /// The Hugging Face GPT-2 directory to read.
    #[arg(long)]
    model: PathBuf,
    /// The dtype to write: f32, f16 or bf16.
    #[arg(long)]
    dtype: Dtype,
    /// The directory to write (created; must be absent or empty).
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let model = Gpt2::from_dir(&args.model)?;
    save_model_dir(&model, &args.model, &args.out, args.dtype)?;
    let weights = args.out.join("model.safetensors");
    let written = Gpt2::from_dir(&args.out)?;
    println!(
        "wrote {} ({}, {} bytes of parameters in memory; was {} as {})",
        common::shown(&weights),
        args.dtype,
        written.weight_bytes(),
        model.weight_bytes(),
        model.dtype().map_or("mixed".to_string(), |d| d.to_string())
    );
    Ok(())
}
