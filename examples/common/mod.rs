//! What the examples share: how a failed run is reported, progress bars, and
//! finding a model directory when none is given.
#![allow(dead_code)] // each example uses part of it

pub mod show;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Run an example's body and report its failure as a command-line tool does:
/// one line on stderr, `error: <message>: caused by <cause>: caused by ...`,
/// and exit status 1. No backtrace, even with `RUST_BACKTRACE=1`: a failed run
/// is not a bug. A panic is one, and keeps Rust's own report and backtrace.
/// Bad flags never get here: clap prints its usage error and exits with 2.
///
/// ```text
/// fn main() -> ExitCode {
///     common::run(try_main)
/// }
/// ```
pub fn run(body: impl FnOnce() -> Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error: ` and the error's chain, outermost first, joined by `: caused by `;
/// a message written over several lines (the loader's list of bad tensors)
/// has its lines joined by spaces. (The `Debug` form, which `main` returning
/// `Result` prints, spreads the chain over several lines and appends a
/// backtrace when `RUST_BACKTRACE` is set.)
pub fn one_line(error: &anyhow::Error) -> String {
    let messages: Vec<String> = error
        .chain()
        .map(|e| {
            let text = e.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            lines.join(" ")
        })
        .collect();
    format!("error: {}", messages.join(": caused by "))
}

/// A progress bar on stderr for `len` steps of work that takes more than a
/// second or two, hidden, as indicatif's stderr target always is, when
/// stderr is not a terminal (a pipe, a file, CI), so that only results reach
/// the output.
pub fn progress(len: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("[{bar:40}] {pos}/{len} {msg} ({elapsed})")
        .expect("a valid template")
        .progress_chars("#>-");
    ProgressBar::new(len).with_style(style)
}

/// Where the real GPT-2 files go (git-ignored), relative to the repository.
pub const REAL_GPT2: &str = "models/gpt2";
/// The small GPT-2 trained in this repository by `python_ref/train_tiny.py`.
pub const BUNDLED: &str = "models/kjv-gpt2";
/// The random-weight model of the golden tests.
pub const GOLDEN: &str = "golden/model";

/// The command that fetches the real GPT-2 into `models/gpt2`.
pub const FETCH_HINT: &str = "mkdir -p models/gpt2 && cd models/gpt2 && for f in config.json \
model.safetensors vocab.json merges.txt tokenizer_config.json; do \
curl -LO https://huggingface.co/gpt2/resolve/main/$f; done";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The model to run: `--model DIR` if given, else `models/gpt2`, else the
/// bundled trained model, else the random golden model. Returns the directory
/// and, when it fell back, one line saying so. Outside a clone of the
/// repository (the published package has none of these), an error saying
/// where a model comes from.
pub fn resolve_model(arg: Option<PathBuf>) -> Result<(PathBuf, Option<String>)> {
    if let Some(dir) = arg {
        ensure!(
            dir.is_dir(),
            "model directory {} does not exist",
            dir.display()
        );
        return Ok((dir, None));
    }
    let real = repo(REAL_GPT2);
    if real.join("config.json").is_file() {
        return Ok((real, None));
    }
    let bundled = repo(BUNDLED);
    if bundled.join("config.json").is_file() {
        let note = format!(
            "note: {REAL_GPT2}/ is empty, so this runs {BUNDLED}, a small GPT-2 trained in this \
             repository on the King James Bible. Real GPT-2 weights go in {REAL_GPT2}/: {FETCH_HINT}"
        );
        return Ok((bundled, Some(note)));
    }
    let golden = repo(GOLDEN);
    if !golden.join("config.json").is_file() {
        bail!(
            "no model: give one with --model DIR (a Hugging Face GPT-2 directory), or put GPT-2's \
             files in {REAL_GPT2}/: {FETCH_HINT}"
        );
    }
    let note = format!(
        "note: {REAL_GPT2}/ is empty, so this runs {GOLDEN}, the test model: it has RANDOM weights \
         and predicts noise. Real GPT-2 weights go in {REAL_GPT2}/: {FETCH_HINT}"
    );
    Ok((golden, Some(note)))
}

/// `dir` relative to the current directory when it is inside it (for display).
pub fn shown(dir: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    dir.strip_prefix(&cwd).unwrap_or(dir).display().to_string()
}

/// The model of `dir`, its weight matrices kept as `dtype` (converted once),
/// or as stored when `None` (`--dtype`).
pub fn load_weights(
    dir: &Path,
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
) -> Result<gpt2_ndarray::Gpt2> {
    let options = gpt2_ndarray::LoadOptions {
        dtype,
        ..Default::default()
    };
    gpt2_ndarray::Gpt2::from_dir_options(dir, &options)
}

/// [`resolve_model`], then say which model runs when it fell back (one line on
/// stderr), then load the model (its matrices as `dtype`, see
/// [`load_weights`]) and its tokenizer.
pub fn load_model(
    arg: Option<PathBuf>,
    dtype: Option<gpt2_ndarray::checkpoint::Dtype>,
) -> Result<(PathBuf, gpt2_ndarray::Gpt2, gpt2_ndarray::Tokenizer)> {
    let (dir, note) = resolve_model(arg)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let model = load_weights(&dir, dtype)?;
    let tokenizer = gpt2_ndarray::Tokenizer::from_dir(&dir)?;
    Ok((dir, model, tokenizer))
}

/// GPT-2 small's config and random weights (normal-ish, std 0.02; LayerNorm
/// gains near 1), saved as `config.json` + `model.safetensors` in the layout
/// of the hub's files (no `transformer.` prefix, no `lm_head`).
pub fn write_random_gpt2(dir: &Path) -> Result<()> {
    use gpt2_ndarray::generate::Rng;
    use gpt2_ndarray::Config;
    use serde_json::json;
    std::fs::create_dir_all(dir)?;
    let config = Config::gpt2();
    std::fs::write(
        dir.join("config.json"),
        json!({"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024,
               "n_embd": 768, "n_layer": 12, "n_head": 12, "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-5})
        .to_string(),
    )?;
    let (e, f) = (config.n_embd, config.n_inner);
    let mut shapes: Vec<(String, Vec<usize>, f32, f32)> = vec![
        ("wte.weight".into(), vec![config.vocab_size, e], 0.0, 0.02),
        ("wpe.weight".into(), vec![config.n_positions, e], 0.0, 0.01),
        ("ln_f.weight".into(), vec![e], 1.0, 0.1),
        ("ln_f.bias".into(), vec![e], 0.0, 0.1),
    ];
    for i in 0..config.n_layer {
        for (name, shape, mean, std) in [
            ("ln_1.weight", vec![e], 1.0, 0.1),
            ("ln_1.bias", vec![e], 0.0, 0.1),
            ("attn.c_attn.weight", vec![e, 3 * e], 0.0, 0.02),
            ("attn.c_attn.bias", vec![3 * e], 0.0, 0.02),
            ("attn.c_proj.weight", vec![e, e], 0.0, 0.02),
            ("attn.c_proj.bias", vec![e], 0.0, 0.02),
            ("ln_2.weight", vec![e], 1.0, 0.1),
            ("ln_2.bias", vec![e], 0.0, 0.1),
            ("mlp.c_fc.weight", vec![e, f], 0.0, 0.02),
            ("mlp.c_fc.bias", vec![f], 0.0, 0.02),
            ("mlp.c_proj.weight", vec![f, e], 0.0, 0.02),
            ("mlp.c_proj.bias", vec![e], 0.0, 0.02),
        ] {
            shapes.push((format!("h.{i}.{name}"), shape, mean, std));
        }
    }
    let mut rng = Rng::new(2024);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape, mean, std)| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .flat_map(|_| {
                    // Sum of 4 uniforms: close enough to a normal for a benchmark.
                    let u: f64 = (0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0;
                    (mean + std * (u * 1.732) as f32).to_le_bytes()
                })
                .collect();
            (name, shape, data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("consistent tensor");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))?;
    Ok(())
}
