//! What the examples share: finding a model directory when none is given.
#![allow(dead_code)] // each example uses part of it

pub mod show;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

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
/// and, when it fell back, one line saying so.
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
    let note = format!(
        "note: {REAL_GPT2}/ is empty, so this runs {GOLDEN}, the test model: it has RANDOM weights \
         and predicts noise. Real GPT-2 weights go in {REAL_GPT2}/: {FETCH_HINT}"
    );
    Ok((repo(GOLDEN), Some(note)))
}

/// `dir` relative to the current directory when it is inside it (for display).
pub fn shown(dir: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    dir.strip_prefix(&cwd).unwrap_or(dir).display().to_string()
}

/// [`resolve_model`], then say which model runs when it fell back (one line on
/// stderr), then load the model and its tokenizer.
pub fn load_model(
    arg: Option<PathBuf>,
) -> Result<(PathBuf, gpt2_ndarray::Gpt2, gpt2_ndarray::Tokenizer)> {
    let (dir, note) = resolve_model(arg)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let model = gpt2_ndarray::Gpt2::from_dir(&dir)?;
    let tokenizer = gpt2_ndarray::Tokenizer::from_dir(&dir)?;
    Ok((dir, model, tokenizer))
}
