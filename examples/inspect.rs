//! Look inside the model on one prompt: residual norms, attention heads, and
//! the logit lens, as tables and (with `--out DIR`) as PNG figures.
//!
//! ```text
//! cargo run --release --example inspect -- "The capital of France is"
//! cargo run --release --example inspect -- --model models/gpt2 --top-k 3 --all-positions \
//!     --out figures "The capital of France is"
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gpt2_ndarray::inspect::inspect;

/// Residual norms, attention entropies and the logit lens of a prompt, layer by layer.
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
    /// How many predictions of the logit lens to show per layer.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Also show the logit lens's top token at every position.
    #[arg(long)]
    all_positions: bool,
    /// Write PNG figures here: attention-layer{i}.png per block and logit-lens.png.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (dir, model, tokenizer) = common::load_model(args.model, args.dtype)?;
    let ids = tokenizer.encode(&args.prompt)?;
    let seen = inspect(&model, &tokenizer, &ids, args.top_k)?;

    println!("model: {}", common::shown(&dir));
    print!("{}", seen.report(args.all_positions));
    if let Some(out) = args.out {
        write_figures(&seen, &out)?;
    }
    Ok(())
}

#[cfg(feature = "plot")]
fn write_figures(seen: &gpt2_ndarray::inspect::Inspection, out: &std::path::Path) -> Result<()> {
    println!();
    for path in gpt2_ndarray::inspect::plot::write_all(seen, out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(not(feature = "plot"))]
fn write_figures(_: &gpt2_ndarray::inspect::Inspection, _: &std::path::Path) -> Result<()> {
    anyhow::bail!(
        "--out needs the figures, which this build left out: build with the `plot` feature"
    )
}
