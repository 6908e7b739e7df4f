//! Print a GPT-2 as PyTorch's `print(model)` does, with its parameter counts.
//!
//! ```text
//! cargo run --release --example architecture
//! cargo run --release --example architecture -- --model models/gpt2
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gpt2_ndarray::inspect::{architecture, parameter_table};

/// Print the module tree of a GPT-2 and where its parameters are.
#[derive(Parser)]
struct Args {
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them). Half precision: half the
    /// memory, about twice the decoding speed, logits within the error budget
    /// of docs/half-precision.md.
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (dir, note) = common::resolve_model(args.model)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let model = common::load_weights(&dir, args.dtype)?;
    println!("model: {}\n", common::shown(&dir));
    println!("{}\n", architecture(&model));
    print!("{}", parameter_table(&model));
    Ok(())
}
