//! Writing a trained model as a Hugging Face GPT-2 directory.

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::checkpoint::Dtype;
use crate::model::Gpt2;

/// The files of a model directory besides its weights and config that a
/// saved model carries over: the tokenizer's, and the generation defaults.
pub const COPIED_FILES: [&str; 6] = [
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// The dtype `model`'s weights were stored in: `f16` or `bf16` when every
/// tensor was, else `f32`.
pub fn input_dtype(model: &Gpt2) -> Dtype {
    match model.stored_bytes.keys().collect::<Vec<_>>()[..] {
        [Dtype::F16] => Dtype::F16,
        [Dtype::BF16] => Dtype::BF16,
        _ => Dtype::F32,
    }
}

/// `transformers`' name of a dtype in `config.json`.
fn torch_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F32 | Dtype::F64 => "float32",
    }
}

/// An error unless `out` can receive a model: absent, or an empty directory.
pub fn check_output_dir(out: &Path) -> Result<()> {
    if out.exists() {
        ensure!(
            out.is_dir(),
            "the output {} exists and is not a directory",
            out.display()
        );
        let mut entries =
            fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        ensure!(
            entries.next().is_none(),
            "the output directory {} exists and is not empty",
            out.display()
        );
    }
    Ok(())
}

/// Save `model` into the new directory `out` as `transformers` saves a
/// `GPT2LMHeadModel`: `model.safetensors` (keys `transformer.wte.weight`, …,
/// `lm_head.weight` only for an untied head; weights in `dtype`: `f32`, `f16`
/// or `bf16`), `config.json` (the one of `from`, its `dtype` set to the
/// saved one), and the tokenizer files of `from` ([`COPIED_FILES`], those
/// present). `out` must be absent or empty.
pub fn save_model_dir(model: &Gpt2, from: &Path, out: &Path, dtype: Dtype) -> Result<()> {
    if dtype == Dtype::F64 {
        bail!("models are saved as f32, f16 or bf16, not f64");
    }
    check_output_dir(out)?;
    let config_path = from.join("config.json");
    let text = fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", config_path.display()))?;
    let fields = config
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", config_path.display()))?;
    fields.insert("dtype".into(), torch_name(dtype).into());
    if fields.contains_key("torch_dtype") {
        fields.insert("torch_dtype".into(), torch_name(dtype).into());
    }

    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    model.save_safetensors(&out.join("model.safetensors"), dtype)?;
    let config_out = out.join("config.json");
    fs::write(&config_out, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("cannot write {}", config_out.display()))?;
    for name in COPIED_FILES {
        let src = from.join(name);
        if src.is_file() {
            fs::copy(&src, out.join(name))
                .with_context(|| format!("cannot copy {} to {}", src.display(), out.display()))?;
        }
    }
    Ok(())
}
