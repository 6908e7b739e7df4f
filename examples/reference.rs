//! Run the reference tier (`src/reference/`, GPT-2 in plain `ndarray`) on a
//! prompt: print any activation by its name and the next-token prediction,
//! and check it against the fast model.
//!
//! ```text
//! cargo run --release --example reference -- "In the beginning God created the heaven and the"
//! cargo run --release --example reference -- --show h.5.attn.probs "And God said"
//! cargo run --release --example reference -- --list "Hi"     # every activation's name and shape
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use gpt2_ndarray::{reference, Gpt2, Tokenizer};
use ndarray::{ArrayD, Axis};

/// Run GPT-2's reference forward pass on a prompt and look inside it.
#[derive(Parser)]
struct Args {
    /// The prompt.
    prompt: String,
    /// A Hugging Face GPT-2 directory (default: the bundled models/kjv-gpt2).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the weight matrices as f32, f16 or bf16, converted once at load
    /// (default: as the checkpoint stores them). Half precision: half the
    /// memory, about twice the decoding speed, logits within the error budget
    /// of docs/half-precision.md.
    #[arg(long)]
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
    /// The activation to print, by its trace name (`embed`, `h.0.ln_1`,
    /// `h.0.attn.probs`, `h.3`, `ln_f`, `logits`, ...).
    #[arg(long, default_value = "h.0.attn.probs")]
    show: String,
    /// List every activation's name and shape.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = args
        .model
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/kjv-gpt2"));
    let options = gpt2_ndarray::LoadOptions {
        dtype: args.dtype,
        ..Default::default()
    };
    let model = Gpt2::from_dir_options(&dir, &options)
        .with_context(|| format!("loading {}", dir.display()))?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let ids = tokenizer.encode(&args.prompt)?;
    if ids.is_empty() || ids.len() > model.config.n_positions {
        bail!(
            "the prompt has {} tokens; this model takes 1 to {}",
            ids.len(),
            model.config.n_positions
        );
    }
    println!("model:  {}", dir.display());
    println!("prompt: {:?} → {} tokens {:?}", args.prompt, ids.len(), ids);

    let acts = reference::forward(&model, &ids);

    if args.list {
        for (name, x) in acts.iter() {
            println!("  {name:<20} {:?}", x.shape());
        }
    }
    let Some(x) = acts.get(&args.show) else {
        let names: Vec<&str> = acts.iter().map(|(n, _)| n).collect();
        bail!(
            "no activation {:?}; the names are: {}",
            args.show,
            names.join(", ")
        );
    };
    println!("\n{} {:?}:", args.show, x.shape());
    print_tensor(x);

    let logits = acts.logits();
    let last = reference::softmax(logits.row(ids.len() - 1));
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    println!("\nnext token (reference tier):");
    for (rank, &id) in order.iter().take(5).enumerate() {
        let text = tokenizer.decode(&[id as u32]).unwrap_or_default();
        println!(
            "  {}. {id:>6}  {text:<16?} {:6.2}%",
            rank + 1,
            100.0 * last[id]
        );
    }

    let fast = model.forward(&ids)?;
    let diff = fast
        .iter()
        .zip(logits.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("\nthe fast model's logits differ from the reference's by at most {diff:.2e}");
    Ok(())
}

/// A tensor's last two axes as a table (the first rows and columns of each
/// leading index), so `[n_head, T, T]` prints one attention map per head.
fn print_tensor(x: &ArrayD<f32>) {
    const MAX: usize = 8;
    match x.ndim() {
        0 | 1 => println!("  {}", row(x.iter().copied())),
        2 => {
            for r in x.axis_iter(Axis(0)).take(MAX) {
                println!("  {}", row(r.iter().copied()));
            }
            if x.shape()[0] > MAX {
                println!("  ... ({} rows)", x.shape()[0]);
            }
        }
        _ => {
            for (i, sub) in x.axis_iter(Axis(0)).enumerate().take(4) {
                println!(" [{i}]");
                print_tensor(&sub.to_owned());
            }
        }
    }
}

fn row(values: impl Iterator<Item = f32>) -> String {
    let values: Vec<f32> = values.collect();
    let mut text: Vec<String> = values.iter().take(8).map(|v| format!("{v:8.4}")).collect();
    if values.len() > 8 {
        text.push(format!("... ({} values)", values.len()));
    }
    text.join(" ")
}
