//! Write a GPT-2 directory's weights in another dtype: a new model directory
//! with `model.safetensors` in f32, f16 or bf16 (which `transformers` loads),
//! its `config.json` (`dtype` or `torch_dtype` set) and the tokenizer files copied.
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

use anyhow::{ensure, Context, Result};
use clap::Parser;
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
    /// The directory to write (created; must not be the input).
    #[arg(long)]
    out: PathBuf,
}

/// Files of a model directory copied as they are, when present.
const COPIED: [&str; 6] = [
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let model = Gpt2::from_dir(&args.model)?;
    ensure!(
        args.out.canonicalize().ok() != args.model.canonicalize().ok(),
        "--out must be another directory than --model"
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let weights = args.out.join("model.safetensors");
    model.save_safetensors(&weights, args.dtype)?;
    let config_path = args.model.join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&config)
        .with_context(|| format!("{} is not JSON", config_path.display()))?;
    let torch_dtype = match args.dtype {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    };
    // transformers ≥ 4.56 writes `dtype`, older ones `torch_dtype`.
    let key = if config.get("dtype").is_some() {
        "dtype"
    } else {
        "torch_dtype"
    };
    config[key] = torch_dtype.into();
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    for name in COPIED {
        let from = args.model.join(name);
        if from.is_file() {
            std::fs::copy(&from, args.out.join(name))
                .with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
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
