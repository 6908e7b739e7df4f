//! Writing a trained model as a Hugging Face GPT-2 directory.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;

use super::params::parameters;
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

/// The values of `x` as little-endian bytes of `dtype` (halves rounded to
/// the nearest, ties to even, as torch's `.to(dtype)` does).
fn encode(x: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => x
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => x
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F32 | Dtype::F64 => x.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    }
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

    let st_dtype = match dtype {
        Dtype::F16 => safetensors::Dtype::F16,
        Dtype::BF16 => safetensors::Dtype::BF16,
        _ => safetensors::Dtype::F32,
    };
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = parameters(model)
        .into_iter()
        .map(|(name, x)| {
            let shape = x.shape().to_vec();
            let x = x.as_standard_layout();
            let bytes = encode(x.as_slice().expect("standard layout"), dtype);
            let key = if name == "lm_head.weight" {
                name
            } else {
                format!("transformer.{name}")
            };
            (key, shape, bytes)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(key, shape, bytes)| {
            TensorView::new(st_dtype, shape.clone(), bytes)
                .map(|v| (key.clone(), v))
                .with_context(|| format!("tensor {key}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);

    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights = out.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, Some(metadata), &weights)
        .with_context(|| format!("cannot write {}", weights.display()))?;
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
