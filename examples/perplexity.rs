//! Perplexity of a text file under a GPT-2, over sliding windows.
//!
//! ```text
//! cargo run --release --example perplexity -- --file text.txt [--model DIR] [--stride 512]
//! cargo run --release --example perplexity -- --ids ids.json    # exact token ids (a JSON list)
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gpt2_ndarray::perplexity::perplexity;

/// Compute the perplexity of a text file.
#[derive(Parser)]
struct Args {
    /// The text file to score.
    #[arg(long, required_unless_present = "ids")]
    file: Option<PathBuf>,
    /// Score these token ids instead (a JSON list), e.g. an exact slice of a corpus.
    #[arg(long, conflicts_with = "file")]
    ids: Option<PathBuf>,
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them). Half precision: half the
    /// memory, about twice the decoding speed, logits within the error budget
    /// of docs/half-precision.md.
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
    /// Tokens between window starts (default: n_positions, non-overlapping windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (dir, model, tokenizer) = common::load_model(args.model, args.dtype)?;
    let mut ids: Vec<u32> = match (&args.file, &args.ids) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            tokenizer.encode(&text)?
        }
        (None, Some(path)) => {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&json)
                .with_context(|| format!("{} is not a JSON list of token ids", path.display()))?
        }
        (None, None) => unreachable!("clap requires --file or --ids"),
    };
    if let Some(n) = args.max_tokens {
        ids.truncate(n);
    }
    let stride = args.stride.unwrap_or(model.config.n_positions);
    eprintln!(
        "{} tokens, windows of {} every {stride}",
        ids.len(),
        model.config.n_positions
    );
    let bar = common::progress(0).with_message("windows");
    let result = perplexity(&model, &ids, stride, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("model:      {}", common::shown(&dir));
    println!("tokens:     {} scored", result.tokens);
    println!("loss:       {:.6} nats/token", result.mean_nll());
    println!("perplexity: {:.4}", result.perplexity());
    Ok(())
}
