//! The error budget of half-precision weights: a model against its `f16` and
//! `bf16` twins (`Gpt2::to_dtype`) on the same tokens — how far the logits
//! move, how often the most likely next token stays the same, how long
//! greedy continuations (4 prompts of 16 tokens, 64 new tokens each) stay
//! identical, and the perplexity.
//!
//! ```text
//! cargo run --release --example precision -- --model golden/model --ids golden/reference/perplexity.json
//! cargo run --release --example precision -- --model models/kjv-gpt2 --ids golden/kjv-gpt2/perplexity.json
//! cargo run --release --example precision -- --random-gpt2-small
//! ```
//!
//! The reference is the model in `f32` (for a checkpoint stored in half
//! precision, its exact upcast). Every figure comes from
//! `gpt2_ndarray::precision` and `gpt2_ndarray::perplexity`.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use gpt2_ndarray::generate::Rng;
use gpt2_ndarray::perplexity::perplexity;
use gpt2_ndarray::precision::{
    compare_logits, forward_with_cache, greedy_agreement, greedy_agreement_with_cache,
    LogitAgreement,
};
use gpt2_ndarray::{Dtype, Gpt2};
use serde_json::{json, Map, Value};

/// Measure what f16 and bf16 weights change.
#[derive(Parser)]
struct Args {
    /// A Hugging Face GPT-2 directory.
    #[arg(long, required_unless_present = "random_gpt2_small")]
    model: Option<PathBuf>,
    /// Instead of --model: GPT-2 small's shape with the benchmark's random weights.
    #[arg(long)]
    random_gpt2_small: bool,
    /// The tokens: a JSON file with an "ids" array (as python_ref/perplexity.py
    /// writes); default: 1024 random ids (seed 1).
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Tokens of the greedy continuation.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Tokens of each prompt of the greedy continuations (taken from the ids).
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Prompts of the greedy continuations, at evenly spaced offsets of the ids.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Also measure the f32 weights with the key/value cache kept as f16 and
    /// as bf16 (against the f32 cache; no perplexity: it runs without a cache).
    #[arg(long)]
    kv_cache: bool,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    let (model, name) = match &args.model {
        Some(dir) => (Gpt2::from_dir(dir)?, common::shown(dir)),
        None => {
            let dir = std::env::temp_dir().join(format!("gpt2-precision-{}", std::process::id()));
            common::write_random_gpt2(&dir)?;
            let model = Gpt2::from_dir(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            (
                model?,
                "random GPT-2 small (the benchmark's weights)".to_string(),
            )
        }
    };
    let stored = model.dtype().map_or("mixed".to_string(), |d| d.to_string());
    let ids: Vec<u32> = match &args.ids {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            v["ids"]
                .as_array()
                .context("no \"ids\" array")?
                .iter()
                .map(|id| {
                    id.as_u64()
                        .map(|id| id as u32)
                        .context("an id is not a number")
                })
                .collect::<Result<_>>()?
        }
        None => {
            let mut rng = Rng::new(1);
            let vocab = model.config.vocab_size as u64;
            (0..1024).map(|_| (rng.next_u64() % vocab) as u32).collect()
        }
    };
    ensure!(
        ids.len() > args.prompt_tokens,
        "need more than --prompt-tokens ids"
    );
    let window = &ids[..ids.len().min(model.config.n_positions)];
    let new_tokens = args
        .new_tokens
        .min(model.config.n_positions - args.prompt_tokens);
    let stride = model.config.n_positions;

    let reference = model.to_dtype(Dtype::F32);
    let logits = reference.forward(window)?;
    let ppl = perplexity(&reference, &ids, stride, |_, _| {})?;
    println!(
        "{name} (stored as {stored}); {} tokens, logits over the first {}",
        ids.len(),
        window.len()
    );
    println!(
        "  {:<7} {:>14} {:>14} {:>12} {:>14} {:>12} {:>10}",
        "dtype",
        "max |Δlogit|",
        "mean |Δlogit|",
        "top-1 agree",
        "greedy agree",
        "perplexity",
        "Δ ppl"
    );
    println!(
        "  {:<7} {:>14} {:>14} {:>12} {:>14} {:>12.4} {:>10}",
        "f32",
        "—",
        "—",
        "—",
        "—",
        ppl.perplexity(),
        "—"
    );
    let mut rows = Vec::new();
    for dtype in [Dtype::F16, Dtype::BF16] {
        let half = model.to_dtype(dtype);
        let agreement = compare_logits(logits.view(), half.forward(window)?.view());
        let (same, generated) = greedy_agreement(
            &reference,
            &half,
            &ids,
            args.prompts,
            args.prompt_tokens,
            new_tokens,
        )?;
        let half_ppl = perplexity(&half, &ids, stride, |_, _| {})?;
        let delta = half_ppl.perplexity() - ppl.perplexity();
        print_row(
            &dtype.to_string(),
            &agreement,
            (same, generated),
            &format!("{:.4}", half_ppl.perplexity()),
            &format!("{delta:+.4}"),
        );
        let mut row = row_json(&agreement, (same, generated));
        row.insert("dtype".into(), json!(dtype.to_string()));
        row.insert("perplexity".into(), json!(half_ppl.perplexity()));
        row.insert("perplexity_f32".into(), json!(ppl.perplexity()));
        rows.push(Value::Object(row));
    }
    let mut cache_rows = Vec::new();
    for dtype in [Dtype::F16, Dtype::BF16]
        .into_iter()
        .filter(|_| args.kv_cache)
    {
        let agreement = compare_logits(
            logits.view(),
            forward_with_cache(&reference, window, dtype)?.view(),
        );
        let (same, generated) = greedy_agreement_with_cache(
            &reference,
            dtype,
            &ids,
            args.prompts,
            args.prompt_tokens,
            new_tokens,
        )?;
        print_row(
            &format!("{dtype} kv"),
            &agreement,
            (same, generated),
            "—",
            "—",
        );
        let mut row = row_json(&agreement, (same, generated));
        row.insert("kv_cache".into(), json!(dtype.to_string()));
        cache_rows.push(Value::Object(row));
    }
    if let Some(path) = &args.json {
        let report = json!({
            "model": name,
            "stored": stored,
            "tokens": ids.len(),
            "rows": rows,
            "kv_cache_rows": cache_rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// One row of the table: the logits' agreement, the greedy tokens shared of
/// those generated, then the perplexity columns as given.
fn print_row(
    label: &str,
    a: &LogitAgreement,
    (same, generated): (usize, usize),
    perplexity: &str,
    delta: &str,
) {
    println!(
        "  {:<7} {:>14.3e} {:>14.3e} {:>12} {:>14} {:>12} {:>10}",
        label,
        a.max_abs_diff,
        a.mean_abs_diff,
        format!("{}/{}", a.top1_agree, a.positions),
        format!("{same}/{generated}"),
        perplexity,
        delta
    );
}

/// The figures every row's JSON holds.
fn row_json(a: &LogitAgreement, (same, generated): (usize, usize)) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("max_abs_logit_diff".into(), json!(a.max_abs_diff));
    row.insert("mean_abs_logit_diff".into(), json!(a.mean_abs_diff));
    row.insert("top1_agree".into(), json!(a.top1_agree));
    row.insert("positions".into(), json!(a.positions));
    row.insert("greedy_agree".into(), json!(same));
    row.insert("greedy_tokens".into(), json!(generated));
    row
}
