//! Activation patching: which layers, positions and heads carry the
//! difference between a clean and a corrupted prompt (TransformerLens's
//! `get_act_patch_resid_pre` and `get_act_patch_attn_head_out_all_pos`).
//!
//! ```text
//! cargo run --release --example patch -- --model models/kjv-gpt2 \
//!     --clean "And they came to Pharaoh king of" --corrupt "And they came to Cyrus king of" \
//!     --answer " Egypt" --wrong " Persia" --json patch.json --out figures
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gpt2_ndarray::inspect::patching::{activation_patching, single_token, Patching};

/// Patch each block's input at each position, and each head's output, from the
/// clean run into the corrupted one; the metric is logit(answer) − logit(wrong)
/// at the last position.
#[derive(Parser)]
struct Args {
    /// A Hugging Face GPT-2 directory (default: models/gpt2, else the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them).
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
    /// The clean prompt.
    #[arg(long)]
    clean: String,
    /// The corrupted prompt: as many tokens as the clean one.
    #[arg(long)]
    corrupt: String,
    /// The clean prompt's answer: a single token (mind the leading space: " Egypt").
    #[arg(long)]
    answer: String,
    /// The corrupted prompt's answer, a single token.
    #[arg(long)]
    wrong: String,
    /// Write {"clean", "corrupt", "resid_pre", "head_out", "tokens"} here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the heat maps here: patch-resid-pre.png and patch-head-out.png.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (dir, model, tokenizer) = common::load_model(args.model, args.dtype)?;
    let clean = tokenizer.encode(&args.clean)?;
    let corrupt = tokenizer.encode(&args.corrupt)?;
    let answer = single_token(&tokenizer, &args.answer).context("--answer")?;
    let wrong = single_token(&tokenizer, &args.wrong).context("--wrong")?;
    let patching = activation_patching(&model, &tokenizer, &clean, &corrupt, answer, wrong)?;

    println!("model: {}", common::shown(&dir));
    print!("{}", patching.report());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&patching.to_json())? + "\n";
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    if let Some(out) = &args.out {
        write_figures(&patching, out)?;
    }
    Ok(())
}

#[cfg(feature = "plot")]
fn write_figures(patching: &Patching, out: &std::path::Path) -> Result<()> {
    for path in gpt2_ndarray::inspect::plot::patching_pngs(patching, out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(not(feature = "plot"))]
fn write_figures(_: &Patching, _: &std::path::Path) -> Result<()> {
    anyhow::bail!(
        "--out needs the figures, which this build left out: build with the `plot` feature"
    )
}
